"""Layout names: bundle file names and manifest keys that the exporter, the quantizer and the
runtime share. A leaf module (it imports nothing of fusion-edge), so that a module which
only needs a name does not import the module that builds or reads the files.
"""
from __future__ import annotations

# The merged decode graph (export/decode_graph.py): one session run per generated token.
DECODE = "decode"
# Beside a GroupQueryAttention decode graph, the same chain with the Concat attention: for the
# CUDA EP, whose GroupQueryAttention has float16/bfloat16 kernels only. Same weights (the shared
# file), its own structure (~0.8 MB on the bench preset); no session opens it on the CPU.
DECODE_CONCAT = "decode_concat"
DECODE_GRAPHS = (DECODE, DECODE_CONCAT)
# The one external-data file holding every LLM weight, shared by the segments and the decode graphs.
SHARED_DATA = "llm.onnx.data"

# Component flag written by the quantizer for graphs whose Q/DQ must run exactly on CPU
# (runtime/backends/ort_session.py make_session's exact_qdq).
EXACT_QDQ_KEY = "exact_qdq_on_cpu"

# The decode graph's GroupQueryAttention interface (export/decode_attention.py), fed by the runtime:
SEQLENS = "seqlens_k"                    # (1,) int32: tokens already in the cache
TOTAL = "total_sequence_length"          # () int32: SEQLENS + 1
COS, SIN = "cos_cache", "sin_cache"      # (R, hd/2) rotary tables, row = position (R ≥ C)
OP = "GroupQueryAttention"
KV_LAYOUT = "BNSH"                       # cache (1, kv, C, hd) per layer


def present_name(past: str) -> str:
    """past_k_3 → present_k_3."""
    return "present_" + past[len("past_"):]
