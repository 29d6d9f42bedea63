"""The TensorRT-flavoured Q/DQ graphs are structurally what TensorRT accepts (checked with onnx
on the CPU: no TensorRT here), and still run on onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fusion_edge.calibration.builtin import builtin_pairs
from fusion_edge.calibration.dataset import CalibItem
from fusion_edge.calibration.reader import GraphFeeds
from fusion_edge.calibration.record import record_calibration
from fusion_edge.quantize import agreement, graph_io, qdq_check
from fusion_edge.quantize.onnx_quant import quantize_bundle
from fusion_edge.quantize.planner import plan
from fusion_edge.quantize.static_int8 import Int8Scheme, quantize_int8
from fusion_edge.quantize.weight_int4 import quantize_int4
from fusion_edge.quantize.weight_int8 import lm_head_nodes, weight_only_int8
from fusion_edge.runtime.bundle import Bundle
from fusion_edge.runtime.pipeline import Pipeline

# one xdist worker: its module fixtures record calibration and quantize a trt bundle once
pytestmark = pytest.mark.xdist_group("test_quantize_trt")


@pytest.fixture(scope="module")
def rec(bundle, tmp_path_factory):
    (key, img, _), = builtin_pairs("calib", 1)
    pipe = Pipeline.open(bundle, device="cpu")
    return record_calibration(pipe, [CalibItem(key, img, "Is the path clear?")], tmp_path_factory.mktemp("t") / "c",
                              samples=1, progress=False)


@pytest.fixture(scope="module")
def trt_int4(bundle, rec, tmp_path_factory):
    """A whole --for trt --precision int4 bundle (SM 8.7), no gate: the exporter's own TensorRT check runs."""
    return quantize_bundle(bundle, tmp_path_factory.mktemp("t4") / "b", plan("tensorrt", "int4", "8.7"), rec, [],
                           verify=False, progress=False)


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _assert_trt_ready(model, min_opset: int) -> None:
    assert qdq_check.problems(model) == []
    onnx.checker.check_model(model, full_check=True)
    assert _opset(model) >= min_opset
    ops = {n.op_type for n in model.graph.node}
    assert not {o for o in ops if o.startswith("QLinear") or o in ("MatMulNBits", "MatMulInteger")}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:                                   # symmetric: every zero-point 0, signed
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            zp = inits[n.input[2]]
            assert zp.data_type in (3, 22) and not np.any(onnx.numpy_helper.to_array(zp).astype(int))


def test_trt_int8_segment_and_alignment_graphs(bundle, rec, tmp_path):
    scheme = Int8Scheme.for_flavour("trt")
    for name in ("align_02", "segment_01"):
        comp = Bundle.open(bundle).components[name]
        quantize_int8(bundle / f"{name}.onnx", tmp_path / f"{name}.onnx", GraphFeeds(rec, name, comp["inputs"]),
                      name, scheme)
        m = graph_io.load(tmp_path / f"{name}.onnx")
        _assert_trt_ready(m, 13)
        q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
        assert q and len(dq) > len(q)                           # activation pairs + weight DQs
        scales = {t.name: t for t in m.graph.initializer}
        assert all(int(np.prod(scales[n.input[1]].dims)) == 1 for n in q)     # per-tensor activations


def test_trt_lm_head_weight_only_int8_is_per_channel_dq(bundle, tmp_path):
    model = graph_io.load(bundle / "segment_10.onnx")
    heads = lm_head_nodes(model, 832)
    assert heads == ["/lm_head/MatMul"]
    out = weight_only_int8(model, heads, "trt")
    _assert_trt_ready(out, 13)
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute}["axis"] == 1


@pytest.mark.slow
def test_trt_int4_bundle_is_plain_qdq_with_opset21_blocks(trt_int4):
    b = Bundle.open(trt_int4)
    assert b.manifest["quantization"]["flavour"] == "trt" and b.manifest["quantization"]["plan"]["sm"] == "8.7"
    assert b.components["embed"]["precision"] == "fp32"          # TensorRT flavour keeps the Gather table
    assert "attention" not in b.components["decode"]           # and the Concat attention (no contrib op)
    for name, comp in b.components.items():
        if comp["precision"] == "fp32":
            continue
        model = graph_io.load(trt_int4 / comp["files"][0])
        _assert_trt_ready(model, 21 if name.startswith("segment_") else 13)
    seg = graph_io.load(trt_int4 / "segment_04.onnx")
    inits = {t.name: t for t in seg.graph.initializer}
    blocks = [n for n in seg.graph.node if n.op_type == "DequantizeLinear" and inits[n.input[0]].data_type == 22]
    assert len(blocks) == 12
    for n in blocks:
        attrs = {a.name: a.i for a in n.attribute}
        assert attrs["block_size"] == 32 and attrs["axis"] == 0 and len(n.input) == 2     # no zero-point input
        assert inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0] // 32               # one scale per block
    assert b.components["segment_04"]["quantization"]["accuracy_level"] is None


@pytest.mark.slow
def test_trt_bundle_runs_on_onnxruntime_close_to_fp32(trt_int4, bundle, images):
    ref, q = Pipeline.open(bundle, device="cpu"), Pipeline.open(trt_int4, device="cpu")
    ref.ask(ref.look(images["wide"]), "What is on the table?", max_new_tokens=1)
    q.ask(q.look(images["wide"]), "What is on the table?", max_new_tokens=1)
    assert agreement.cosine(ref.last_result.first_logits, q.last_result.first_logits) > 0.98


def test_checker_catches_what_tensorrt_rejects(bundle, rec, tmp_path):
    """The onnxruntime (cpu) flavour is not TensorRT-ready: the check must say why."""
    comp = Bundle.open(bundle).components["segment_01"]
    quantize_int8(bundle / "segment_01.onnx", tmp_path / "cpu8.onnx", GraphFeeds(rec, "segment_01", comp["inputs"]),
                  "segment_01", Int8Scheme.for_flavour("cpu"))
    bad = " ".join(qdq_check.problems(graph_io.load(tmp_path / "cpu8.onnx")))
    assert "non-zero zero-point" in bad and "unsigned" in bad
    quantize_int4(bundle / "segment_01.onnx", tmp_path / "cpu4.onnx", "cpu")
    bad = " ".join(qdq_check.problems(graph_io.load(tmp_path / "cpu4.onnx")))
    assert "MatMulNBits is not explicit Q/DQ" in bad
    assert qdq_check.problems(graph_io.load(bundle / "segment_01.onnx")) == ["no DequantizeLinear at all: the graph "
                                                                           "is not quantized"]


def test_keep_float_leaves_named_nodes_unquantized(bundle, rec, tmp_path):
    comp = Bundle.open(bundle).components["segment_01"]
    r = quantize_int8(bundle / "segment_01.onnx", tmp_path / "k.onnx", GraphFeeds(rec, "segment_01", comp["inputs"]),
                      "segment_01", Int8Scheme.for_flavour("trt"), keep_float=("/down/",))
    kept = next(e for e in r["excluded"] if "--keep-float" in e["reason"])
    assert kept["count"] == 3 and all("/down/" in n for n in kept["nodes"])
    m = graph_io.load(tmp_path / "k.onnx")
    inits = {t.name for t in m.graph.initializer}
    down = [n for n in m.graph.node if n.op_type == "MatMul" and "/down/" in n.name]
    assert len(down) == 3 and all(n.input[1] in inits for n in down)          # fp32 weight, no DequantizeLinear
    assert r["quantized_weights"] == 9                                        # qkv, o, gate_up × 3 layers


def test_trt_flavour_runs_its_qdq_exactly_on_the_cpu_ep(trt_int4):
    """int8-activation graphs are marked for float Q/DQ on the CPU EP (TensorRT's exact int32
    arithmetic, not a CPU's saturating int8 kernels); the session really gets the option."""
    from fusion_edge.runtime.backends.ort_session import component_session, make_session
    b = Bundle.open(trt_int4)
    comp = b.components["vision"]
    assert comp["precision"] == "int8" and comp["exact_qdq_on_cpu"] is True

    def disable_quant_qdq(sess):
        try:
            return sess.get_session_options().get_session_config_entry("session.disable_quant_qdq")
        except RuntimeError:                  # onnxruntime raises for a key never set
            return None
    assert disable_quant_qdq(component_session(b, comp, ["CPUExecutionProvider"])) == "1"
    assert disable_quant_qdq(make_session(b.file(comp["files"][0]), ["CPUExecutionProvider"])) is None
