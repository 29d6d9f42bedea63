"""Where fp32 matrix products run in TF32 whatever --tf32 says. A leaf module: the placement
(runtime/devices.py) and the llama.cpp engine (runtime/backends/llamacpp_llm.py) both state it.
"""
from __future__ import annotations

# llama.cpp's CUDA backend (ggml-cuda, vendored by llama-cpp-python 0.3.x) computes F32 matrix
# products in TF32 from compute capability 8.0 on (Ampere, Jetson Orin, Ada, Hopper): it creates
# every cuBLAS handle with CUBLAS_TF32_TENSOR_OP_MATH (common.cuh), products of 4–16 rows use its
# tf32 mma kernels (mmf.cu), and only 1–3-row products stay fp32 (mmvf.cu). ggml has no switch
# for it, so an fp32 GGUF LLM on such a GPU is not fp32 (docs/gpu.md).
LLAMA_CUDA_TF32 = ("llama.cpp's CUDA backend computes F32 matrix products in TF32 on compute capability 8.0 "
                   "and newer, and has no switch to turn that off")


def llama_cpp_tf32(device: str, capability: tuple[int, int] | None) -> str | None:
    """Why a llama.cpp LLM on `device` runs its F32 matrix products in TF32 whatever --tf32
    says (None: it does not); capability: the GPU's compute capability (None: unknown)."""
    if device == "cuda" and capability is not None and tuple(capability) >= (8, 0):
        return f"{LLAMA_CUDA_TF32} (this GPU: {capability[0]}.{capability[1]})"
    return None
