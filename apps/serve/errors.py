"""API errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` + an HTTP status.

Every refusal of a request is an ApiError; FusionEdgeErrors from the runtime (a bad image, an
over-long prompt) are mapped to one by `as_api_error`, so no request ends in a traceback.
"""
from __future__ import annotations

from fusion_edge.runtime.errors import FusionEdgeError, ImageError, OptionError, PromptError

# HTTP status → OpenAI's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


class ApiError(FusionEdgeError):
    """A refused request: status, OpenAI error type, the offending parameter and a short code."""

    def __init__(self, status: int, problem: str, fix: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(problem, fix)
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        message = self.problem if not self.fix else f"{self.problem} Fix: {self.fix}"
        return {"error": {"message": message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(problem: str, fix: str | None = None, param: str | None = None,
                code: str = "invalid_request") -> ApiError:
    return ApiError(400, problem, fix, param, code)


def unsupported(what: str, param: str, fix: str) -> ApiError:
    return ApiError(400, f"{what} is not supported by this server.", fix, param, "unsupported")


def as_api_error(e: BaseException) -> ApiError:
    """Any exception → ApiError: ours keep their message (400 for input problems), others are a 500
    without internals (the traceback goes to the server log)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ImageError):
        return ApiError(400, e.problem, e.fix, "messages", "invalid_image")
    if isinstance(e, PromptError):
        code = "context_length_exceeded" if "limit" in e.problem or "context" in e.problem else "invalid_prompt"
        return ApiError(400, e.problem, e.fix, "messages", code)
    if isinstance(e, OptionError):
        return ApiError(400, e.problem, e.fix, None, "invalid_option")
    if isinstance(e, FusionEdgeError):
        return ApiError(500, e.problem, e.fix, None, "backend_error")
    return ApiError(500, f"internal error ({type(e).__name__}).", "see the server log; the server keeps running",
                    None, "internal_error")
