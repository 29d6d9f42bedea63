"""INT8 dynamic quantization of one graph (the vision tower): int8 weights, activations
quantized at run time, no calibration.

onnxruntime's `quantize_dynamic`: every MatMul with a constant weight becomes
DynamicQuantizeLinear (uint8 asymmetric, the range of this call's input) → MatMulInteger
(per-channel int8 symmetric weights, zero-point 0) → Cast → Mul by the two scales.
onnxruntime's CPU EP fuses that chain into one `DynamicQuantizeMatMul` (com.microsoft), U8S8:
the VNNI/AMX GEMM kernels on x86, sdot/i8mm on ARM (on one 640×3072·3072×8192 product, one
thread: 51 ms against 454 ms fp32 and 54 ms for static U8S8 Q/DQ; onnxruntime 1.32.0,
../shared/perf/matmul_kernels.py). x86 CPUs without VNNI get the exact U8U8 conversion from
the same session option as the static graphs (runtime/cpu_features.py): onnxruntime applies
`session.x64quantprecision` to DynamicQuantizeMatMul too.

Why the tower, and why dynamic: the static quantizer (static_int8.py) calibrates by running
an augmented copy of the graph, and on the real 4.5 GB SigLIP2 giant-opt tower that run was
killed at 23.7 GB on a 24 GiB machine (its intermediate tensors all stayed alive; static_int8.py
now orders that session so they do not: 13.6 GiB). The dynamic quantizer needs no calibration
session (170 s and 13.0 GiB peak for the real tower), and each call's activations get their own
range, which is at least as close to fp32 as a range calibrated on other images
(docs/quantization.md has the measured figures at real size).

Left float, each with its reason (recorded in the manifest): attention MatMuls whose two
inputs are activations (as in static_int8), the patch-embedding Conv (raw pixels; one of
the largest contributors to the tower's int8 error measured per group, 0.03 % of the
tower's multiply-adds, so float costs neither time nor much memory), and --keep-float
patterns.
"""
from __future__ import annotations

from pathlib import Path

from fusion_edge.runtime.backends.ort_session import EXACT_QDQ_KEY

from . import graph_io
from .static_int8 import ATTENTION_REASON, _group, keep_float_nodes

METHOD = "dynamic"
SCHEME = ("dynamic int8: per-channel int8 symmetric weights, per-tensor uint8 asymmetric activations quantized "
          "per call (DynamicQuantizeLinear → MatMulInteger; onnxruntime's CPU EP runs DynamicQuantizeMatMul, U8S8), "
          "no calibration")
PATCH_CONV_REASON = ("patch embedding Conv: raw pixels, 0.03 % of the tower's multiply-adds; one of the largest "
                     "int8 error contributors, so float costs no time")
OP_TYPES = ("MatMul",)


def exclusions(path: Path, keep_float: list[str] | tuple = ()) -> dict[str, str]:
    """node name → reason for the nodes of the graph at `path` that stay float (read without
    its weights: a real-size tower is 4.5 GB)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = {n.name: PATCH_CONV_REASON for n in model.graph.node if n.op_type == "Conv"}
    out.update({n.name: ATTENTION_REASON for n in model.graph.node
                if n.op_type == "MatMul" and not any(i in consts for i in n.input)})
    return {**keep_float_nodes(model, keep_float), **out}


def quantize_dynamic_int8(src: Path, dst: Path, component: str, keep_float: list[str] | tuple = ()) -> dict:
    """Quantize graph `src` into `dst` → report (files, quantized weight count, exclusions
    with their reasons, scheme, method "dynamic")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    excluded = exclusions(src, keep_float)
    with graph_io.quiet_ort_logging():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(OP_TYPES), per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(excluded),
                         use_external_data_format=graph_io.has_external_data(src),
                         extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True})
    model = graph_io.load(dst)
    files = graph_io.save(model, dst)
    return {"precision": "int8", "method": METHOD, "scheme": SCHEME, "files": files, "component": component,
            "quantized_weights": graph_io.quantized_weight_count(model), "excluded": _group(excluded),
            "calibration_samples": 0, EXACT_QDQ_KEY: False}
