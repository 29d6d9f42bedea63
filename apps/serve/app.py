"""The HTTP layer (FastAPI): the OpenAI-compatible routes around handler.py and scheduler.py.

  POST /v1/chat/completions   JSON, or server-sent `chat.completion.chunk` events with stream: true
  GET  /v1/models[/{id}]      the bundle: target, precision, devices, verification
  GET  /health                {"status": "ok" | "draining", ...}; needs no key; on Ray also "fleet"
  GET  /metrics               Prometheus text (metrics.py)
Every refusal is an OpenAI-shaped error (errors.py); the `x-fusion-replica` header names the
process (or Ray replica) that answered. A client that disconnects cancels its generation.
"""
# No `from __future__ import annotations`: FastAPI reads the route annotations at definition time.
import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from fusion_edge.runtime.errors import FusionEdgeError, MissingExtraError

from .errors import ApiError, as_api_error, bad_request
from .handler import ChatHandler, Outcome, Prepared, ServeSettings, Text
from .metrics import Metrics, now
from .scheduler import Job, Scheduler
from .security import ApiGate

if TYPE_CHECKING:
    from starlette.types import ASGIApp

log = logging.getLogger("fusion_edge.serve")
DISCONNECT_POLL_S = 0.5


def import_web():
    """fastapi + uvicorn + prometheus_client, or MissingExtraError naming the serve extra."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(e.name or "fastapi", "serve", "`fusion-edge serve`") from None


@dataclass
class Service:
    """One model server: the handler, its worker and its metrics (one per process or Ray replica)."""
    handler: ChatHandler
    scheduler: Scheduler
    metrics: Metrics
    max_body_bytes: int
    fleet: Callable[[], dict] | None = None      # Ray: the deployment's replicas (blocking; ray_app.FleetStatus)

    @classmethod
    def start(cls, pipeline, settings: ServeSettings, max_queue: int, max_body_bytes: int,
              replica: str | None = None, fleet: Callable[[], dict] | None = None) -> "Service":
        handler = ChatHandler(pipeline, settings, replica or f"{socket.gethostname()}:{os.getpid()}")
        scheduler = Scheduler(handler, max_queue).start()
        return cls(handler, scheduler, Metrics(scheduler), max_body_bytes, fleet)


def create_app(service: Service, api_key: str | None = None, loopback_only: bool = True, cors: tuple = ()):
    """The ASGI app: FastAPI routes, CORS only for --cors origins, the key / host / origin gate,
    and the status counter outermost (so refusals are counted too)."""
    import_web()
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app = FastAPI(title="fusion-edge serve", docs_url=None, redoc_url=None, openapi_url=None)
    _routes(app, service)

    @app.exception_handler(FusionEdgeError)        # ApiError, and the runtime's ImageError, PromptError, …
    async def _our_error(request, exc: FusionEdgeError):
        return error_response(as_api_error(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return error_response(ApiError(exc.status_code, str(exc.detail), code="http_error"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error_response(bad_request("the request is malformed.", "see docs/serve.md"))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("request failed")
        return error_response(as_api_error(exc))

    inner: ASGIApp = app
    if cors:
        from starlette.middleware.cors import CORSMiddleware
        inner = CORSMiddleware(app, allow_origins=list(cors), allow_methods=["GET", "POST"],
                               allow_headers=["authorization", "content-type"])
    return service.metrics.count_statuses(ApiGate(inner, api_key, loopback_only, tuple(cors)))


def error_response(err: ApiError):
    from fastapi.responses import JSONResponse
    return JSONResponse(err.body(), status_code=err.status, headers={"cache-control": "no-store", **err.headers})


def _routes(app, service: Service) -> None:
    from fastapi import Request
    from fastapi.responses import Response

    handler, scheduler = service.handler, service.scheduler

    @app.get("/health")
    async def health():
        body = {"status": "draining" if scheduler.closing else "ok", "replica": handler.replica,
                "queue_depth": scheduler.depth, "running": scheduler.running, "looks": handler.looks,
                "generations": dict(scheduler.outcomes)}
        if service.fleet is not None:
            from starlette.concurrency import run_in_threadpool
            body["fleet"] = await run_in_threadpool(service.fleet)
        return body

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [handler.model_card()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id != handler.settings.model_id:
            raise ApiError(404, f"the model '{model_id}' is not served here.", "GET /v1/models", "model",
                           "model_not_found")
        return handler.model_card()

    @app.get("/metrics")
    async def metrics():
        body, ctype = service.metrics.text()
        return Response(body, media_type=ctype)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from starlette.concurrency import run_in_threadpool
        arrival = now()
        body = await _read_json(request, service.max_body_bytes)
        prep = await run_in_threadpool(handler.prepare, body)      # image decoding and fetching block
        job = Job(prep, asyncio.get_running_loop())
        scheduler.submit(job)
        if prep.request.stream:
            return _stream(service, job, request, arrival)
        return await _complete(service, job, request, arrival)


async def _read_json(request, limit: int):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared)} bytes; the limit is {limit}.",
                       "send a smaller image (or raise --max-body-mb)", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the request body passes the limit of {limit} bytes.",
                           "send a smaller image (or raise --max-body-mb)", code="request_too_large")
    try:
        return json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"the request body is not valid JSON ({e}).", "send a JSON object",
                          code="invalid_json") from None


async def _complete(service: Service, job: Job, request, arrival: float):
    """Wait for the whole answer, polling for a disconnect (which cancels the job)."""
    from fastapi.responses import JSONResponse
    texts, first = [], None
    try:
        while True:
            event = await job.next(DISCONNECT_POLL_S)
            if event is None:
                if await request.is_disconnected():
                    return None
                continue
            if isinstance(event, ApiError):
                return error_response(event)
            if isinstance(event, Text):
                first = first or now()
                texts.append(event.text)
                continue
            service.metrics.observe(arrival, first, event.timings)
            body = service.handler.completion(job.prep, "".join(texts), event)
            return JSONResponse(body, headers={"x-fusion-replica": service.handler.replica})
    finally:
        if not job.finished:
            service.scheduler.cancel(job)


def _stream(service: Service, job: Job, request, arrival: float):
    from fastapi.responses import StreamingResponse
    handler, prep = service.handler, job.prep

    async def events():
        first = None
        try:
            yield _sse(handler.chunk(prep, {"role": "assistant", "content": ""}))
            while True:
                event = await job.next(None)
                if isinstance(event, ApiError):          # after the 200 was sent: an error event
                    yield _sse(event.body())
                    break
                if isinstance(event, Text):
                    first = first or now()
                    if event.text:
                        yield _sse(handler.chunk(prep, {"content": event.text},
                                                 extra={"fusion": {"token_ids": event.token_ids}}))
                    continue
                yield from_outcome(event, first)
                if prep.request.include_usage:
                    yield _sse(handler.usage_chunk(prep, event))
                break
            yield "data: [DONE]\n\n"
        finally:                                         # also on a disconnect (the task is cancelled)
            if not job.finished:
                service.scheduler.cancel(job)

    def from_outcome(out: Outcome, first) -> str:
        service.metrics.observe(arrival, first, out.timings)
        return _sse(handler.chunk(prep, {}, out.finish_reason, extra={"fusion": handler.extension(out)}))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-fusion-replica": handler.replica})


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


__all__ = ["Service", "create_app", "import_web", "Prepared"]
