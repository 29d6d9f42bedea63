"""This machine's memory bandwidth, measured in the benchmark run itself.

A large float64 array copy (much larger than the caches), split over `threads` threads
(numpy releases the GIL while copying), best of several repeats. Bytes moved count the
read and the write, as STREAM's "copy" does. Decode of an LLM at batch 1 reads every
weight once per token, so `bandwidth / weight bytes per token` bounds decode tokens/s.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5, threads: int = 1) -> dict:
    """→ {bytes_per_s (best), samples_bytes_per_s, array_bytes, threads, repeats}."""
    if nbytes < (1 << 20) or repeats < 1 or threads < 1:
        raise ValueError("bandwidth probe needs >= 1 MiB, >= 1 repeat and >= 1 thread")
    n = nbytes // 8
    src = np.ones(n, np.float64)      # both written first: every page is mapped before timing
    dst = np.full(n, 2.0)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    samples = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts))
            samples.append(2 * n * 8 / (time.perf_counter() - t0))   # read + write
    if not np.array_equal(dst[:: max(n // 1024, 1)], src[:: max(n // 1024, 1)]):
        raise RuntimeError("bandwidth probe copy is incomplete")
    return {"bytes_per_s": max(samples), "samples_bytes_per_s": samples, "array_bytes": n * 8,
            "threads": threads, "repeats": repeats}
