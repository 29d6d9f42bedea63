"""INT4 block-wise weight-only quantization of the LLM segments' MatMuls.

Our exported segments hold every projection as `MatMul(x, W)` with W a (K, N) initializer
(torch's Linear weight already transposed at export; no Gemm), which is exactly what
onnxruntime's `MatMulNBitsQuantizer` picks up; attention MatMuls (no constant input) are
left alone. Two storage forms of the same symmetric int4 blocks along K:
* onnxruntime (cpu/cuda flavours): the `MatMulNBits` contrib op (com.microsoft), packed
  4-bit blocks + fp32 scales, `accuracy_level` (4 = int8 activations inside the CPU
  kernel, the fast path; 0/None = fp32 compute).
* TensorRT flavour: standard ONNX — int4 initializer → `DequantizeLinear(axis=0,
  block_size=B)` (opset 21) → `MatMul`; symmetric, so no zero-point input (TensorRT
  rejects non-zero int4 zero-points). The graph is converted to opset 21 first with
  onnx's version converter, so every other op is valid at 21, not just relabelled.
Block size: K must be a multiple (checked; the quantizer would pad otherwise).
"""
from __future__ import annotations

from pathlib import Path

from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.option_types import INT4_BLOCK_SIZES

from . import graph_io

BLOCK_SIZES = INT4_BLOCK_SIZES      # --block-size checks the same tuple
INT4_OPSET = 21


def int4_matmuls(model) -> list[tuple[str, tuple[int, int]]]:
    """(node name, (K, N)) of the MatMuls with a 2-D constant weight."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [(n.name, inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]]) == 2]


def quantize_int4(src: Path, dst: Path, flavour: str, block_size: int = 32, accuracy_level: int | None = 4,
                  exclude: dict[str, str] | None = None) -> dict:
    """Quantize `src`'s constant-weight MatMuls to int4 blocks into `dst` → report."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    if block_size not in BLOCK_SIZES:
        raise ExportError(f"int4 block size {block_size} is not supported.",
                          f"use one of {', '.join(map(str, BLOCK_SIZES))}")
    exclude = dict(exclude or {})
    model = graph_io.load(src)
    for name, (k, _) in int4_matmuls(model):
        if k % block_size and name not in exclude:
            raise ExportError(f"{src.name}: {name} has K={k}, not a multiple of the int4 block size {block_size}.",
                              "choose a --block-size that divides the hidden and intermediate sizes")
    trt = flavour == "trt"
    if trt:
        import onnx
        model = onnx.version_converter.convert_version(model, INT4_OPSET)
    with graph_io.quiet_ort_logging():
        q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                 accuracy_level=None if trt else accuracy_level, nodes_to_exclude=sorted(exclude),
                                 quant_format=QuantFormat.QDQ if trt else QuantFormat.QOperator)
        q.process()
    out = q.model.model
    files = graph_io.save(out, dst)
    form = (f"int4 DequantizeLinear blocks (opset {INT4_OPSET}, block {block_size}, symmetric) → MatMul" if trt else
            f"MatMulNBits int4 (block {block_size}, symmetric, accuracy_level {accuracy_level or 0})")
    return {"precision": "int4", "scheme": f"weight-only {form}, fp32 activations", "files": files,
            "quantized_weights": graph_io.quantized_weight_count(out), "block_size": block_size,
            "accuracy_level": None if trt else accuracy_level,
            "excluded": [{"reason": r, "count": 1, "nodes": [n]} for n, r in exclude.items()]}
