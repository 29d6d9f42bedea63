"""Prometheus metrics of one server (or one Ray replica), in a registry of its own.

fusion_serve_requests_total{path, status}     every HTTP response (refusals by the gate included)
fusion_serve_generations_total{outcome}       done | cancelled | error, from the scheduler
fusion_serve_queue_depth, fusion_serve_running
fusion_serve_ttft_seconds                     request arrival → first answer text (queue wait included)
fusion_serve_decode_tokens_per_second         per answer, from the pipeline's decode timing
"""
from __future__ import annotations

import time

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PATHS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


class Metrics:
    def __init__(self, scheduler):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.core import CounterMetricFamily
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fusion_serve_requests", "HTTP responses by path and status", ["path", "status"],
                                registry=r)
        Gauge("fusion_serve_queue_depth", "requests waiting for the model", registry=r).set_function(
            lambda: scheduler.depth)
        Gauge("fusion_serve_running", "generations running (0 or 1)", registry=r).set_function(
            lambda: scheduler.running)
        self.ttft = Histogram("fusion_serve_ttft_seconds", "request arrival to first answer text",
                              buckets=TTFT_BUCKETS, registry=r)
        self.decode_rate = Histogram("fusion_serve_decode_tokens_per_second", "decode rate of each answer",
                                     buckets=RATE_BUCKETS, registry=r)

        class Outcomes:
            def collect(self):
                c = CounterMetricFamily("fusion_serve_generations", "generations by outcome", labels=["outcome"])
                for outcome, n in scheduler.outcomes.items():
                    c.add_metric([outcome], n)
                yield c
        r.register(Outcomes())

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe(self, arrival: float, first_text_at: float | None, timings: dict) -> None:
        if first_text_at is not None:
            self.ttft.observe(first_text_at - arrival)
        rate = timings.get("decode_tokens_per_s")
        if rate:
            self.decode_rate.observe(rate)

    def count_statuses(self, app):
        """ASGI wrapper: counts every response by path and status."""
        async def wrapped(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope.get("path", "")
            path = path if path in PATHS else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")

            async def counting_send(message):
                if message["type"] == "http.response.start":
                    self.requests.labels(path, str(message["status"])).inc()
                await send(message)
            return await app(scope, receive, counting_send)
        return wrapped


def now() -> float:
    return time.perf_counter()
