"""Which int8 GEMM path onnxruntime's CPU EP takes on this machine, and the session option that
keeps int8 products exact where the fast path is not.

int8 graphs store signed weights (U8S8: uint8 activations × int8 weights), the only form that
reaches onnxruntime's VNNI / AMX kernels on x86 (one 640×3072·3072×8192 product, 1 thread,
onnxruntime 1.32.0: U8S8 54 ms, U8U8 389 ms, fp32 454 ms; ../shared/perf/matmul_kernels.py).
x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) multiply U8S8 with `vpmaddubsw`,
which adds pairs of u8×s8 products into int16 with saturation: the result then depends on the
CPU. `session.x64quantprecision=1` makes onnxruntime convert such products to U8U8 (exact
int32 sums); it does so on every x86 CPU, VNNI or not (measured: 47 → 300 ms on the product
above), so it is set only where VNNI is missing. ARM (Jetson's Cortex-A78AE, Apple) computes
int8 products with sdot / i8mm or widening multiplies into int32, with no saturation: no option.

FUSION_EDGE_INT8_PATH=vnni|precise overrides the detection (tests force the non-VNNI path on a
VNNI machine with it; a user can force the exact path on a CPU the detection misreads).
"""
from __future__ import annotations

import functools
import os
import platform

PRECISE_KEY = "session.x64quantprecision"
ENV = "FUSION_EDGE_INT8_PATH"
# /proc/cpuinfo flags of an x86 CPU whose int8 dot products accumulate in int32 without saturation
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
PATHS = {
    "vnni": "U8S8 on the VNNI/AMX kernels (exact int32 sums)",
    "precise": f"U8S8 converted to U8U8 by {PRECISE_KEY}=1 (exact int32 sums; x86 without VNNI)",
    "arm": "U8S8 on the ARM int8 kernels (sdot/i8mm or widening multiplies, exact int32 sums)",
    "other": "U8S8 on onnxruntime's portable int8 kernels",
}


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64") or platform.machine().lower().startswith("arm")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), else None (unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU reports VNNI or AMX-INT8; unknown flags count as missing (the exact path)."""
    flags = _cpu_flags() if flags is None else flags
    return any(f in flags for f in VNNI_FLAGS) if flags else False


def int8_path() -> str:
    """vnni | precise | arm | other: how this machine's CPU EP computes U8S8 products."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in ("vnni", "precise"):
            from .errors import OptionError
            raise OptionError(f"{ENV}={forced!r} is not an int8 path.",
                              f"set {ENV} to vnni or precise, or unset it (detected from the CPU)")
        return forced
    if _x86():
        return "vnni" if has_vnni() else "precise"
    return "arm" if _arm() else "other"


def int8_session_config() -> dict[str, str]:
    """Session config entries for a CPU session that runs int8 (Q/DQ or MatMulInteger) products."""
    return {PRECISE_KEY: "1"} if int8_path() == "precise" else {}


def describe() -> dict[str, str]:
    """For the figures a gate records: which int8 path they were measured on."""
    path = int8_path()
    return {"int8_path": path, "int8_path_detail": PATHS[path]}
