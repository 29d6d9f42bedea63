"""Opening a trt bundle: engines checked (or built) before any session, or the notice that
TensorRT is absent and the same graphs run on CUDA or the CPU."""
from __future__ import annotations

import logging

from ..bundle import Bundle, sha256_file
from ..errors import EnginesPendingError
from . import stamp
from .stamp import Platform

log = logging.getLogger(__name__)


def unavailable_notice(bundle: Bundle, devices: dict[str, str], trt_usable: bool) -> str | None:
    """For a trt bundle run without TensorRT: one line saying where it runs instead (None when
    TensorRT runs it, or is usable here and another device was asked for)."""
    if bundle.target != "trt" or "tensorrt" in devices.values() or trt_usable:
        return None
    where = "/".join(sorted(set(devices.values())))
    return (f"TensorRT is not available here: the trt bundle's ONNX graphs run on {where} with onnxruntime "
            f"(engines {stamp.state(bundle.manifest.get(stamp.ENGINES_KEY))}); see docs/tensorrt.md")


def ready_engines(bundle: Bundle, platform: Platform, chain: list, no_build: bool) -> list[str]:
    """Before TensorRT sessions open: refuse engines of another platform (EngineMismatchError),
    build pending ones with a notice (EnginesPendingError under no_build) → notices."""
    if bundle.target != "trt":
        return []
    engines = bundle.manifest.get(stamp.ENGINES_KEY)
    notes = stamp.check_stamp(engines, platform, bundle.path, sha256_file)
    if stamp.state(engines) == "built":
        return notes
    if no_build:
        raise EnginesPendingError(f"the TensorRT engines of {bundle.path} are {stamp.state(engines)} and "
                                  "--no-build refuses to build them now.",
                                  f"fusion-edge build-engines {bundle.path}  (or open it without --no-build)")
    from .build import build_engines
    log.warning(f"notice: building the TensorRT engines of {bundle.path.name} for {platform.gpu_name} "
                f"(TensorRT {platform.tensorrt_version}); this happens once")
    engines = build_engines(bundle.path, platform, chain)
    bundle.manifest = bundle.manifest.updated(**{stamp.ENGINES_KEY: engines})
    return notes
