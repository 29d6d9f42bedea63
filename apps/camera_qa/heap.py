"""The C heap of a long-running app process (glibc malloc): bounded arenas, a fixed mmap
threshold, and free memory handed back after each answer.

Why (docs/camera.md, soak test): with onnxruntime's own arena off (runtime/backends/
ort_session.py), every intermediate tensor is a malloc/free, made on whichever thread runs
it (the inference worker, onnxruntime's pool threads, the capture thread decoding frames,
the web server's threads). glibc gives each such thread its own arena (up to 8 × cores)
and raises its mmap threshold each time a large block is freed, so later blocks of that
size come from the arenas instead of mmap; freed blocks then stay in the arenas' heaps,
fragmented, and the process's RSS climbs in steps while the live Python and C objects stay
the same. Here: two arenas, mmap for every block ≥ 256 KiB (the threshold fixed, so it no
longer moves), and `malloc_trim(0)` after each answer returns the free pages of every
arena to the kernel. Not glibc (musl, macOS, Windows): nothing is changed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("fusion_edge.camera")

M_MMAP_THRESHOLD = -3        # glibc <malloc.h> mallopt parameters
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024  # bytes; glibc's dynamic threshold starts at 128 KiB and climbs to 32 MiB

_libc = None


def _glibc():
    """The C library when it is glibc (has mallopt and malloc_trim), else None."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def configure(arena_max: int = ARENA_MAX, mmap_threshold: int | None = MMAP_THRESHOLD) -> bool:
    """Set the allocator up for a long run; call before the model and the threads start
    (arenas made earlier stay). mmap_threshold None keeps glibc's dynamic threshold (the ROS 2
    node: a fixed one made its answers twice as slow). → whether glibc took the settings."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_ARENA_MAX, arena_max)) and (
        mmap_threshold is None or bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)))
    if not ok:
        log.warning("glibc refused the malloc settings; RSS may grow over a long run")
    return ok


def trim() -> None:
    """Hand the free pages of every malloc arena back to the kernel (glibc only)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
