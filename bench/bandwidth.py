"""This machine's memory bandwidth, measured in the benchmark run itself, two ways.

copy: a large float64 array copy (much larger than the caches), split over `threads` threads
(numpy releases the GIL while copying), best of several repeats; bytes moved count the read
and the write, as STREAM's "copy" does.
read: the same array only read (a bitwise-or reduction of its int64 view, exact and far
cheaper than the memory traffic), split over the same threads; bytes = the array once.

Decode of an LLM at batch 1 reads every weight once per token, so `bandwidth / weight bytes
per token` bounds decode tokens/s. The copy figure is the conservative bound the benchmarks
have always reported; decode only reads its weights, so the read figure (higher on most
machines: no write-allocate traffic) is the tighter bound, reported beside it.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MODES = ("copy", "read")


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5, threads: int = 1, mode: str = "copy") -> dict:
    """→ {bytes_per_s (best), samples_bytes_per_s, array_bytes, threads, repeats, mode}."""
    if nbytes < (1 << 20) or repeats < 1 or threads < 1:
        raise ValueError("bandwidth probe needs >= 1 MiB, >= 1 repeat and >= 1 thread")
    if mode not in MODES:
        raise ValueError(f"bandwidth probe mode {mode!r}: one of {', '.join(MODES)}")
    n = nbytes // 8
    src = np.ones(n, np.float64)      # both written first: every page is mapped before timing
    dst = np.full(n, 2.0) if mode == "copy" else None
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    words = src.view(np.int64)

    def copy(s: slice) -> None:
        assert dst is not None              # copy mode
        np.copyto(dst[s], src[s])

    def read(s: slice) -> int:
        return int(np.bitwise_or.reduce(words[s]))

    samples, ors = [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            done = list(pool.map(copy if mode == "copy" else read, parts))
            dt = time.perf_counter() - t0
            samples.append((2 if mode == "copy" else 1) * n * 8 / dt)
            ors += done
    if dst is not None and not np.array_equal(dst[:: max(n // 1024, 1)], src[:: max(n // 1024, 1)]):
        raise RuntimeError("bandwidth probe copy is incomplete")
    if mode == "read" and any(v != int(words[0]) for v in ors):
        raise RuntimeError("bandwidth probe read did not see the whole array")
    return {"bytes_per_s": max(samples), "samples_bytes_per_s": samples, "array_bytes": n * 8,
            "threads": threads, "repeats": repeats, "mode": mode}
