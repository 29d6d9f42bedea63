"""What users install: the sdist and the wheel built from a copy of the checkout, the wheel
installed non-editable into a fresh virtual environment with only the core dependencies
(no torch), then `fusion-edge --help` and `fusion-edge ask` on a tiny bundle.

An editable install finds sub-folders by walking the tree, so it hides a package missing
from the wheel (a hand-kept list once left out fusion_edge.runtime.trt); only this test sees it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import shared_build

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from setup import ROOTS  # noqa: E402  (the repository's setup.py: import name → folder)

sys.path.remove(str(ROOT))

# slow; one xdist worker: its module fixture makes a venv with the wheel once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_wheel")]
QUESTION = "What is on the table?"


def _sources() -> list[str]:
    """The files a clean clone has: tracked, plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def dist(shared_dir) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist (python -m build), from a copy of the checkout.
    Built once per run (conftest.shared_build): test_serve_wheel.py and every xdist worker reuse it."""
    def build(out: Path) -> None:
        src = out.parent / "clone"
        for f in _sources():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
        r = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = shared_build(shared_dir, "dist", build)
    wheels, sdists = list(out.glob("fusion_edge-*.whl")), list(out.glob("fusion_edge-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (non-editable), core dependencies from constraints.txt."""
    v = tmp_path_factory.mktemp("venv")
    r = _run([sys.executable, "-m", "venv", str(v)])
    assert r.returncode == 0, r.stderr
    r = _run([str(v / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "-c", str(ROOT / "constraints.txt"), str(dist["wheel"])])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return v


def test_the_wheel_holds_every_module_and_data_file_of_the_package(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    expected = set()
    for f in _sources():
        top, _, rest = f.partition("/")
        for pkg, folder in ROOTS.items():
            if top == folder and rest and (f.endswith(".py") or "/static/" in f or rest.startswith("ros2/launch/")
                                           or f.endswith(".xml")):
                if (ROOT / f).parent.joinpath("__init__.py").is_file():
                    expected.add(pkg.replace(".", "/") + "/" + rest)
    assert expected, "no package file found"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)[:10]}"
    assert "fusion_edge/runtime/trt/ep.py" in names and "fusion_edge/apps/camera_qa/static/index.html" in names


def test_installed_cli_help_lists_every_command(venv):
    from fusion_edge.cli import PLUGIN_COMMANDS
    r = _run([str(venv / "bin" / "fusion-edge"), "--help"])
    assert r.returncode == 0, r.stderr
    for name in ["make-tiny", "ask", "export", "verify", *(c[0] for c in PLUGIN_COMMANDS)]:
        assert name in r.stdout, name
    assert "Traceback" not in r.stderr
    # the core install has no torch: the runtime path below runs without it
    assert _run([str(venv / "bin" / "python"), "-c", "import torch"]).returncode != 0


def test_installed_ask_answers_like_the_checkout(venv, onnx_bundle, images):
    from fusion_edge.runtime.pipeline import Pipeline
    bundle = onnx_bundle("phi3", "so400m")
    r = _run([str(venv / "bin" / "fusion-edge"), "ask", "--bundle", str(bundle), "--image", str(images["wide"]),
              "--question", QUESTION, "--max-new-tokens", "8", "--json"], cwd=venv)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    pipe = Pipeline.open(bundle, device="cpu")
    try:
        text = pipe.ask(pipe.look(str(images["wide"])), QUESTION, max_new_tokens=8)
        want = list(pipe.last_result.token_ids)
    finally:
        pipe.llm.close()
    assert got["token_ids"] == want and got["text"] == text and len(want) > 0


@pytest.mark.parametrize("argv, extra", [
    (["export", "ckpt", "-o", "out"], "export"),
    (["camera", "b", "--source", "0"], "camera"),
])
def test_installed_commands_without_their_extra_name_it(venv, tmp_path, argv, extra):
    (tmp_path / "ckpt").mkdir()
    r = _run([str(venv / "bin" / "fusion-edge"), *argv], cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and f"fusion-edge[{extra}]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
