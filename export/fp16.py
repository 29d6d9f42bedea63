"""fp16 conversion of an exported graph: fp16 weights and matmuls, fp32 graph I/O.

Reductions whose range or precision fp16 cannot hold stay fp32: softmax, the norms'
mean-of-squares (RMSNorm / LayerNorm pieces), exp/pow. The runtime feeds and reads fp32.
"""
from __future__ import annotations

FP32_OPS = ["Softmax", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Exp", "Erf", "Tanh",
            "LayerNormalization", "SimplifiedLayerNormalization", "Range", "CumSum"]


def to_fp16(model):
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    model = convert_float_to_float16(model, keep_io_types=True,
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP32_OPS)
    _drop_duplicate_nodes(model.graph)
    return model


def _drop_duplicate_nodes(graph) -> None:
    """The converter inserts the same Cast twice when one fp16 tensor feeds two fp32-kept
    consumers (same name, input and output); onnxruntime rejects the duplicate
    definition. Identical nodes compute the same value, so keep the first."""
    seen, keep = set(), []
    for node in graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
