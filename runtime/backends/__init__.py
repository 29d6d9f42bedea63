"""Inference backends, registered by name: the manifest's `llm_backend` (and each
component's `backend`) picks the engine class from BACKENDS. The engine contract is in
engines.py. Heavy packages (onnxruntime, llama_cpp) import lazily, in the engine modules.

vision + alignment: ONNX graphs on onnxruntime (onnx and gguf targets); LLM: ONNX segments
on onnxruntime, or a GGUF model in llama.cpp. A new backend is one entry here plus its module.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BundleError
from ..devices import Capabilities, Placement, probe, requests, resolve_devices
from .engines import GraphAccess, GreedyDecode, LLMEngine, OwnPlacement, VisionEngine

__all__ = ["BACKENDS", "Backend", "GraphAccess", "GreedyDecode", "LLMEngine", "OwnPlacement", "VisionEngine",
           "open_backends"]


@dataclass(frozen=True)
class Backend:
    llm: Callable[[], type] | None      # → the LLM engine class (imported on first use)
    vision: Callable[[], type] | None   # → the vision engine class (None: vision runs elsewhere)
    align_threads: int | None = None    # intra-op threads of the alignment graphs; 1 where they run
    #                                     inside the LLM engine's own threads (llama.cpp's eval callback)


def _onnx_llm() -> type:
    from .onnx_llm import OnnxLLM
    return OnnxLLM


def _onnx_vision() -> type:
    from .onnx_vision import OnnxVision
    return OnnxVision


def _llamacpp_llm() -> type:
    from .llamacpp_llm import LlamaCppLLM
    return LlamaCppLLM


# name → engines; engine constructors take (bundle, device, threads, *, providers, low_memory[, align_threads])
BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend(llm=_onnx_llm, vision=_onnx_vision),
    "llama.cpp": Backend(llm=_llamacpp_llm, vision=None, align_threads=1),
}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BundleError(f"bundle backend '{name}' is not supported by this fusion-edge.",
                          f"supported: {', '.join(BACKENDS)}; re-export the bundle") from None


def open_backends(bundle, device: str = "auto", threads: int | None = None, *, vision_device: str | None = None,
                  align_device: str | None = None, llm_device: str | None = None, tf32: bool = False,
                  no_build: bool = False, capabilities: Capabilities | None = None,
                  low_memory: bool = False) -> tuple[VisionEngine, LLMEngine, Placement]:
    """→ (vision engine, llm engine, the placement actually used). capabilities: what is
    installed (default: probed); no_build: refuse to build a trt bundle's pending engines;
    low_memory: weights stay memory-mapped from the bundle, no per-session copies
    (ort_session.make_session). Engine-building progress: log records of runtime/trt
    (fusion_edge/logs.py)."""
    from .ort_session import provider_chain
    llm_backend = backend(bundle.manifest.llm_backend)
    vision_backend = backend(bundle.component("vision").backend)
    if llm_backend.llm is None or vision_backend.vision is None:
        raise BundleError(f"bundle {bundle.path} names backends that cannot run its LLM / vision parts.",
                          "re-export the bundle")
    names = {"vision": bundle.component("vision").backend, "align": bundle.component("vision").backend,
             "llm": bundle.manifest.llm_backend}
    req = requests(device, vision_device, align_device, llm_device)
    caps = capabilities or probe(names)
    devices = resolve_devices(req, names, caps, prefer_trt=bundle.target == "trt")
    trt_provider = caps.trt.provider if caps.trt is not None else None
    chains = {c: provider_chain(devices[c], tf32, trt_provider) for c in names if names[c] == "onnxruntime"}
    notice = _prepare_trt(bundle, devices, caps, chains, no_build)
    vision = vision_backend.vision()(bundle, devices["vision"], threads, providers=chains["vision"],
                                     align_threads=llm_backend.align_threads, align_providers=chains["align"],
                                     low_memory=low_memory)
    llm = llm_backend.llm()(bundle, devices["llm"], threads, providers=chains.get("llm"), low_memory=low_memory)
    forced = {}
    if isinstance(llm, OwnPlacement):             # llama.cpp says what it offloaded
        devices["llm"] = llm.device
        forced = {"llm": llm.forced_tf32} if llm.forced_tf32 else {}
    return vision, llm, Placement(devices, tf32, chains, notice, forced)


def _prepare_trt(bundle, devices: dict, caps: Capabilities, chains: dict, no_build: bool) -> str | None:
    """Engines checked or built before a TensorRT session opens → the placement's notice."""
    from ..trt.opening import ready_engines, unavailable_notice
    if "tensorrt" not in devices.values():
        return unavailable_notice(bundle, devices, caps.trt is not None)
    chain = next(chains[c] for c in chains if devices[c] == "tensorrt")
    # caps.trt is set wherever resolve_devices placed a part on "tensorrt"
    notes = ready_engines(bundle, caps.trt, chain, no_build)  # type: ignore[arg-type]
    return "; ".join(notes) or None
