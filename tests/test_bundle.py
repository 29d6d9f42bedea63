"""Bundle format: manifest contents, and every way a bundle can be broken → typed errors."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fusion_edge.export.checkpoint import open_checkpoint
from fusion_edge.runtime.bundle import MANIFEST, Bundle
from fusion_edge.runtime.errors import (BundleError, BundleFileError, BundleMismatchError,
                                        BundleVersionError)
from fusion_edge.runtime.pipeline import Pipeline


@pytest.fixture()
def bundle_copy(onnx_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle("phi3", "so400m"), dst)
    return dst


def test_manifest_describes_the_bundle(onnx_bundle, tiny_checkpoint):
    b = Bundle.open(onnx_bundle("phi3", "so400m"))
    m = b.manifest
    assert m["format_version"] == 1 and m["target"] == "onnx" and m["precision"] == "fp32"
    assert m["source"]["fingerprint"] == open_checkpoint(tiny_checkpoint("phi3", "so400m")).fingerprint()
    assert m["options"] == {"query_len": 36, "image_tokens": 729, "query_lens": [4, 16, 36, 64, 144]}
    assert m["prompt"]["template"] == "phi_3" and m["prompt"]["stop_token_ids"]
    assert {"fusion_edge", "torch", "onnx", "onnxruntime", "opset"} <= m["build"].keys()
    comps = m["components"]
    assert len([c for c in comps if c.startswith("segment_")]) == 11
    assert len([c for c in comps if c.startswith("align_")]) == 10
    assert comps["segment_10"]["final"] and comps["segment_10"]["outputs"][0] == "logits"
    assert comps["segment_00"]["align_after"] == 0 and comps["segment_00"]["layers"] == [0, 1]
    for c in comps.values():
        for f in c["files"]:
            assert f in m["files"] and len(m["files"][f]["sha256"]) == 64
    assert "tokenizer/tokenizer.json" in m["files"]
    assert b.config.llm.num_layers == 32


def test_missing_file(bundle_copy):
    (bundle_copy / "align_03.onnx").unlink()
    with pytest.raises(BundleFileError, match="align_03.onnx is missing"):
        Pipeline.open(bundle_copy)


def test_tampered_file_same_size(bundle_copy):
    p = bundle_copy / "segment_04.onnx"
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleFileError, match="sha256"):
        Pipeline.open(bundle_copy)


def test_truncated_file(bundle_copy):
    p = bundle_copy / "vision.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(BundleFileError, match="truncated"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("version,fix", [(0, "re-export"), (99, "upgrade fusion-edge")])
def test_wrong_format_version(bundle_copy, version, fix):
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["format_version"] = version
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleVersionError, match=fix):
        Bundle.open(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleFileError, match="no fusion_bundle.json"):
        Bundle.open(tmp_path / "empty")


def test_bundle_from_a_different_checkpoint(onnx_bundle, tiny_checkpoint, capsys):
    b = Bundle.open(onnx_bundle("phi3", "so400m"))
    with pytest.raises(BundleMismatchError, match="different checkpoint"):
        b.check_source(open_checkpoint(tiny_checkpoint("llama3", "siglip2")).fingerprint())
    from fusion_edge.cli import main
    rc = main(["verify", str(onnx_bundle("phi3", "so400m")), "--model", str(tiny_checkpoint("llama3", "siglip2"))])
    assert rc == 2 and "different checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_cli_writes_figures(onnx_bundle, tiny_checkpoint, tmp_path, capsys):
    dst = tmp_path / "v"
    shutil.copytree(onnx_bundle("llama3", "siglip2"), dst)
    from fusion_edge.cli import main
    assert main(["verify", str(dst), "--model", str(tiny_checkpoint("llama3", "siglip2")), "--steps", "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["passed"] and figures["max_dlogit"] < 1e-4
    assert Bundle.open(dst).manifest["verification"]["steps"] == 4


def test_existing_output_is_not_overwritten(onnx_bundle, tiny_checkpoint):
    from fusion_edge.export.bundle_export import export_bundle
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(str(tiny_checkpoint("phi3", "so400m")), onnx_bundle("phi3", "so400m"), verify=False,
                      progress=False)


@pytest.mark.slow
def test_killed_export_leaves_no_bundle(tiny_checkpoint, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fusion_edge.cli", "export", str(tiny_checkpoint("phi3", "so400m")),
           "-o", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline and proc.poll() is None:
        partial = list(tmp_path.glob(".killed.partial-*/segment_0*.onnx"))
        if partial:
            break
        time.sleep(0.05)
    assert partial, "the export never reached the segments"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    # the next export cleans the dead export's temporary folder and completes
    from fusion_edge.export.bundle_export import export_bundle
    export_bundle(str(tiny_checkpoint("phi3", "so400m")), out, verify=False, progress=False)
    assert Bundle.open(out) and not list(tmp_path.glob(".killed.partial-*"))


@pytest.mark.slow
def test_large_graphs_use_one_external_data_file(tiny_checkpoint, onnx_bundle, tmp_path, monkeypatch, images):
    """Graphs over the threshold (real checkpoints: > 2 GB) keep weights in <graph>.onnx.data."""
    from fusion_edge.export import onnx_export
    from fusion_edge.export.bundle_export import export_bundle
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 200_000)
    out = export_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path / "ext", verify=False, progress=False)
    m = Bundle.open(out).manifest
    assert m["components"]["embed"]["files"] == ["embed.onnx", "embed.onnx.data"]
    assert all(not f.startswith(".trace") for f in m["files"])
    pipe = Pipeline.open(out, device="cpu")
    inline = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    text = pipe.ask(pipe.look(images["wide"]), "What is here?", max_new_tokens=6)
    assert text == inline.ask(inline.look(images["wide"]), "What is here?", max_new_tokens=6)
    (out / "embed.onnx.data").unlink()
    with pytest.raises(BundleFileError, match="embed.onnx.data"):
        Bundle.open(out)


def test_streamed_external_data_matches_inline(tmp_path):
    """Graphs torch traced with per-tensor external files (> 2 GB) are regathered into one
    <graph>.onnx.data tensor by tensor; the result computes the same."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from fusion_edge.export.onnx_export import _finalize
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save_model(model, str(scratch / "g.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(scratch.iterdir())) == 3                  # like torch: one file per tensor
    out = tmp_path / "bundle"
    out.mkdir()
    assert _finalize(scratch / "g.onnx", out / "g.onnx", "fp32") == ["g.onnx", "g.onnx.data"]
    assert [p.name for p in scratch.iterdir()] == ["g.onnx"]     # each tensor's file deleted once copied
    x = rng.standard_normal((1, 64)).astype(np.float32)
    y = ort.InferenceSession(str(out / "g.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w1 @ w2, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_verify_names_the_library_versions_that_changed_since_the_build(onnx_bundle, tiny_checkpoint, tmp_path,
                                                                       capsys):
    """A bundle built with another onnxruntime: `verify` says which versions differ and
    records the installed ones with its figures."""
    from fusion_edge.runtime import versions
    dst = tmp_path / "old"
    shutil.copytree(onnx_bundle("phi3", "so400m"), dst)
    manifest = json.loads((dst / "fusion_bundle.json").read_text())
    assert manifest["build"]["onnxruntime"] == versions.installed()["onnxruntime"]     # recorded at export
    manifest["build"]["onnxruntime"] = "1.0.0"
    (dst / "fusion_bundle.json").write_text(json.dumps(manifest))
    from fusion_edge.cli import main
    assert main(["verify", str(dst), "--model", str(tiny_checkpoint("phi3", "so400m")), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    now = versions.installed()["onnxruntime"]
    assert f"installed versions differ from the bundle's build: onnxruntime 1.0.0 → {now}" in out
    v = Bundle.open(dst).manifest["verification"]
    assert v["versions"] == versions.installed() and v["version_drift"] == [["onnxruntime", "1.0.0", now]]


def test_version_drift_ignores_packages_not_recorded_or_not_installed():
    from fusion_edge.runtime.versions import drift
    now = {"onnxruntime": "1.32.0", "onnx": "1.23.2", "torch": None, "llama_cpp_python": "0.3.36"}
    recorded = {"onnxruntime": "1.31.1", "onnx": "1.23.2", "torch": "2.13.0", "opset": 18}
    assert drift(recorded, now) == [("onnxruntime", "1.31.1", "1.32.0")]
    assert drift({}, now) == []
