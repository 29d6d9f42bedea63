"""INT8 W8A8 static Q/DQ quantization of one graph (vision, alignment, LLM segment).

onnxruntime's `quantize_static` with `QuantFormat.QDQ`, MinMax calibration over the
recorded inputs, per-channel symmetric weights (output-channel axis) and per-tensor
activations. Two flavours:
* cpu: uint8 asymmetric activations and int8 weights, "U8S8": the only int8 form that reaches
  onnxruntime's VNNI/AMX GEMM kernels on x86 (runtime/cpu_features.py has the measured
  kernel times: U8U8 runs at fp32 speed). x86 CPUs without VNNI would multiply U8S8 with
  vpmaddubsw, which sums pairs of u8×s8 products into int16 with saturation (on the tiny
  checkpoint 0.1–0.6 % of the pairs, each vision GEMM off by 1–11 %, and an int8 bundle that
  failed its gate on such a machine). There the runtime turns on onnxruntime's
  `session.x64quantprecision`, which converts the products to U8U8 (exact int32 sums); the
  gate records which path it ran on (`int8_path`). ARM int8 kernels do not saturate.
* cuda / trt: int8 symmetric activations and weights (zero-point 0), what TensorRT
  accepts; float biases (TensorRT takes them after a quantized GEMM). On the CPU EP these
  graphs run their Q/DQ as float (EXACT_QDQ_KEY on the component; see ort_session): the
  gate then measures TensorRT's exact int32 arithmetic, not a CPU's int8 kernels.

Quantized ops: MatMul/Gemm with a constant weight, and Conv (the patch embedding). Their
inputs get Q/DQ, their outputs do not (`OpTypesToExcludeOutputQuantization`): re-quantizing
every GEMM output only adds error and ops (measured on the tiny checkpoint: segment_01's
relative error 1.38 % → 1.20 %, vision 4.3 % → 3.3 %), onnxruntime then fuses DQ→MatMul
into `MatMulIntegerToFloat`, and TensorRT fuses the input Q/DQ into its int8 GEMM.
Exclusions, each with its reason (recorded in the bundle manifest):
* attention MatMuls whose two inputs are both activations (Q·Kᵀ, P·V): post-softmax
  probabilities and keys span a range one per-tensor int8 scale cannot hold; on the tiny
  checkpoints quantizing them raised a 3-layer segment's relative error from 1.3 % to 6 %.
  They carry no weights, so leaving them float costs no bytes.
* the lm_head (final segment), passed in by the exporter: stored int8 weight-only instead
  (weight_int8.py);
* node-name patterns the user keeps float (`--keep-float REGEX`).
MinMax is the calibrator because the histogram ones (Entropy/Percentile) in onnxruntime
need equal shapes across samples, and prompts differ in length.

Calibration memory: onnxruntime's calibrator adds a ReduceMin and a ReduceMax on every
calibrated tensor and runs that graph in its default node order, which schedules those
reductions after the rest of the graph: every intermediate tensor stays alive to the end of
the run. Quantizing the tiny test tower took 1.26 GB peak RSS against 0.20 GB in priority order
(one process each, 2026-12-07; docs/quantization.md), and the real SigLIP2 giant-opt tower
(1536 wide) was killed at 23.7 GB. The collected outputs are two numbers
per tensor (onnxruntime's CalibMaxIntermediateOutputs bounds those, and in 1.32.0 it drops
them without merging: "No data is collected", onnxruntime issue 18893). `quantize_int8` runs
the calibration session in priority order (`_calibration_in_priority_order`): each tensor is
freed once reduced, the ranges and the quantized graph are the same (tiny tower: identical
initializers).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from fusion_edge.runtime.backends.ort_session import EXACT_QDQ_KEY

from . import graph_io

ATTENTION_REASON = ("activation × activation MatMul (attention scores / context): post-softmax and key ranges "
                    "do not fit one per-tensor int8 scale; no weights, so float costs no bytes")
KEEP_FLOAT_REASON = "kept float by --keep-float"


@dataclass(frozen=True)
class Int8Scheme:
    activation_signed: bool        # int8 (True) or uint8 (False) activations
    symmetric_activations: bool
    quantize_bias: bool
    reduce_range: bool = False
    weight_signed: bool = True     # int8 (True) or uint8 (False) weights

    @classmethod
    def for_flavour(cls, flavour: str, reduce_range: bool = False) -> "Int8Scheme":
        if flavour == "cpu":
            return cls(False, False, True, reduce_range, weight_signed=True)
        if flavour in ("trt", "cuda"):
            return cls(True, True, False, reduce_range)
        raise ValueError(f"unknown flavour {flavour!r}")

    def describe(self) -> str:
        act = ("int8 symmetric" if self.activation_signed and self.symmetric_activations
               else "uint8 asymmetric" if not self.activation_signed else "int8 asymmetric")
        weights = "int8" if self.weight_signed else "uint8 (zero-point 128)"
        return (f"W8A8 Q/DQ, per-channel {weights} symmetric weights{' (7-bit)' if self.reduce_range else ''}, "
                f"per-tensor {act} activations, MinMax calibration")


def exclusions(model, keep_float: list[str] | tuple = ()) -> dict[str, str]:
    """node name → reason, for the nodes of `model` that stay float: attention MatMuls and
    nodes whose name matches a `keep_float` regex."""
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and not any(i in inits or i in consts for i in node.input):
            out[node.name] = ATTENTION_REASON
    return {**keep_float_nodes(model, keep_float), **out}


def keep_float_nodes(model, patterns) -> dict[str, str]:
    """Weighted nodes whose name matches one of the regexes `patterns` → reason."""
    return {n.name: KEEP_FLOAT_REASON for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and any(re.search(rx, n.name) for rx in patterns)}


def quantize_int8(src: Path, dst: Path, feeds, component: str, scheme: Int8Scheme,
                  extra_exclude: dict[str, str] | None = None, keep_float: list[str] | tuple = ()) -> dict:
    """Quantize graph `src` into `dst` with calibration reader `feeds` → report (files,
    quantized weight count, exclusions with reasons, scheme). `extra_exclude`: more
    node → reason (e.g. the lm_head, which weight_int8 stores separately)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    excluded = {**exclusions(graph_io.load_structure(src), keep_float), **(extra_exclude or {})}
    external = graph_io.has_external_data(src)
    with graph_io.quiet_ort_logging(), _calibration_in_priority_order():
        quantize_static(
            str(src), str(dst), feeds, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            per_channel=True, reduce_range=scheme.reduce_range,
            activation_type=QuantType.QInt8 if scheme.activation_signed else QuantType.QUInt8,
            weight_type=QuantType.QInt8 if scheme.weight_signed else QuantType.QUInt8,
            nodes_to_exclude=sorted(excluded),
            use_external_data_format=external, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
                           "QuantizeBias": scheme.quantize_bias, "MatMulConstBOnly": True,
                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]})
    model = graph_io.load(dst)
    files = graph_io.save(model, dst)
    return {"precision": "int8", "method": "static", "scheme": scheme.describe(), "files": files,
            "component": component, "quantized_weights": graph_io.quantized_weight_count(model),
            "excluded": _group(excluded), "calibration_samples": len(feeds),
            EXACT_QDQ_KEY: scheme.activation_signed}


@contextlib.contextmanager
def _calibration_in_priority_order():
    """onnxruntime's calibrators open their session on the augmented graph with optimizations off
    and the default node order; within this block they use priority-based order, so each
    calibrated tensor is freed once its ReduceMin/ReduceMax ran (module docstring). The session
    is otherwise the one onnxruntime opens (optimizations off, the calibrator's providers)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibraterBase
    original = CalibraterBase.create_inference_session

    def create_inference_session(self):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=opts,
                                                  providers=self.execution_providers)
    CalibraterBase.create_inference_session = create_inference_session
    try:
        yield
    finally:
        CalibraterBase.create_inference_session = original


def _group(excluded: dict[str, str]) -> list[dict]:
    """{reason: [nodes]} as a list, for the manifest."""
    by_reason: dict[str, list[str]] = {}
    for node, reason in excluded.items():
        by_reason.setdefault(reason, []).append(node)
    return [{"reason": r, "count": len(nodes), "nodes": nodes} for r, nodes in by_reason.items()]
