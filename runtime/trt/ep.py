"""Which TensorRT execution provider this onnxruntime offers, its options per graph, and the
platform (TensorRT version, GPU name, SM) engines are built for.

Two providers, both building TensorRT engines from the bundle's ONNX graphs:
* TensorrtExecutionProvider      onnxruntime-gpu built with TensorRT (Jetson: JetPack 6.x,
                                 TensorRT 10.3, CUDA 12.6; desktops: TensorRT 10.x);
* NvTensorRTRTXExecutionProvider the TensorRT-RTX plugin (pip onnxruntime-ep-nv-tensorrt-rtx,
                                 onnxruntime ≥ 1.24), RTX GPUs from Ampere on; a plugin EP, so
                                 it is registered as a library and appended by device.
Nothing here imports tensorrt: the version comes from package metadata or libnvinfer's
getInferLibVersion, the GPU from the CUDA driver API (libcuda), both through ctypes.
"""
from __future__ import annotations

import ctypes
import functools
from importlib import metadata
from pathlib import Path

from ..cuda_driver import cuda_device
from .profiles import bundle_profiles, ort_shape_strings
from .stamp import ENGINES_DIR, Platform

TRT_EP = "TensorrtExecutionProvider"
RTX_EP = "NvTensorRTRTXExecutionProvider"
RTX_PACKAGE = "onnxruntime_ep_nv_tensorrt_rtx"
TRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs", "tensorrt-cu12-libs")
RTX_DISTS = ("onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxruntime-ep-nv-tensorrt-rtx-cu12",
             "onnxruntime-ep-nv-tensorrt-rtx")
TIMING_CACHE = "timing"


def available_provider(ort) -> str | None:
    """The TensorRT EP this onnxruntime can run, or None."""
    if TRT_EP in ort.get_available_providers():
        return TRT_EP
    return RTX_EP if _rtx_devices(ort) else None


@functools.cache
def _rtx_registered(ort) -> bool:
    try:
        plugin = __import__(RTX_PACKAGE)
        ort.register_execution_provider_library(plugin.get_ep_name(), plugin.get_library_path())
        return True
    except Exception:          # not installed, an onnxruntime without plugin EPs, or no driver
        return False


def _rtx_devices(ort) -> list:
    if not hasattr(ort, "get_ep_devices") or not _rtx_registered(ort):
        return []
    return [d for d in ort.get_ep_devices() if d.ep_name == RTX_EP]


def probe_platform(ort) -> Platform | None:
    """The running TensorRT platform, or None without a usable TensorRT EP or GPU."""
    provider = available_provider(ort)
    if provider is None:
        return None
    gpu = cuda_device()
    version = tensorrt_version() if provider == TRT_EP else _dist_version(RTX_DISTS)
    if gpu is None or version is None:
        return None
    return Platform(("rtx-" + version) if provider == RTX_EP else version, gpu[0], gpu[1], provider)


def _dist_version(dists) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version() -> str | None:
    """TensorRT's version: its Python package, else libnvinfer (JetPack installs only the library)."""
    found = _dist_version(TRT_DISTS)
    if found:
        return found
    for lib in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            v = ctypes.CDLL(lib).getInferLibVersion()     # e.g. 100300 → 10.3.0
        except (OSError, AttributeError):
            continue
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return None


# ---- options --------------------------------------------------------------------------------
def engine_dir(bundle_path: Path, graph: str) -> Path:
    return Path(bundle_path) / ENGINES_DIR / graph


def context_model(bundle_path: Path, graph: str) -> Path:
    """The EP-context model onnxruntime dumps after building (`*_ctx.onnx`, engine beside it)."""
    return engine_dir(bundle_path, graph) / f"{graph}_ctx.onnx"


def provider_options(provider: str, bundle_path: Path, graph: str, profile: dict, precision: str,
                     dump_context: bool = False, device_id: int = 0) -> dict[str, str]:
    """Options of `provider` for one graph: its profile, the engine cache and the EP-context
    dump (when building) under engines/<graph>/, the timing cache shared by every graph (engines/timing/).
    Precision: the graphs carry it (explicit Q/DQ, fp16 weights); fp16 lets TensorRT run the
    float layers around them in fp16, int8 enables the Q/DQ layers (no calibration table)."""
    folder, timing = engine_dir(bundle_path, graph), Path(bundle_path) / ENGINES_DIR / TIMING_CACHE
    shapes = ort_shape_strings(profile)
    if provider == RTX_EP:
        return {"device_id": str(device_id), "nv_runtime_cache_path": str(folder),
                **{k.replace("trt_", "nv_"): v for k, v in shapes.items()}}
    return {"device_id": str(device_id), **shapes,
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(folder),
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(timing),
            **({"trt_dump_ep_context_model": "1", "trt_ep_context_embed_mode": "0",
                "trt_ep_context_file_path": str(context_model(bundle_path, graph))} if dump_context else {}),
            "trt_fp16_enable": "0" if precision == "fp32" else "1",
            "trt_int8_enable": "1" if precision == "int8" else "0"}


def session_config(provider: str, bundle_path: Path, graph: str, dump_context: bool) -> dict[str, str]:
    """Session config entries: the RTX plugin dumps its EP-context model through ep.context_*."""
    if provider != RTX_EP or not dump_context:
        return {}
    return {"ep.context_enable": "1", "ep.context_file_path": str(context_model(bundle_path, graph)),
            "ep.context_embed_mode": "0"}


def append_plugin(ort, opts, options: dict[str, str]) -> None:
    """Append the RTX plugin EP to SessionOptions (a plugin EP is chosen by device, not by name)."""
    opts.add_provider_for_devices(_rtx_devices(ort)[:1], options)


def profile_of(bundle, graph: str) -> dict:
    """The graph's recorded profile (trt bundles), else derived now (another bundle on --device tensorrt)."""
    recorded = bundle.manifest.get("tensorrt", {}).get("profiles", {})
    if graph in recorded:
        return recorded[graph]
    return bundle_profiles(bundle.config, bundle.components, int(bundle.options["image_tokens"]))[graph]


def graph_chain(bundle, comp, providers: list, dump_context: bool = False) -> tuple[list, dict[str, str]]:
    """A part's provider chain → the chain for one graph (TensorRT options of that graph merged
    into the head) and its session config entries; other chains pass through unchanged."""
    head = providers[0]
    name = head if isinstance(head, str) else head[0]
    if name not in (TRT_EP, RTX_EP):
        return providers, {}
    base = {} if isinstance(head, str) else dict(head[1])
    opts = {**base, **provider_options(name, bundle.path, comp.name, profile_of(bundle, comp.name), comp.precision,
                                       dump_context)}
    return [(name, opts), *providers[1:]], session_config(name, bundle.path, comp.name, dump_context)
