"""The precision planner: choices per target / compute capability and typed refusals."""
from __future__ import annotations

import pytest

from fusion_edge.quantize.planner import COMPONENTS, PrecisionNotSupportedError, parse_sm, plan
from fusion_edge.runtime.errors import DeviceError
from fusion_edge.runtime.precisions import PRECISIONS


def precisions(p) -> dict[str, str]:
    return {name: c.precision for name, c in p.components.items()}


def test_cpu_int8_and_int4_choices():
    p8 = plan("onnxruntime-cpu", "int8")
    assert precisions(p8) == {"vision": "int8", "align": "int8", "embed": "int8-weight", "llm": "int8"}
    assert p8.flavour == "cpu" and p8.sm is None
    assert "uint8 asymmetric" in p8.components["vision"].scheme      # onnxruntime's x86 scheme
    p4 = plan("onnxruntime-cpu", "int4")
    assert precisions(p4) == {"vision": "int8", "align": "int8", "embed": "int8-weight", "llm": "int4"}
    assert "MatMulNBits" in p4.components["llm"].scheme
    assert all(p4.components[c].reason for c in COMPONENTS)          # every choice says why


@pytest.mark.parametrize("sm", ["8.6", "8.7", "8.9"])
def test_tensorrt_int8_int4_on_ampere_orin_ada(sm):
    p8 = plan("tensorrt", "int8", sm)
    assert p8.flavour == "trt" and p8.sm == parse_sm(sm)
    assert precisions(p8) == {"vision": "int8", "align": "int8", "embed": "fp32", "llm": "int8"}
    assert "int8 symmetric" in p8.components["vision"].scheme and "zero-point 0" in p8.components["vision"].scheme
    p4 = plan("tensorrt", "int4", sm)
    assert p4.components["llm"].precision == "int4"
    assert "opset 21" in p4.components["llm"].scheme and "symmetric" in p4.components["llm"].scheme


def test_cuda_int4_uses_matmulnbits_and_notes_int8_on_cuda_ep():
    p = plan("onnxruntime-cuda", "int4", "8.6")
    assert p.flavour == "cuda" and "MatMulNBits" in p.components["llm"].scheme
    assert any("CUDA EP" in n for n in p.notes)


@pytest.mark.parametrize("target,sm", [("onnxruntime-cpu", None), ("onnxruntime-cuda", "9.0"), ("tensorrt", "10.0")])
@pytest.mark.parametrize("precision", ["bf16", "fp8", "fp4"])
def test_precisions_fusion_edge_does_not_build_are_refused_with_the_list(target, sm, precision):
    """bf16/fp8/fp4 are not built by any exporter: refused on every target and GPU, even one
    whose hardware has the kernels, naming the precisions that are built (runtime/precisions.py)."""
    with pytest.raises(PrecisionNotSupportedError) as e:
        plan(target, precision, sm)
    assert "not one fusion-edge builds" in e.value.problem
    assert e.value.fix == f"choose one of: {', '.join(PRECISIONS)}"


def test_the_planner_knows_every_precision_of_the_table():
    """Every precision of the one table plans on a GPU at its SM floor, and is refused (naming the
    floor and what does run there) just below it."""
    for name, p in PRECISIONS.items():
        floor = f"{p.min_sm[0]}.{p.min_sm[1]}"
        assert plan("onnxruntime-cuda", name, floor).precision == name
        below = [n for n, q in PRECISIONS.items() if q.min_sm < p.min_sm]
        if p.min_sm > (7, 0):
            with pytest.raises(PrecisionNotSupportedError) as e:
                plan("tensorrt", name, "7.5")
            assert f"SM {floor}" in e.value.problem and e.value.fix == f"use {' or '.join(below)} on this GPU"


def test_refusals_are_typed_with_problem_and_fix():
    cases = [("tensorrt", "int4", "7.5", "SM 8.0"),        # no INT4 weight-only GEMM on Turing
             ("tensorrt", "int8", "6.1", "SM 7.0")]        # below what TensorRT 10 is built for
    for target, precision, sm, word in cases:
        with pytest.raises(PrecisionNotSupportedError) as e:
            plan(target, precision, sm)
        assert isinstance(e.value, DeviceError)
        assert word in str(e.value), (target, precision, sm, str(e.value))
        assert e.value.fix


def test_bad_inputs_and_defaults():
    with pytest.raises(PrecisionNotSupportedError):
        plan("tpu", "int8")
    with pytest.raises(PrecisionNotSupportedError):
        plan("tensorrt", "int3", "8.7")
    with pytest.raises(PrecisionNotSupportedError):
        plan("tensorrt", "int8", "eight")
    with pytest.raises(PrecisionNotSupportedError):
        plan("onnxruntime-cpu", "int8", "8.7")          # SM makes no sense for the CPU
    p = plan("tensorrt", "int8")                        # no SM: Orin, with a note saying so
    assert p.sm == (8, 7) and any("SM 8.7" in n for n in p.notes)
    assert parse_sm("87") == (8, 7) and parse_sm("sm_89") == (8, 9) and parse_sm("10.0") == (10, 0)
    assert "Orin" in p.explain() and "llm" in p.explain()
    assert p.to_dict()["components"]["llm"]["precision"] == "int8"
