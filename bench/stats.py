"""Summaries of repeated measurements: min / median / max over the samples kept."""
from __future__ import annotations

import statistics


def summarize(samples: list[float]) -> dict | None:
    """{min, median, max, n, samples}, or None when nothing was measured."""
    vals = [float(v) for v in samples]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals),
            "samples": vals}
