"""INT4 bundles of a tiny checkpoint: weight-only MatMulNBits segments, sizes, figures, options."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from fusion_edge.calibration.builtin import builtin_pairs
from fusion_edge.calibration.dataset import CalibItem
from fusion_edge.calibration.record import record_calibration
from fusion_edge.quantize import agreement, graph_io
from fusion_edge.quantize.weight_int4 import int4_matmuls, quantize_int4
from fusion_edge.runtime.bundle import Bundle
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.pipeline import Pipeline

# one xdist worker: its module fixtures export the int4 bundle once
pytestmark = pytest.mark.xdist_group("test_quantize_int4")

STEPS = 6


@pytest.fixture(scope="module")
def fp32(verified_fp32):
    return verified_fp32                  # quantized bundles are built only from a verified fp32 bundle


@pytest.fixture(scope="module")
def q4(fp32, tmp_path_factory, log_lines):
    """export_bundle(<fp32 bundle>, target onnx, precision int4) with a 2-pair recording → (bundle, log)."""
    from fusion_edge.targets import export_bundle
    (key, img, _), = builtin_pairs("calib", 1)
    pipe = Pipeline.open(fp32, device="cpu")
    root = tmp_path_factory.mktemp("q4")
    held = [CalibItem(*pair) for pair in builtin_pairs("eval", 2)]
    rec = record_calibration(pipe, [CalibItem(key, img, "What is on the table?"), CalibItem(key, img, "Any cars?")],
                             root / "calib", samples=2, held_out=held,
                             progress=False)
    with log_lines() as logs:
        out = export_bundle(str(fp32), root / "q4", "onnx", "int4", steps=STEPS, progress=False,
                            calib=str(rec.path), eval_cases=2, block_size=32, accuracy_level=4)
    return out, "\n".join(logs)


@pytest.mark.slow
def test_int4_bundle_loads_and_answers(q4, images):
    out, log = q4
    b = Bundle.open(out)
    assert b.precision == "int4"
    assert {b.components[f"segment_{k:02d}"]["precision"] for k in range(11)} == {"int4"}
    assert b.components["vision"]["precision"] == "int8" and b.components["align_03"]["precision"] == "int8"
    pipe = Pipeline.open(out, device="cpu")
    text = pipe.ask(pipe.look(images["tall"]), "What is on the floor?", max_new_tokens=4)
    assert isinstance(text, str) and 1 <= len(pipe.last_result.token_ids) <= 4
    assert "MatMulNBits 4-bit blocks" in log


def test_int4_segments_are_matmulnbits_blocks(q4, fp32):
    out, _ = q4
    src, dst = graph_io.load(fp32 / "segment_03.onnx"), graph_io.load(out / "segment_03.onnx")
    weights = int4_matmuls(src)
    nbits = [n for n in dst.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(weights) == 12                          # 3 layers × qkv, o, gate_up, down
    attrs = [{a.name: a.i for a in n.attribute} for n in nbits]
    assert all(a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 4 for a in attrs)
    assert sorted((a["K"], a["N"]) for a in attrs) == sorted(kn for _, kn in weights)
    assert not [n for n in dst.graph.node if n.op_type == "MatMul" and n.input[1] in
                {t.name for t in dst.graph.initializer}]             # no fp32 weight left behind
    head = [n for n in graph_io.load(out / "segment_10.onnx").graph.node if n.op_type == "MatMulNBits"
            and {a.name: a.i for a in n.attribute}["N"] == Bundle.open(out).config.llm.vocab_size]
    assert len(head) == 1 and {a.name: a.i for a in head[0].attribute}["bits"] == 8     # lm_head int8


def test_int4_sizes_and_figures(q4):
    out, log = q4
    m = Bundle.open(out).manifest
    totals = m["quantization"]["weight_bytes_total"]
    # 4-bit weights + one fp32 scale per 32 → 0.625 byte/weight (6.4×); the int8 lm_head and fp32 norms pull it down
    assert 5.0 < totals["llm"]["fp32"] / totals["llm"]["quantized"] < 6.4
    seg = m["quantization"]["weight_bytes"]["segment_04"]
    assert 5.8 < seg["fp32"] / seg["quantized"] < 6.4
    v = m["verification"]
    assert v["passed"] and v["thresholds"] == agreement.GATES["int4"]
    assert v["top1_agreement"] >= agreement.GATES["int4"]["top1_agreement"]
    assert 0.98 <= v["logit_cosine_mean"] <= 1.0 and len(v["per_graph"]) == 24
    assert "segment_07" in log and "top-1 agreement" in log
    assert m["components"]["segment_10"]["quantization"]["weight_only_int8"] == ["/lm_head/MatMul"]


def test_block_size_and_accuracy_level_options(fp32, tmp_path):
    src = fp32 / "segment_01.onnx"
    r16 = quantize_int4(src, tmp_path / "b16.onnx", "cpu", block_size=16, accuracy_level=None)
    r64 = quantize_int4(src, tmp_path / "b64.onnx", "cpu", block_size=64, accuracy_level=4)
    s16 = graph_io.weight_bytes(graph_io.load(tmp_path / "b16.onnx"))["float32"]
    s64 = graph_io.weight_bytes(graph_io.load(tmp_path / "b64.onnx"))["float32"]
    assert s16 > s64                                                   # 4× the scales at block 16
    a16 = {a.name: a.i for a in next(n for n in graph_io.load(tmp_path / "b16.onnx").graph.node
                                     if n.op_type == "MatMulNBits").attribute}
    assert a16["block_size"] == 16 and "accuracy_level" not in a16
    assert r64["accuracy_level"] == 4 and r16["quantized_weights"] == 12
    with pytest.raises(ExportError) as e:
        quantize_int4(src, tmp_path / "bad.onnx", "cpu", block_size=48)
    assert "16" in e.value.fix
    with pytest.raises(ExportError) as e:                              # K = 64 is not a multiple of 128
        quantize_int4(src, tmp_path / "bad.onnx", "cpu", block_size=128)
    assert "--block-size" in e.value.fix


def test_int4_outputs_track_fp32_per_graph(fp32, tmp_path):
    """Weight-only int4 on one segment: close to fp32 on real inputs, and not identical."""
    import onnxruntime as ort
    quantize_int4(fp32 / "segment_02.onnx", tmp_path / "s2.onnx", "cpu", block_size=32)
    feeds = {"hidden": np.random.default_rng(0).normal(0, 3, (1, 20, 64)).astype(np.float32),
             "cos": np.ones((20, 16), np.float32), "sin": np.zeros((20, 16), np.float32)}
    for i in (4, 5, 6):
        feeds[f"past_k_{i}"] = feeds[f"past_v_{i}"] = np.zeros((1, 0, 4, 16), np.float32)
    a = ort.InferenceSession(str(fp32 / "segment_02.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(tmp_path / "s2.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert 0.99 < agreement.cosine(a, b) < 1.0 - 1e-7


def test_int4_decode_graph_is_chained_from_the_int4_segments(q4, decode_parity, tmp_path):
    """The quantizer rebuilds the decode graph from the quantized segments, sharing their
    weights: same MatMulNBits, same logits as decoding through the segments."""
    out, _ = q4
    diff, (merged, segments), comp = decode_parity(out, tmp_path)
    assert comp["precision"] == "int4" and comp["files"] == ["decode.onnx", "llm.onnx.data"]
    assert comp["attention"] == "GroupQueryAttention" and comp["kv_layout"] == "BNSH"      # CPU flavour
    nbits = [n for n in graph_io.load(out / "decode.onnx").graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * Bundle.open(out).config.llm.num_layers + 1      # every layer's 4 + the lm_head
    # GroupQueryAttention vs the segments' MatMul/Softmax attention: fp32 sums in another
    # order (2.3e-5 here); the fidelity gate of the decode graph (1e-4), the same tokens
    assert diff <= 1e-4 and merged == segments


def test_an_accuracy_level_other_than_4_on_the_cpu_is_warned_about(caplog):
    """Level 0 puts the 8-bit lm_head on onnxruntime's slow MatMulNBits path (~100x per token):
    checked with the export's options, before any work (fusion_edge/targets.py export_bundle)."""
    from fusion_edge.export.cli_export import check_export_options
    with caplog.at_level(logging.WARNING, logger="fusion_edge.export.cli_export"):
        check_export_options(16, {"accuracy_level": 4, "flavour": "cpu"})
        check_export_options(16, {"accuracy_level": None, "flavour": "cuda"})     # no CPU kernels
        check_export_options(16, {})                                              # fp32: no such option
        assert caplog.messages == []
        check_export_options(16, {"accuracy_level": None, "flavour": "cpu"})      # --accuracy-level 0
    assert len(caplog.messages) == 1 and "--accuracy-level 0" in caplog.messages[0]
    assert "100x slower" in caplog.messages[0]
