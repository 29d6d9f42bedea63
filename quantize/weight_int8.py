"""INT8 weight-only quantization of chosen MatMuls (the lm_head), after the main quantizer.

The lm_head is the one projection kept at int8 weight-only in both int8 and int4 bundles:
its input activations (the final-normed hidden state) do not fit a per-tensor int8 scale
(tiny checkpoint, 4 cases × 16 steps: W8A8 there gave 80 % teacher-forced top-1 agreement
instead of 100 %, segment_10 relative error 6.5 % instead of 0.9 %), and at 4 bits its
error lands straight on the logits. Weight-only int8 keeps it a
quarter of fp32 and within ~0.7 % relative error.
* onnxruntime flavours: `MatMulNBits` with bits=8 (blocks along K; accuracy_level 4 =
  int8 compute on CPU).
* TensorRT flavour: int8 per-output-channel symmetric initializer → `DequantizeLinear`
  (axis 1) → `MatMul`, a weight-only Q/DQ pattern (opset ≥ 13).
"""
from __future__ import annotations

import numpy as np

from . import graph_io


def lm_head_nodes(model, vocab_size: int) -> list[str]:
    """Constant-weight MatMuls whose output width is the vocabulary (the lm_head)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and len(inits[n.input[1]]) == 2 and inits[n.input[1]][1] == vocab_size]


def weight_only_int8(model, nodes: list[str], flavour: str, block_size: int = 32, accuracy_level: int | None = 4):
    """`model` with the constant weights of `nodes` stored as int8 → the new model."""
    if not nodes:
        return model
    if flavour == "trt":
        return _dq_per_channel(model, set(nodes))
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    inits = {t.name for t in model.graph.initializer}
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
              and n.name not in nodes]
    with graph_io.quiet_ort_logging():
        q = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level, nodes_to_exclude=others,
                                 quant_format=QuantFormat.QOperator)
        q.process()
    return q.model.model


def _dq_per_channel(model, nodes: set[str]):
    from onnx import helper, numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes = []
    for node in model.graph.node:
        if node.name in nodes:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)      # (K, N)
            absmax = np.abs(w).max(axis=0)
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)   # (N,)
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            base = node.input[1]
            model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                            numpy_helper.from_array(scale, base + "_scale"),
                                            numpy_helper.from_array(np.zeros_like(scale, np.int8), base + "_zp")])
            new_nodes.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zp"],
                                              [base + "_dq"], name=node.name + "_DQ_int8", axis=1))
            node.input[1] = base + "_dq"
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model
