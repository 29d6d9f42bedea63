"""The int8 vision tower (issue 25 item 2): `--vision-precision`, one table of names; the dynamic
tower (the cpu flavour's default) and what onnxruntime runs of it; the static tower's calibration
in bounded memory, and its export, gated.

The gated export with the default (dynamic) tower is tests/test_quantize.py's q8 bundle."""
from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from fusion_edge.calibration.record import Recordings
from fusion_edge.quantize import graph_io
from fusion_edge.quantize.planner import PrecisionNotSupportedError, plan
from fusion_edge.runtime.precisions import VISION_PRECISIONS
from fusion_edge.runtime.bundle import Bundle


def _vision_feeds(rec: Recordings) -> list[dict]:
    return [f for name in ("vision_main", "vision_global") for f in rec.samples(name)]


def test_vision_precisions_are_one_table_and_an_unknown_name_lists_them(capsys):
    from fusion_edge.cli import main
    cpu, trt = plan("onnxruntime-cpu", "int8"), plan("tensorrt", "int8", "8.7")
    assert cpu.components["vision"].method == "dynamic" and trt.components["vision"].method == "static"
    assert cpu.with_vision("int8") is cpu and cpu.with_vision(None) is cpu
    assert cpu.with_vision("int8-static").components["vision"].method == "static"
    assert cpu.with_vision("fp32").components["vision"].precision == "fp32"
    assert plan("onnxruntime-cpu", "int4").components["vision"].method == "dynamic"        # int4 bundles too
    assert trt.with_vision("int8-static").components["vision"].method == "static"
    with pytest.raises(PrecisionNotSupportedError) as e:
        trt.with_vision("int8-dynamic")                       # TensorRT takes static Q/DQ only
    assert "int8-static" in e.value.fix
    with pytest.raises(PrecisionNotSupportedError) as e:
        cpu.with_vision("int4")
    assert all(name in e.value.fix for name in VISION_PRECISIONS)
    assert set(VISION_PRECISIONS) == {"int8", "int8-dynamic", "int8-static", "fp32"}
    # the command line offers exactly the table's names and refuses others with the list
    rc = main(["export", "x", "--target", "onnx", "--precision", "int8", "--vision-precision", "int4", "-o", "y"])
    err = capsys.readouterr().err
    assert rc == 2 and "--vision-precision" in err and all(name in err for name in VISION_PRECISIONS)


@pytest.mark.slow
def test_dynamic_tower_holds_int8_weights_and_runs_the_u8s8_kernel(verified_fp32, recording, tmp_path):
    """Every constant-weight MatMul becomes DynamicQuantizeLinear → MatMulInteger with int8 (S8) weights;
    onnxruntime's CPU EP fuses each into DynamicQuantizeMatMul with those int8 weights: the U8S8 GEMM
    (VNNI/AMX on x86; ../shared/perf/matmul_kernels.py: 51 ms against 454 ms fp32 and ~400 ms for U8U8).
    The patch Conv and the attention products stay float; the output stays within ~2 % of fp32."""
    import onnxruntime as ort

    from fusion_edge.quantize.dynamic_int8 import quantize_dynamic_int8
    src, dst = verified_fp32 / "vision.onnx", tmp_path / "vision.onnx"
    report = quantize_dynamic_int8(src, dst, "vision")
    fp32 = graph_io.load(src)
    consts = {t.name for t in fp32.graph.initializer}
    weighted = [n for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    q = graph_io.load(dst)
    ops = Counter(n.op_type for n in q.graph.node)
    inits = {t.name: t for t in q.graph.initializer}
    assert ops["MatMulInteger"] == ops["DynamicQuantizeLinear"] == len(weighted) == report["quantized_weights"] > 0
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.INT8 for n in q.graph.node
               if n.op_type == "MatMulInteger")
    assert ops["Conv"] == 1 and "ConvInteger" not in ops and "QuantizeLinear" not in ops
    assert report["method"] == "dynamic" and report["calibration_samples"] == 0 and not report["exact_qdq_on_cpu"]

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")     # what the CPU EP runs
    sess = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
    ran = onnx.load(str(tmp_path / "optimized.onnx"))
    ran_ops = Counter(n.op_type for n in ran.graph.node)
    assert ran_ops["DynamicQuantizeMatMul"] == len(weighted) and "MatMulInteger" not in ran_ops
    ran_inits = {t.name: t.data_type for t in ran.graph.initializer}
    assert all(ran_inits[n.input[1]] == onnx.TensorProto.INT8 for n in ran.graph.node
               if n.op_type == "DynamicQuantizeMatMul")

    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for feeds in _vision_feeds(recording):
        a, b = sess.run(None, feeds)[0].astype(np.float64), ref.run(None, feeds)[0].astype(np.float64)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def _quantize_static_tower(src, dst, recording) -> list:
    """quantize_int8 of the vision graph, recording the options of every session onnxruntime opens
    → [(model path, SessionOptions)]."""
    import onnxruntime as ort

    from fusion_edge.calibration.reader import GraphFeeds
    from fusion_edge.quantize.static_int8 import Int8Scheme, quantize_int8
    opened, real = [], ort.InferenceSession

    class Recording(real):
        def __init__(self, path, sess_options=None, *args, **kwargs):
            opened.append((str(path), sess_options))
            super().__init__(path, sess_options, *args, **kwargs)

    ort.InferenceSession = Recording
    try:
        quantize_int8(src, dst, GraphFeeds(recording, "vision", ["pixels", "instruct_embeds", "instruct_keep"]),
                      "vision", Int8Scheme.for_flavour("cpu"))
    finally:
        ort.InferenceSession = real
    return opened


@pytest.mark.slow
def test_static_calibration_frees_each_tensor_after_its_ranges(verified_fp32, recording, tmp_path, monkeypatch):
    """onnxruntime's MinMax calibrator, run in its default node order, schedules the ReduceMin/ReduceMax it
    adds to every calibrated tensor after the rest of the graph, so every intermediate tensor stays alive
    to the end (the real tower, 1536 wide, was killed at 23.7 GB; docs/quantization.md has the figures).
    static_int8 opens that session in priority order: each tensor freed once reduced, the same ranges,
    so the same quantized graph. Peak memory is a benchmark figure (bench/vision_tower.py quantize), not
    asserted here: a process's peak RSS for this tiny graph varied from 0.2 to 1.9 GB between environments."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibraterBase

    from fusion_edge.quantize import static_int8
    src = verified_fp32 / "vision.onnx"
    original = CalibraterBase.create_inference_session
    fixed = _quantize_static_tower(src, tmp_path / "fixed.onnx", recording)
    assert CalibraterBase.create_inference_session is original            # patched only within the call
    calib = [o for path, o in fixed if "augmented" in Path(path).name]
    assert len(calib) == 1 and calib[0].execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert calib[0].graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # as onnxruntime's own
    monkeypatch.setattr(static_int8, "_calibration_in_priority_order", contextlib.nullcontext)
    before = _quantize_static_tower(src, tmp_path / "before.onnx", recording)
    assert all(o is None or o.execution_order == ort.ExecutionOrder.DEFAULT for path, o in before
               if "augmented" in Path(path).name)
    assert (tmp_path / "fixed.onnx").read_bytes() == (tmp_path / "before.onnx").read_bytes()


@pytest.mark.slow
def test_int8_static_tower_export_is_qdq_and_gated(verified_fp32, recording, tmp_path, capsys):
    """--vision-precision int8-static: the calibrated W8A8 Q/DQ tower (int8 weights), through the same gate."""
    from fusion_edge.cli import main
    out = tmp_path / "q8s"
    rc = main(["export", str(verified_fp32), "--target", "onnx", "--precision", "int8", "--calib", str(recording.path),
               "--vision-precision", "int8-static", "--eval-cases", "1", "--verify-steps", "6", "-o", str(out),
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = Bundle.open(out).manifest
    q = m["components"]["vision"]["quantization"]
    assert q["method"] == "static" and q["calibration_samples"] == 2 + 1       # 2 main tiles + 1 global call
    assert m["quantization"]["plan"]["components"]["vision"]["method"] == "static"
    model = graph_io.load(out / "vision.onnx")
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    assert ops["DequantizeLinear"] > 0 and "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    v = m["verification"]
    assert v["passed"] and not v["forced"] and "gate: passed" in text
    assert all(v["per_graph"][g]["cosine_min"] > 0.99 for g in ("vision_global", "vision_main"))


@pytest.mark.slow
def test_vision_bench_records_quantizes_and_compares(verified_fp32, recording, tmp_path, capsys):
    """bench/vision_tower.py, the tool behind the real-size figures (docs/results/benchmarks.md),
    on the tiny bundle: inputs of both modes recorded, a tower quantized with its peak RSS, and the
    comparison's figures (the fp32 graph against itself: exact)."""
    from fusion_edge.bench import vision_tower as vision_bench
    inputs = tmp_path / "inputs"
    assert vision_bench.main(["record", str(verified_fp32), str(inputs), "--images", "1"]) == 0
    assert sorted(p.name.split("_vision_")[1] for p in inputs.glob("*.npz")) == ["global.npz", "main.npz"]
    dyn = tmp_path / "dyn" / "vision.onnx"
    assert vision_bench.main(["quantize", "dynamic", str(verified_fp32 / "vision.onnx"), str(dyn)]) == 0
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert q["method"] == "dynamic" and q["peak_rss_bytes"] > 0 and q["quantized_weights"] > 0
    out = tmp_path / "cmp.json"
    assert vision_bench.main(["compare", str(inputs), str(verified_fp32 / "vision.onnx"), str(dyn), "--rounds", "1",
                              "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["threads"] == 2 and r["cpu"] and len(r["inputs"]) == 2
    for row in r["inputs"].values():
        same, q8 = row[str(verified_fp32 / "vision.onnx")], row[str(dyn)]
        assert same["max_abs"] == 0 and same["cosine"] > 1 - 1e-9 and len(same["times"]) == 1
        assert 0 < q8["rel_error"] < 0.05 and q8["cosine"] > 0.999
