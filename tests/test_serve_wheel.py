"""`fusion-edge serve` as users install it: the wheel (test_wheel.py's `dist`, built from a copy of
the checkout) installed non-editable into a fresh virtual environment, first without extras (the
command names the serve extra), then with `[serve]` (dependencies from the local package index
and constraints.txt, no network): `serve --help`, then a real request through the openai client,
answered with the checkout's token ids; `--ray` without the ray extra names it.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import data_url, user
from test_wheel import ROOT, _run, dist  # noqa: F401  (dist: the fixture, shared with test_wheel.py)

openai = pytest.importorskip("openai")

# slow; one xdist worker: its module fixture makes a venv with the wheel and [serve] once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_serve_wheel")]
QUESTION = "What is on the table?"
N = 8


def _pip(venv: Path, *args: str) -> None:
    r = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "-c", str(ROOT / "constraints.txt"), *args])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def serve_venv(dist, tmp_path_factory, onnx_bundle) -> Path:  # noqa: F811
    """A fresh venv (no system packages): the wheel alone, where `serve` must name its extra; then
    the wheel with [serve]."""
    v = tmp_path_factory.mktemp("serve-venv")
    assert _run([sys.executable, "-m", "venv", str(v)]).returncode == 0
    _pip(v, str(dist["wheel"]))
    r = _run([str(v / "bin" / "fusion-edge"), "serve", str(onnx_bundle("phi3", "so400m")), "--port", "0"], cwd=v)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and "fusion-edge[serve]" in r.stderr and "Traceback" not in r.stderr
    _pip(v, f"{dist['wheel']}[serve]")
    return v


def test_installed_serve_help(serve_venv):
    r = _run([str(serve_venv / "bin" / "fusion-edge"), "serve", "--help"], cwd=serve_venv)
    assert r.returncode == 0, r.stderr
    for option in ("--max-queue", "--api-key", "--ray", "--ray-max-queued", "--ray-retry-after"):
        assert option in r.stdout, option
    where = _run([str(serve_venv / "bin" / "python"), "-c", "import fusion_edge.apps.serve as s; print(s.__file__)"],
                 cwd=serve_venv)
    assert f"{serve_venv}/lib/" in where.stdout and "/site-packages/fusion_edge/" in where.stdout, where


def test_installed_serve_answers_like_the_checkout(serve_venv, onnx_bundle, images):
    from fusion_edge.runtime.pipeline import Pipeline
    bundle = onnx_bundle("phi3", "so400m")
    pipe = Pipeline.open(bundle, device="cpu")
    try:
        pipe.ask(pipe.look(str(images["wide"])), QUESTION, max_new_tokens=N)
        want = list(pipe.last_result.token_ids)
    finally:
        pipe.llm.close()
    proc = subprocess.Popen([str(serve_venv / "bin" / "fusion-edge"), "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=serve_venv)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"serving .* at (http://\S+/v1)", line)
            if m:
                break
        assert m, "".join(lines)
        client = openai.OpenAI(base_url=m.group(1), api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=bundle.name, messages=user(data_url(images["wide"]), QUESTION),
                                           max_tokens=N)
        assert r.model_extra["fusion"]["token_ids"] == want and len(want) > 0
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + out
    assert "Traceback" not in "".join(lines) + out


def test_installed_serve_ray_without_its_extra_names_it(serve_venv, onnx_bundle):
    r = _run([str(serve_venv / "bin" / "fusion-edge"), "serve", str(onnx_bundle("phi3", "so400m")), "--ray"],
             cwd=serve_venv)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and "fusion-edge[ray]" in r.stderr and "Traceback" not in r.stderr
