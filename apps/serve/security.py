"""Who may call the API (an ASGI gate in front of every route but /health), as in the camera app.

- Bound to a loopback address no key is needed (unless one is given), and the Host header must
  name a loopback host, so a web page cannot reach the server through DNS rebinding.
- Bound anywhere else a key is required (cli.py refuses to start without one); it is read from
  `Authorization: Bearer KEY` (what OpenAI clients send) and compared in constant time.
- A browser request from another origin is refused unless that origin was given with --cors
  (then CORS headers are added for it, and only for it).
Refusals are OpenAI-shaped errors: 401 for the key, 403 for host and origin.
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

from fusion_edge.apps.camera_qa.security import is_loopback

from .errors import ApiError

OPEN_PATHS = ("/health",)


class ApiGate:
    def __init__(self, app, api_key: str | None, loopback_only: bool, cors: tuple[str, ...] = ()):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.loopback_only = loopback_only
        self.cors = tuple(o.rstrip("/") for o in cors)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._host(headers) or self._origin(headers)
        preflight = scope.get("method") == "OPTIONS" and headers.get("origin", "").rstrip("/") in self.cors
        if problem is None and not preflight and scope.get("path") not in OPEN_PATHS:
            problem = self._key(headers)
        if problem is None:
            return await self.app(scope, receive, send)
        await send_error(send, problem)

    def _host(self, headers) -> ApiError | None:
        if not self.loopback_only:
            return None
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        if is_loopback(host):
            return None
        return ApiError(403, f"requests for host '{host}' are refused (the server listens on this machine only).",
                        "call http://127.0.0.1:PORT/v1, or start with --host and --api-key", code="host_refused")

    def _origin(self, headers) -> ApiError | None:
        origin = headers.get("origin", "").rstrip("/")
        if not origin or origin in self.cors or urlsplit(origin).netloc == headers.get("host"):
            return None
        return ApiError(403, f"requests from the web origin {origin} are refused.",
                        "start the server with --cors ORIGIN to allow that site", code="origin_refused")

    def _key(self, headers) -> ApiError | None:
        if self.key is None:
            return None
        auth = headers.get("authorization", "")
        supplied = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if supplied and hmac.compare_digest(supplied, self.key):
            return None
        return ApiError(401, "API key missing or wrong.", "send 'Authorization: Bearer KEY' with the server's "
                        "--api-key (OpenAI clients: api_key=KEY)", code="invalid_api_key")


async def send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
