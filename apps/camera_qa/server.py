"""The web layer: FastAPI routes, the web socket protocol, and serving with uvicorn.

HTTP
  GET  /                 the page (static/index.html; app.js and app.css under /static)
  GET  /api/frame.jpg    newest frame as JPEG; `?after=KEY` waits up to 1 s for a newer one
                         (204 when none came, 503 with the source's message when there is no frame)
  GET  /api/state        everything a page needs after a (re)load
  POST /api/upload       body = the photo (Content-Type image/jpeg|png|webp|bmp); freezes on it
Web socket /ws — client → server JSON: {"type": "ask", "question", "max_new_tokens"?} (a whole
  number >= 1, lowered to --max-new-tokens when above it; anything else is an error reply),
  {"type": "cancel", "id"?}, {"type": "freeze", "on"},
  {"type": "watch", "on", "question", "interval", "max_new_tokens"?}, {"type": "ping"}.
  Server → client: state, job, token, end, source, freeze, watch, notice,
  error (a refused request: {"message", "fix", "request"}), pong.
Every failure reaches the client as {"error"/"message", "fix"}; tracebacks stay in the log.
"""
# No `from __future__ import annotations` here: FastAPI reads the route parameters'
# annotations (Request, WebSocket, imported inside the functions) at definition time.
import asyncio
import json
import logging
import socket
from pathlib import Path

from fusion_edge.runtime.errors import FusionEdgeError, MissingExtraError
from fusion_edge.runtime.option_types import check_port

from .capture import readable
from .images import UploadError, check_upload_type, jpeg_bytes, too_large
from .security import Gate, is_loopback

log = logging.getLogger("fusion_edge.camera")
STATIC = Path(__file__).resolve().parent / "static"
MAX_WS_MESSAGE = 16 * 1024
CLIENT_QUEUE = 4096          # events buffered per socket; a client that falls further behind loses tokens


def import_web():
    """fastapi + uvicorn + a web socket implementation, or MissingExtraError naming the package."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(e.name or "fastapi", "camera", "the camera app's web server") from None
    try:
        import websockets  # noqa: F401
    except ImportError:
        try:
            import wsproto  # noqa: F401
        except ImportError:
            raise MissingExtraError("websockets", "camera", "streaming answers to the browser") from None


def create_app(cam, token: str | None = None, loopback_only: bool = True):
    """The ASGI app for a CameraApp: FastAPI routes behind the token / host / origin Gate."""
    import_web()
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.staticfiles import StaticFiles

    app = FastAPI(title="fusion-edge camera QA", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app, cam)

    @app.exception_handler(FusionEdgeError)
    async def _our_error(request, exc: FusionEdgeError):
        return _problem(getattr(exc, "status", 400), exc.problem, exc.fix)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return _problem(exc.status_code, str(exc.detail), None)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        return _problem(400, "the request is malformed.", "use the app's page or the documented API")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("request failed")
        return _problem(500, f"internal error: {readable(exc)}", "see the server log; the app keeps running")

    return Gate(app, token, loopback_only)


def _problem(status: int, problem: str, fix: str | None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": problem, "fix": fix}, status_code=status, headers={"cache-control": "no-store"})


def _routes(app, cam) -> None:
    from fastapi import Request, WebSocket
    from fastapi.responses import FileResponse, Response
    from starlette.concurrency import run_in_threadpool

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/api/state")
    async def state():
        return cam.snapshot()

    @app.get("/api/frame.jpg")
    async def frame(after: str = ""):
        frame = await _next_frame(cam, after)
        if frame is None:
            st = cam.capture.status()
            return _problem(503, st["message"], st.get("fix") or "the app keeps retrying the source")
        if frame.key == after:
            return Response(status_code=204, headers={"cache-control": "no-store"})
        data = await run_in_threadpool(_frame_jpeg, frame, cam.settings.view_px)
        return Response(data, media_type="image/jpeg",
                        headers={"cache-control": "no-store", "x-frame-key": frame.key,
                                 "x-frame-seq": str(frame.seq), "x-frame-origin": frame.origin})

    @app.post("/api/upload")
    async def upload(request: Request):
        limit = cam.settings.max_upload_bytes
        try:
            ctype = check_upload_type(request.headers.get("content-type"))
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise UploadError(too_large(int(declared), limit), "upload a smaller photo", status=413)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise UploadError(too_large(len(body), limit) + " (stopped reading)",
                                      "upload a smaller photo", status=413)
            return await run_in_threadpool(cam.upload, bytes(body), ctype)
        except UploadError as e:
            return _problem(e.status, e.problem, e.fix)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await _socket_session(cam, websocket)


async def _next_frame(cam, after: str, wait_s: float = 1.0):
    """The current frame once its key differs from `after`, else whatever is there after wait_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        frame = cam.current_frame()
        if (frame is not None and frame.key != after) or loop.time() >= deadline:
            return frame
        await asyncio.sleep(0.04)


def _frame_jpeg(frame, view_px: int) -> bytes:
    data = frame._jpeg.get(view_px)
    if data is None:
        data = frame._jpeg[view_px] = jpeg_bytes(frame.image, view_px)
    return data


# ---- web socket ------------------------------------------------------------------------------
async def _socket_session(cam, websocket) -> None:
    from starlette.websockets import WebSocketDisconnect
    await websocket.accept()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)

    def deliver(event: dict) -> None:          # runs on the publishing thread
        loop.call_soon_threadsafe(_offer, queue, event)

    unsubscribe = cam.hub.subscribe(deliver)
    _offer(queue, {"type": "state", "state": cam.snapshot()})
    sender = asyncio.create_task(_send_loop(websocket, queue))
    try:
        while True:
            text = await websocket.receive_text()
            reply = handle_message(cam, text)
            if reply is not None:
                _offer(queue, reply)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        unsubscribe()
        sender.cancel()


def _offer(queue: asyncio.Queue, event: dict) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:
        pass        # the final "end" event carries the whole answer, so a dropped token heals


async def _send_loop(websocket, queue: asyncio.Queue) -> None:
    try:
        while True:
            await websocket.send_text(json.dumps(await queue.get()))
    except Exception:  # noqa: BLE001 — the socket closed; the receive side ends the session
        pass


def handle_message(cam, text: str) -> dict | None:
    """One client message → None (its effects are broadcast) or a reply for this client only."""
    if len(text) > MAX_WS_MESSAGE:
        return _error(f"message of {len(text)} characters is too long.", "send shorter questions", None)
    try:
        msg = json.loads(text)
        if not isinstance(msg, dict):
            raise ValueError
    except ValueError:
        return _error("could not read the message (expected a JSON object).", "use the app's page", None)
    kind = msg.get("type")
    try:
        if kind == "ask":
            cam.ask(msg.get("question"), msg.get("max_new_tokens"))
        elif kind == "cancel":
            if not cam.cancel(msg.get("id")):
                return {"type": "notice", "message": "nothing to stop: that answer already ended."}
        elif kind == "freeze":
            cam.freeze(bool(msg.get("on")))
        elif kind == "watch":
            cam.set_watch(bool(msg.get("on")), msg.get("question"), msg.get("interval"), msg.get("max_new_tokens"))
        elif kind == "ping":
            return {"type": "pong"}
        else:
            return _error(f"unknown request type '{kind}'.", "use the app's page", kind)
    except FusionEdgeError as e:
        return _error(e.problem, e.fix, kind)
    except Exception as e:  # noqa: BLE001
        log.exception("socket request failed")
        return _error(f"internal error: {readable(e)}", "see the server log; the app keeps running", kind)
    return None


def _error(problem: str, fix: str | None, request) -> dict:
    return {"type": "error", "message": problem, "fix": fix, "request": request}


# ---- serving -----------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port), or a readable error."""
    check_port(port)                     # getaddrinfo would wrap 70000 to 4464, or overflow
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise FusionEdgeError(f"cannot listen on {host}:{port} ({e.strerror or e}).",
                              "pick another --port, or stop the program that uses this one") from None
    sock.listen(128)
    return sock


def make_server(cam, host: str, port: int, token: str | None, sock: socket.socket | None = None):
    """(uvicorn.Server, listening socket, URL to open) — `serve` runs it; tests run it in a thread.
    sock: already bound with `bind(host, port)` (the command line binds before the model loads)."""
    import_web()
    import uvicorn
    sock = sock or bind(host, port)
    app = create_app(cam, token, loopback_only=is_loopback(host))
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws_max_size=64 * 1024,
                            timeout_graceful_shutdown=3, lifespan="off")
    real_port = sock.getsockname()[1]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") or is_loopback(host) else host
    url = f"http://{'[' + url_host + ']' if ':' in url_host else url_host}:{real_port}/"
    return uvicorn.Server(config), sock, url


def serve(cam, host: str, port: int, token: str | None, on_ready=print, sock: socket.socket | None = None) -> None:
    """Run the web app until Ctrl-C / SIGTERM. `on_ready(url)` is called once it listens."""
    server, sock, url = make_server(cam, host, port, token, sock)
    on_ready(url + (f"?token={token}" if token else ""))
    server.run(sockets=[sock])
