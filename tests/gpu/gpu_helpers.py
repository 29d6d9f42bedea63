"""Skip conditions, helpers and fixtures of the GPU suite (tests/gpu, marker `gpu`; no conftest.py
here: tests import `conftest` by name, so a second one would shadow tests/conftest.py). Each test
skips with the reason where onnxruntime has no working CUDA EP or llama.cpp has no GPU offload."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

QUESTION = "What is on the table?"


@functools.cache
def ort_cuda_reason() -> str | None:
    """None where onnxruntime can put a tensor on a CUDA device, else why not."""
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                f"({', '.join(ort.get_available_providers())}): install onnxruntime-gpu on a CUDA machine")
    try:
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32), "cuda", 0)
    except Exception as e:      # the EP is listed but no device / CUDA libraries are usable
        return f"onnxruntime's CUDA EP is installed but cannot allocate on cuda:0 ({type(e).__name__}: {e})"
    return None


@functools.cache
def llama_gpu_reason() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python is not installed (pip install 'fusion-edge[gguf]')"
    if not llama_cpp.llama_supports_gpu_offload():
        return ("this llama-cpp-python was built without GPU offload: "
                "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install llama-cpp-python")
    return None


needs_ort_cuda = pytest.mark.skipif(ort_cuda_reason() is not None, reason=ort_cuda_reason() or "")
needs_llama_gpu = pytest.mark.skipif(llama_gpu_reason() is not None, reason=llama_gpu_reason() or "")


def first_logits_gap(pipe, ref, image) -> tuple[float, list[int], list[int]]:
    """max |Δ first logits| against the reference, and both greedy answers (8 tokens)."""
    want = ref.answer(image, QUESTION, max_new_tokens=8)
    pipe.ask(pipe.look(image), QUESTION, max_new_tokens=8)
    got = pipe.last_result
    return float(np.abs(got.first_logits - want.first_logits).max()), got.token_ids, want.token_ids


@pytest.fixture(scope="session", name="gguf_gpu")
def gguf_gpu_fixture(tiny_checkpoint, work_dir):
    """gguf_gpu(precision) → a phi3/so400m GGUF bundle, exported without verification."""
    from fusion_edge.export.gguf_bundle import export_gguf_bundle
    cache: dict = {}

    def make(precision: str = "fp32") -> Path:
        if precision not in cache:
            cache[precision] = export_gguf_bundle(str(tiny_checkpoint("phi3", "so400m")),
                                                  work_dir / "gpu-gguf" / precision, "gguf", precision,
                                                  verify=False, progress=False)
        return cache[precision]
    return make


@functools.cache
def trt_reason() -> str | None:
    """None where onnxruntime offers a TensorRT EP and a CUDA GPU answers, else why not."""
    import onnxruntime as ort

    from fusion_edge.runtime.cuda_driver import cuda_device
    from fusion_edge.runtime.trt.ep import available_provider, probe_platform
    if available_provider(ort) is None:
        return (f"onnxruntime {ort.__version__} has no TensorRT execution provider "
                f"({', '.join(ort.get_available_providers())}): install onnxruntime-gpu built with TensorRT "
                "(Jetson) or onnxruntime-ep-nv-tensorrt-rtx (RTX), see docs/tensorrt.md")
    if cuda_device() is None:
        return "a TensorRT EP is installed but the CUDA driver finds no GPU (libcuda.so.1)"
    if probe_platform(ort) is None:
        return "a TensorRT EP and a GPU are present but the TensorRT version cannot be read (libnvinfer)"
    return None


needs_trt = pytest.mark.skipif(trt_reason() is not None, reason=trt_reason() or "")
