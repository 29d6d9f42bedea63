"""bench/serve_bench.py's own arithmetic (the load test itself is a benchmark, never run here)."""
from __future__ import annotations

import pytest

from fusion_edge.bench.serve_bench import format_row, percentile


@pytest.mark.parametrize("n,q,rank", [(20, 0.95, 19), (3, 0.5, 2), (4, 0.5, 2), (16, 0.95, 16), (1, 0.95, 1),
                                      (10, 0.5, 5), (100, 0.95, 95)])
def test_percentile_is_nearest_rank(n, q, rank):
    """The smallest value with at least q of the values at or below it: rank ceil(q·n), 1-based
    (round() rounds halves to even, which gave rank 20 of 20 for p95)."""
    assert percentile([float(i) for i in range(1, n + 1)], q) == rank


def test_percentile_of_nothing():
    assert percentile([], 0.95) is None


def test_row_format():
    row = {"mode": "ray", "clients": 4, "ok": 15, "requests": 16, "replicas_used": 2, "requests_per_s": 1.234,
           "ttft_p50_s": 0.5, "ttft_p95_s": None, "tokens_per_s": 40.04}
    assert format_row(row) == "| ray | 4 | 15/16 | 2 | 1.23 | 0.50 | – | 40.0 |"
