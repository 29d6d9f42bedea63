"""Is a Q/DQ graph structurally what TensorRT's ONNX parser accepts for explicit quantization?

Checked with onnx alone (no TensorRT needed), per TensorRT's explicit-quantization rules:
* only standard-domain QuantizeLinear/DequantizeLinear carry quantization: no QLinear*,
  MatMulInteger/ConvInteger, DynamicQuantizeLinear, or com.microsoft contrib ops;
* signed, symmetric: int8 (or int4 weights), every zero-point 0 (or absent);
* activations per-tensor (scalar scale) and every activation QuantizeLinear feeds
  DequantizeLinear (Q/DQ pairs), every activation DequantizeLinear comes from a Q;
* weights: a constant int8/int4 initializer into DequantizeLinear; per-channel (axis)
  needs opset ≥ 13, int4 / `block_size` needs opset ≥ 21 and blocks along K of a 2-D
  weight feeding MatMul; no int32 (quantized bias) DequantizeLinear.
`problems(model)` lists what is wrong (empty = acceptable).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

FORBIDDEN = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearSoftmax",
             "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu",
             "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "MatMulNBits", "QAttention", "QGemm"}
INT8, INT4, INT32 = TensorProto.INT8, TensorProto.INT4, TensorProto.INT32


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attr(node, name, default=None):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def problems(model) -> list[str]:
    from onnx import numpy_helper
    out: list[str] = []
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opset = _opset(model)
    n_dq = 0
    for node in model.graph.node:
        if node.op_type in FORBIDDEN or node.domain not in ("", "ai.onnx"):
            out.append(f"{node.name or node.op_type}: {node.domain + '.' if node.domain else ''}{node.op_type} "
                       "is not explicit Q/DQ (TensorRT parses only QuantizeLinear/DequantizeLinear)")
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_dq += node.op_type == "DequantizeLinear"
        out += _check_zero_point(node, inits, numpy_helper)
        scale = inits.get(node.input[1])
        per_channel = scale is not None and int(np.prod(scale.dims)) > 1
        if per_channel and opset < 13:
            out.append(f"{node.name}: per-channel scales need opset ≥ 13 (model has {opset})")
        if node.op_type == "QuantizeLinear":
            if per_channel:
                out.append(f"{node.name}: activation quantized per-channel; TensorRT wants per-tensor activations")
            if not all(c.op_type == "DequantizeLinear" for c in consumers.get(node.output[0], [])):
                out.append(f"{node.name}: QuantizeLinear not followed by DequantizeLinear (no Q/DQ pair)")
            continue
        out += _check_dq(node, inits, producer, consumers, opset)
    if n_dq == 0:
        out.append("no DequantizeLinear at all: the graph is not quantized")
    return out


def _check_zero_point(node, inits, numpy_helper) -> list[str]:
    if len(node.input) < 3 or not node.input[2]:
        return []
    zp = inits.get(node.input[2])
    if zp is None:
        return [f"{node.name}: zero-point is not a constant"]
    bad = []
    if zp.data_type not in (INT8, INT4):
        bad.append(f"{node.name}: zero-point type {zp.data_type} is unsigned/other; TensorRT needs signed int8/int4")
    if np.any(numpy_helper.to_array(zp).astype(np.int32) != 0):
        bad.append(f"{node.name}: non-zero zero-point (asymmetric); TensorRT needs symmetric quantization")
    return bad


def _check_dq(node, inits, producer, consumers, opset: int) -> list[str]:
    x = node.input[0]
    block = _attr(node, "block_size", 0)
    if x in inits:                                      # a weight
        t = inits[x]
        if t.data_type == INT32:
            return [f"{node.name}: int32 (quantized bias) DequantizeLinear; TensorRT wants float biases"]
        if t.data_type not in (INT8, INT4):
            return [f"{node.name}: weight type {t.data_type} is not int8/int4"]
        bad = []
        if (t.data_type == INT4 or block) and opset < 21:
            bad.append(f"{node.name}: int4 / block-wise DequantizeLinear needs opset ≥ 21 (model has {opset})")
        if t.data_type == INT4:
            uses = consumers.get(node.output[0], [])
            if not block or len(t.dims) != 2 or _attr(node, "axis", 1) != 0:
                bad.append(f"{node.name}: int4 weight must be 2-D with blocks along K (axis 0, block_size)")
            elif t.dims[0] % block:
                bad.append(f"{node.name}: K={t.dims[0]} is not a multiple of block_size {block}")
            if not uses or any(u.op_type != "MatMul" for u in uses):
                bad.append(f"{node.name}: int4 weights must feed MatMul (TensorRT weight-only GEMM)")
        return bad
    src = producer.get(x)
    if src is None or src.op_type != "QuantizeLinear":
        return [f"{node.name}: activation DequantizeLinear without a QuantizeLinear before it"]
    return []
