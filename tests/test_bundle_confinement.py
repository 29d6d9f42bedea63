"""A bundle reads nothing outside its folder: manifest paths, component files, symlinks, ONNX
external data and component names are refused (BundlePathError) before any of them is opened."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fusion_edge.cli import main
from fusion_edge.runtime.bundle import MANIFEST, Bundle, sha256_file
from fusion_edge.runtime.errors import BundlePathError
from fusion_edge.runtime.onnx_refs import external_locations


@pytest.fixture()
def bundle(onnx_bundle, tmp_path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(onnx_bundle("phi3", "so400m"), out)
    return out


def _edit(bundle: Path, change) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    change(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


def _outside(tmp_path: Path) -> Path:
    """A real file outside the bundle whose size and sha256 the tampered manifest gets right."""
    f = tmp_path / "secret.bin"
    f.write_bytes(b"not part of any bundle\n" * 10)
    return f


def _listed(m: dict, name: str, target: Path) -> None:
    m["files"][name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}


CASES = {
    "dotdot file": lambda b, out, m: _listed(m, "../secret.bin", out),
    "absolute file": lambda b, out, m: _listed(m, str(out), out),
    "dot segment": lambda b, out, m: _listed(m, "./embed.onnx", b / "embed.onnx"),
    "backslash": lambda b, out, m: _listed(m, "..\\secret.bin", out),
    "component file": lambda b, out, m: m["components"]["embed"].update(files=["../secret.bin"]),
    "component name": lambda b, out, m: m["components"].update({"../../escape": m["components"]["embed"]}),
    "missing outside file": lambda b, out, m: _listed(m, "../../nowhere/at/all.onnx", out),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_paths_outside_the_folder_are_refused(bundle, tmp_path, case):
    out = _outside(tmp_path)
    _edit(bundle, lambda m: CASES[case](bundle, out, m))
    with pytest.raises(BundlePathError) as e:
        Bundle.open(bundle)
    msg = str(e.value)
    assert e.value.fix and any(w in msg for w in ("not a plain path", "leads outside", "not plain names")), msg


def test_a_symlink_that_leaves_the_folder_is_refused_one_inside_is_fine(bundle, tmp_path):
    tok = bundle / "tokenizer"
    moved = tmp_path / "elsewhere-tokenizer"
    shutil.move(tok, moved)
    tok.symlink_to(moved, target_is_directory=True)
    with pytest.raises(BundlePathError, match="leads outside the bundle folder"):
        Bundle.open(bundle)
    tok.unlink()
    shutil.move(moved, bundle / "tok-real")
    tok.symlink_to("tok-real", target_is_directory=True)        # relative link inside: allowed
    Bundle.open(bundle)


def _external_to(bundle: Path, location: str, data_at: Path) -> None:
    """Rewrite embed.onnx so its table is external data at `location` (bytes written to
    `data_at`), and list the new graph's size and sha256 in the manifest."""
    graph = bundle / "embed.onnx"
    model = onnx.load(graph)
    t = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(t)
    data_at.write_bytes(arr.tobytes())
    t.ClearField("raw_data")
    t.ClearField("float_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(arr.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, graph)
    _edit(bundle, lambda m: _listed(m, "embed.onnx", graph))


def test_onnx_external_data_outside_the_folder_is_refused(bundle, tmp_path):
    _external_to(bundle, "../secret.data", tmp_path / "secret.data")
    assert external_locations(bundle / "embed.onnx") == {"../secret.data"}
    with pytest.raises(BundlePathError, match="external data of embed.onnx"):
        Bundle.open(bundle)


def test_onnx_external_data_must_be_a_listed_file(bundle):
    _external_to(bundle, "embed.onnx.data", bundle / "embed.onnx.data")
    with pytest.raises(BundlePathError, match="does not list"):
        Bundle.open(bundle)
    _edit(bundle, lambda m: _listed(m, "embed.onnx.data", bundle / "embed.onnx.data"))
    Bundle.open(bundle)                                           # listed and hashed: fine


def test_the_cli_refuses_it_with_one_error(bundle, tmp_path, images, capsys):
    out = _outside(tmp_path)
    _edit(bundle, lambda m: _listed(m, "../secret.bin", out))
    rc = main(["ask", "--bundle", str(bundle), "--image", str(images["wide"]), "--question", "Hi?"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "\n  fix: " in err and "Traceback" not in err
