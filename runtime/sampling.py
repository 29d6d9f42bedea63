"""Next-token choice from a logits vector (numpy): greedy, or temperature / top-k / top-p.

Shared by every backend and the reference so that the same seed gives the same tokens.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import OptionError

SEED_MAX = 2 ** 64 - 1      # numpy's generators take a non-negative seed


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None):
        checks = (("temperature", temperature, math.isfinite(temperature) and temperature >= 0),
                  ("top_p", top_p, 0 < top_p <= 1), ("top_k", top_k, top_k >= 0))
        bad = [f"{name} {value}" for name, value, ok in checks if not ok or value != value]   # != itself: NaN
        if bad:
            raise OptionError(f"sampling option out of range: {', '.join(bad)}.",
                              "use a finite temperature >= 0 (0 = greedy), top_p in (0, 1], top_k >= 0 (0 = off; "
                              "a top_k at or above the vocabulary keeps every token)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed <= SEED_MAX):
            raise OptionError(f"seed {seed!r} is out of range.", f"use a whole number from 0 to {SEED_MAX}, or no seed")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.temperature == 0:
            return int(np.argmax(logits))
        z = logits / self.temperature
        if self.top_k:
            kth = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < self.top_p   # smallest set reaching top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return int(self.rng.choice(len(p), p=p))
