"""fp16 conversion of an exported graph: fp16 weights and matmuls, fp32 graph I/O.

Reductions whose range or precision fp16 cannot hold stay fp32: softmax, the norms'
mean-of-squares (RMSNorm / LayerNorm pieces), exp/pow. The runtime feeds and reads fp32.
"""
from __future__ import annotations

FP32_OPS = ["Softmax", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Exp", "Erf", "Tanh",
            "LayerNormalization", "SimplifiedLayerNormalization", "Range", "CumSum"]


def to_fp16(model):
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    return convert_float_to_float16(model, keep_io_types=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP32_OPS)
