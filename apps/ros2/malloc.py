"""The node process's C heap (glibc malloc): two arenas, set before any thread starts.

Why (docs/ros2.md, Soak): glibc gives each thread that allocates its own arena (up to 8 x
cores): here the executor threads decoding ~1 MB frames, the inference worker, onnxruntime's
and Fast DDS's threads. Freed blocks stay in those arenas as holes, and the node's RSS rose
and fell by 10–30 MB between readings, +5.8 % over the 1000-pair soak. With two arenas, and
the worker's malloc_trim after each answer (apps/camera_qa/heap.py, shared with the camera
app), it stays within a few MB. The camera app's other setting, a fixed 256 KiB mmap
threshold, is left out: it made every answer about twice as slow here (every large tensor a
fresh mmap and page faults). Not glibc (musl, macOS, Windows): nothing is changed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from fusion_edge.apps.camera_qa.heap import ARENA_MAX, M_ARENA_MAX


def bound_arenas(arena_max: int = ARENA_MAX) -> bool:
    """→ whether glibc took the setting (False elsewhere). Arenas made before it stay."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return hasattr(libc, "mallopt") and bool(libc.mallopt(M_ARENA_MAX, arena_max))
