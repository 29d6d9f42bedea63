"""Inference backends, chosen from the bundle's manifest (`components.*.backend`).

vision + alignment: ONNX graphs on onnxruntime (onnx and gguf targets); LLM: ONNX
segments on onnxruntime, or a GGUF model in llama.cpp. Heavy packages import lazily.
"""
from __future__ import annotations

from ..errors import BundleError


def open_backends(bundle, device: str = "auto", threads: int | None = None):
    """→ (vision engine, llm engine, device actually used)."""
    from .ort_session import providers_for
    providers = providers_for(device)
    from .onnx_vision import OnnxVision
    llm_backend = bundle.manifest.get("llm_backend", "onnxruntime")
    # the alignment runs inside llama.cpp's eval callback there: single-threaded math
    vision = OnnxVision(bundle, providers, threads, align_threads=1 if llm_backend == "llama.cpp" else None)
    if llm_backend == "onnxruntime":
        from .onnx_llm import OnnxLLM
        llm = OnnxLLM(bundle, providers, threads)
    elif llm_backend == "llama.cpp":
        from .llamacpp_llm import LlamaCppLLM
        llm = LlamaCppLLM(bundle, device, threads)
    else:
        raise BundleError(f"bundle LLM backend '{llm_backend}' is not supported by this fusion-edge.",
                          "supported: onnxruntime, llama.cpp; re-export the bundle")
    used = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    return vision, llm, used
