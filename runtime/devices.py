"""Per-component device placement: vision, align and llm each get "cpu" or "cuda".

`resolve_devices` is a pure function of the request and of what is installed
(`Capabilities`): onnxruntime's execution providers for ONNX components, llama.cpp's GPU
offload for a GGUF LLM. `auto` takes the fastest device a component can use; `cuda` on a
component that cannot run there is a DeviceError naming that component and the fix.
`probe` fills Capabilities from the installed packages (imports lazily).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DeviceError

COMPONENTS = ("vision", "align", "llm")
DEVICES = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Capabilities:
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    llama_gpu: bool = False              # llama_supports_gpu_offload() of the installed llama-cpp-python

    def has_cuda(self, backend: str) -> bool:
        if backend == "onnxruntime":
            return CUDA_EP in self.ort_providers
        if backend == "llama.cpp":
            return self.llama_gpu
        return False


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


def resolve_devices(req: dict[str, str], backends: dict[str, str], caps: Capabilities) -> dict[str, str]:
    """req {component: auto|cpu|cuda}, backends {component: onnxruntime|llama.cpp} → {component: cpu|cuda}."""
    out = {}
    for comp in COMPONENTS:
        want, backend = req[comp], backends[comp]
        can = caps.has_cuda(backend)
        if want == "cuda" and not can:
            have = (f"this onnxruntime has no CUDA execution provider (available: {', '.join(caps.ort_providers)})"
                    if backend == "onnxruntime" else "this llama-cpp-python was built without GPU offload")
            raise DeviceError(f"the {comp} part ({backend}) cannot run on 'cuda': {have}.",
                              f"{_FIX.get(backend, 'use a backend with CUDA')}, or pass --{comp}-device cpu "
                              "(or --device auto) to keep it on the CPU")
        out[comp] = "cuda" if (want == "cuda" or (want == "auto" and can)) else "cpu"
    return out


def probe(backends: dict[str, str]) -> Capabilities:
    """What the installed packages offer, importing only the backends the bundle uses."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    llama_gpu = False
    if "onnxruntime" in backends.values():
        from .backends.ort_session import import_ort
        providers = tuple(import_ort().get_available_providers())
    if "llama.cpp" in backends.values():
        from .backends.llamacpp_llm import import_llama_cpp
        llama_gpu = bool(import_llama_cpp().llama_supports_gpu_offload())
    return Capabilities(providers, llama_gpu)


@dataclass
class Placement:
    """What a Pipeline runs with: the device map, TF32 mode, and per-component provider chains."""
    devices: dict[str, str]
    tf32: bool = False
    providers: dict[str, list] = field(default_factory=dict)   # component → onnxruntime providers (name, options)

    def describe(self) -> dict:
        """JSON-ready: for stats, verification figures and status reports."""
        return {"devices": dict(self.devices), "tf32": self.tf32,
                "providers": {c: [p if isinstance(p, str) else {"name": p[0], "options": p[1]} for p in chain]
                              for c, chain in self.providers.items()}}

    @property
    def summary(self) -> str:
        """One word: the common device, or "mixed"."""
        values = set(self.devices.values())
        return values.pop() if len(values) == 1 else "mixed"
