"""Who may talk to the camera app: access token, Host and Origin checks (an ASGI gate).

- Bound to a loopback address the app needs no token (unless one is given), but checks
  the Host header so a web page cannot reach it through DNS rebinding.
- Bound anywhere else it needs a token: generated and printed when not given. It is read
  from `?token=`, an `Authorization: Bearer` header, or the cookie set on the first good
  visit, and checked on every HTTP request and web socket.
- Web sockets and uploads from another origin (a page on another site) are refused.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
WS_REFUSED = 4401          # web socket close code: token missing or wrong
WS_FORBIDDEN = 4403        # web socket close code: wrong origin / host


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """(token to require or None, whether it was generated here)."""
    if token:
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(18), True


class Gate:
    """ASGI middleware in front of the whole app (pages, static files, API, web socket)."""

    def __init__(self, app, token: str | None, loopback_only: bool):
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._host_problem(headers) or self._origin_problem(scope, headers)
        status, code = 403, WS_FORBIDDEN
        if problem is None and self.token is not None:
            supplied, from_query = self._supplied(scope, headers)
            if supplied is None or not hmac.compare_digest(supplied.encode(), self.token.encode()):
                status, code = 401, WS_REFUSED
                problem = ("access token missing or wrong.",
                           "open the address printed by 'fusion-edge camera' (it ends in ?token=…)")
            elif from_query and scope["type"] == "http":
                send = _with_cookie(send, _cookie_name(scope), self.token)
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": code, "reason": problem[0]})
        await _refuse(send, status, problem, "text/html" in headers.get("accept", ""))

    def _host_problem(self, headers):
        if not self.loopback_only:
            return None
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        if is_loopback(host):
            return None
        return (f"requests for host '{host}' are refused (the app listens on this machine only).",
                "open http://127.0.0.1:PORT/ or start with --host and a token")

    def _origin_problem(self, scope, headers):
        origin = headers.get("origin")
        if not origin:
            return None             # not a browser page (curl, scripts) or a same-origin GET
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            return None
        if urlsplit(origin).netloc == headers.get("host"):
            return None
        return (f"requests from another site ({origin}) are refused.", "use the app's own page")

    def _supplied(self, scope, headers):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][-1], True
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 — a malformed cookie header is just no token
            return None, False
        morsel = cookie.get(_cookie_name(scope))
        return (morsel.value if morsel else None), False


def _cookie_name(scope) -> str:
    port = (scope.get("server") or ("", 0))[1] or 0
    return f"fusion_camera_{port}"


def _with_cookie(send, name: str, token: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            cookie = f"{name}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
        await send(message)
    return wrapped


async def _refuse(send, status: int, problem: tuple[str, str], html: bool) -> None:
    if html:
        body = (_PAGE.format(title="Access refused" if status == 401 else "Request refused",
                             problem=_esc(problem[0]), fix=_esc(problem[1]))).encode()
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps({"error": problem[0], "fix": problem[1]}).encode()
        ctype = b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font:16px system-ui,sans-serif;background:#0f1115;color:#e7e9ee;display:grid;place-items:center;
min-height:100vh;margin:0;padding:1rem;box-sizing:border-box}}main{{max-width:32rem;background:#181b22;
border:1px solid #2a2f3a;border-radius:14px;padding:1.5rem}}h1{{font-size:1.2rem;color:#ff8a80;margin-top:0}}
p.fix{{color:#a9b0bd}}</style></head><body><main id="refused"><h1>{title}</h1><p>{problem}</p>
<p class="fix">{fix}</p></main></body></html>"""
