"""The node process's C heap (glibc malloc): two arenas, set before any thread starts, through
the camera app's allocator settings (apps/camera_qa/heap.py) without its fixed mmap threshold.

Why (bench/soak_ros2.py): glibc gives each thread that allocates its own arena (up to 8 x
cores): here the executor threads decoding ~1 MB frames, the inference worker, onnxruntime's
and Fast DDS's threads. Freed blocks stay in those arenas as holes, and the node's RSS rose
and fell by 10–30 MB between readings, +5.8 % over a 1000-pair soak; with two arenas +2.6 %
and +4.4 % in two runs. The fixed 256 KiB mmap threshold is left out: it made every answer
about twice as slow here (every large tensor a fresh mmap and page faults). Not glibc (musl,
macOS, Windows): nothing is changed.
"""
from __future__ import annotations

from fusion_edge.apps.camera_qa.heap import ARENA_MAX, configure


def bound_arenas(arena_max: int = ARENA_MAX) -> bool:
    """→ whether glibc took the setting (False elsewhere). Arenas made before it stay."""
    return configure(arena_max, mmap_threshold=None)
