"""Per-component device placement: vision, align and llm each get "cpu", "cuda" or "tensorrt".

`resolve_devices` is a pure function of the request and of what is installed
(`Capabilities`): onnxruntime's execution providers for ONNX components, llama.cpp's GPU
offload for a GGUF LLM, a TensorRT platform (runtime/trt) for ONNX parts. `auto` takes the
fastest device a component can use (TensorRT only for trt bundles, whose engines and profiles
are made for it); `cuda` / `tensorrt` on a component that cannot run there is a DeviceError
naming that component and the fix.
`probe` fills Capabilities from the installed packages (imports lazily).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import cpu_features
from .errors import DeviceError, TensorRTError
from .tf32 import LLAMA_CUDA_TF32 as LLAMA_CUDA_TF32  # re-exported: the TF32 rule lives in tf32.py
from .tf32 import llama_cpp_tf32 as llama_cpp_tf32
from .trt.ep import probe_platform
from .trt.stamp import Platform

COMPONENTS = ("vision", "align", "llm")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CUDA_EP = "CUDAExecutionProvider"
TRT_FIX = ("install onnxruntime-gpu built with TensorRT (Jetson: JetPack's TensorRT + the Jetson AI Lab wheel; "
           "RTX laptops: pip install onnxruntime-ep-nv-tensorrt-rtx), see docs/tensorrt.md")


@dataclass(frozen=True)
class Capabilities:
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    llama_gpu: bool = False              # llama_supports_gpu_offload() of the installed llama-cpp-python
    trt: Platform | None = None          # where a TensorRT EP and a GPU are usable

    def has_cuda(self, backend: str) -> bool:
        if backend == "onnxruntime":
            return CUDA_EP in self.ort_providers
        if backend == "llama.cpp":
            return self.llama_gpu
        return False

    def has_trt(self, backend: str) -> bool:
        return backend == "onnxruntime" and self.trt is not None


_FIX = {
    "onnxruntime": "install onnxruntime-gpu on a CUDA machine (pip install 'fusion-edge[trt]')",
    "llama.cpp": "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_CUDA=on\"",
}


def requests(device: str = "auto", vision: str | None = None, align: str | None = None,
             llm: str | None = None) -> dict[str, str]:
    """The global device with per-component overrides → {component: auto|cpu|cuda}."""
    req = {"vision": vision or device, "align": align or device, "llm": llm or device}
    for comp, dev in req.items():
        if dev not in DEVICES:
            raise DeviceError(f"unknown device '{dev}' for {comp}.", f"use one of {', '.join(DEVICES)}")
    return req


def resolve_devices(req: dict[str, str], backends: dict[str, str], caps: Capabilities,
                    prefer_trt: bool = False) -> dict[str, str]:
    """req {component: auto|cpu|cuda|tensorrt}, backends {component: onnxruntime|llama.cpp} →
    {component: cpu|cuda|tensorrt}. prefer_trt: `auto` takes TensorRT where it can (trt bundles)."""
    out = {}
    for comp in COMPONENTS:
        want, backend = req[comp], backends[comp]
        if want == "tensorrt" or (want == "auto" and prefer_trt and caps.has_trt(backend)):
            out[comp] = _tensorrt(comp, backend, caps)
            continue
        can = caps.has_cuda(backend)
        if want == "cuda" and not can:
            have = (f"this onnxruntime has no CUDA execution provider (available: {', '.join(caps.ort_providers)})"
                    if backend == "onnxruntime" else "this llama-cpp-python was built without GPU offload")
            raise DeviceError(f"the {comp} part ({backend}) cannot run on 'cuda': {have}.",
                              f"{_FIX.get(backend, 'use a backend with CUDA')}, or pass --{comp}-device cpu "
                              "(or --device auto) to keep it on the CPU")
        out[comp] = "cuda" if (want == "cuda" or (want == "auto" and can)) else "cpu"
    return out


def _tensorrt(comp: str, backend: str, caps: Capabilities) -> str:
    if not caps.has_trt(backend):
        have = ("TensorRT runs ONNX parts only" if backend != "onnxruntime" else
                "this onnxruntime has no usable TensorRT execution provider "
                f"(available: {', '.join(caps.ort_providers)})")
        raise TensorRTError(f"the {comp} part ({backend}) cannot run on 'tensorrt': {have}.",
                            f"{TRT_FIX}; or pass --device auto to run on CUDA or the CPU")
    return "tensorrt"


def probe(backends: dict[str, str]) -> Capabilities:
    """What the installed packages offer, importing only the backends the bundle uses."""
    # The engine modules are imported here, not at the top: they live in backends/, whose
    # __init__ imports this module, so a top-level import would be circular at import time.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    llama_gpu, trt = False, None
    if "onnxruntime" in backends.values():
        from .backends.ort_session import import_ort
        ort = import_ort()
        providers, trt = tuple(ort.get_available_providers()), probe_platform(ort)
    if "llama.cpp" in backends.values():
        from .backends.llamacpp_llm import import_llama_cpp
        llama_gpu = bool(import_llama_cpp().llama_supports_gpu_offload())
    return Capabilities(providers, llama_gpu, trt)


@dataclass
class Placement:
    """What a Pipeline runs with: the device map, TF32 mode, and per-component provider chains."""
    devices: dict[str, str]
    tf32: bool = False           # the CUDA EP's TF32 opt-in (--tf32)
    providers: dict[str, list] = field(default_factory=dict)   # component → onnxruntime providers (name, options)
    notice: str | None = None    # why the parts run elsewhere than the bundle is made for (trt without TensorRT)
    forced_tf32: dict[str, str] = field(default_factory=dict)  # component → why it computes in TF32 regardless

    @property
    def tf32_parts(self) -> list[str]:
        """The parts whose fp32 matrix products ran in TF32 (opt-in on a CUDA EP, or forced)."""
        opt_in = [c for c, d in self.devices.items() if self.tf32 and d == "cuda" and c in self.providers]
        return [c for c in ("vision", "align", "llm") if c in opt_in or c in self.forced_tf32]

    def describe(self) -> dict:
        """JSON-ready: for stats, verification figures and status reports."""
        return {"devices": dict(self.devices), "tf32": self.tf32, "notice": self.notice,
                "forced_tf32": dict(self.forced_tf32), "tf32_parts": self.tf32_parts,
                **cpu_features.describe(),      # how the CPU EP computes int8 products here
                "providers": {c: [p if isinstance(p, str) else {"name": p[0], "options": p[1]} for p in chain]
                              for c, chain in self.providers.items()}}

    @property
    def summary(self) -> str:
        """One word: the common device, or "mixed"."""
        values = set(self.devices.values())
        return values.pop() if len(values) == 1 else "mixed"
