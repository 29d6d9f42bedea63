"""Layout names: bundle file names and manifest keys that the exporter, the quantizer and the
runtime share. A leaf module (it imports nothing of fusion-edge), so that a module which
only needs a name does not import the module that builds or reads the files.
"""
from __future__ import annotations

# The merged decode graph (runtime/decode_graph.py): one session run per generated token.
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
