"""TensorRT through onnxruntime's TensorRT EP (Jetson: JetPack 6.x; RTX: the TensorRT-RTX
plugin): engines built right after export on this GPU and verified against the reference,
reopened from the engine cache without rebuilding, resumable build-engines, and a typed error
for a tampered stamp. Skipped with the reason where no TensorRT EP is usable."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from gpu_helpers import first_logits_gap, needs_trt

from fusion_edge.cli import main
from fusion_edge.runtime.bundle import Bundle, sha256_file
from fusion_edge.runtime.errors import EngineMismatchError
from fusion_edge.runtime.pipeline import Pipeline

pytestmark = [pytest.mark.gpu, needs_trt]
TRT = {"vision": "tensorrt", "align": "tensorrt", "llm": "tensorrt"}


@pytest.fixture(scope="module")
def trt_fp16(tiny_checkpoint, work_dir):
    """The tiny fp16 trt bundle, exported here: engines built and verified on them at export."""
    from fusion_edge.targets import export_bundle
    out = work_dir / "gpu-trt" / "fp16"
    t0 = time.perf_counter()
    export_bundle(str(tiny_checkpoint("phi3", "so400m")), out, "trt", "fp16", steps=8, progress=False)
    return out, time.perf_counter() - t0


def _engine_files(path):
    engines = Bundle.open(path).manifest["engines"]
    return {rel: (path / rel).stat().st_mtime_ns for g in engines["graphs"].values() for rel in g["files"]}


def test_export_builds_the_engines_and_verifies_on_them(trt_fp16):
    from fusion_edge.export.trt_engines import current_platform
    path, seconds = trt_fp16
    m = Bundle.open(path).manifest
    here = current_platform()
    engines = m["engines"]
    print(f"export + engines + verification: {seconds:.1f} s on {here.gpu_name} (TensorRT {here.tensorrt_version})")
    assert engines["state"] == "built" and engines["tensorrt_version"] == here.tensorrt_version
    assert engines["sm"] == here.sm_text and set(engines["graphs"]) == set(m["components"])
    for g in engines["graphs"].values():
        for rel, digest in g["files"].items():
            assert sha256_file(path / rel) == digest
    figures = m["verification_tensorrt"]
    print(f"on TensorRT: max |dlogit| {figures['max_dlogit']:.3g}, top-1 {figures['top1_agreement']:.0%}")
    assert figures["placement"]["devices"] == TRT and figures["passed"], figures["gate"]


def test_reopening_loads_the_cached_engines_without_rebuilding(trt_fp16, reference, images):
    path, export_s = trt_fp16
    before = _engine_files(path)
    t0 = time.perf_counter()
    pipe = Pipeline.open(path, device="tensorrt", no_build=True)
    open_s = time.perf_counter() - t0
    print(f"reopen from the engine cache: {open_s:.2f} s (export with engine build {export_s:.1f} s)")
    assert pipe.devices == TRT and pipe.device_notice is None
    assert pipe.llm.embed_sess.get_providers()[0] in ("TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")
    assert _engine_files(path) == before                        # nothing rebuilt or rewritten
    assert open_s < export_s / 2
    gap, got, want = first_logits_gap(pipe, reference("phi3", "so400m"), images["wide"])
    print(f"trt fp16: max |dlogit| {gap:.3g}, tokens {got} vs {want}")
    assert np.isfinite(gap) and got[:1] == want[:1]


def test_a_tampered_stamp_or_engine_is_a_typed_error(trt_fp16, tmp_path):
    path, _ = trt_fp16
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    b = Bundle.open(copy)
    engines = dict(b.manifest["engines"])
    b.update_manifest(engines={**engines, "tensorrt_version": "9.9.9"})
    with pytest.raises(EngineMismatchError, match="built with TensorRT 9.9.9") as e:
        Pipeline.open(copy, device="tensorrt")
    assert "--rebuild" in e.value.fix
    b.update_manifest(engines={**engines, "sm": "7.5"})
    with pytest.raises(EngineMismatchError, match="built for SM 7.5"):
        Pipeline.open(copy, device="tensorrt")
    b.update_manifest(engines=engines)
    rel = next(iter(engines["graphs"]["vision"]["files"]))
    (copy / rel).write_bytes(b"not an engine")
    with pytest.raises(EngineMismatchError, match="does not match its sha256"):
        Pipeline.open(copy, device="tensorrt")


def test_build_engines_resumes_per_graph_and_rebuilds(trt_fp16, tmp_path, capsys):
    path, _ = trt_fp16
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    b = Bundle.open(copy)
    engines = json.loads(json.dumps(b.manifest["engines"]))
    engines["graphs"].pop("segment_00")                         # as if interrupted before this graph
    engines["state"] = "partial"
    b.update_manifest(engines=engines)
    assert main(["build-engines", str(copy), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "segment_00: engine built" in err and "vision: engine built" not in err
    assert Bundle.open(copy).manifest["engines"]["state"] == "built"
    assert main(["build-engines", str(copy), "--rebuild", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("engine built") == len(b.components)
