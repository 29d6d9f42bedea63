"""A chat-completions request body (a JSON object) → ChatRequest, or ApiError 400 naming the field.

FUSION's chat template is single-turn (runtime/prompt.py: one user message holding one image,
a fixed system text), so a conversation is exactly one `user` message with one `image_url` part
and text parts. Earlier turns cannot be folded in without changing what the model was trained
on; a follow-up is a new request with the same image, whose scene the server has cached.
Fields OpenAI defines that this server cannot honour (n > 1, tools, logprobs, …) are refused by
name; fields OpenAI does not define are refused as unknown.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusion_edge.runtime.prompt import IMAGE_PLACEHOLDER

from .errors import bad_request, unsupported

SINGLE_TURN_FIX = ("send one user message with the image and the question; for a follow-up send the same image "
                   "again with the new question (its scene is cached, so the global tiles are not recomputed)")
# fields accepted only at their neutral value: name → (neutral test, what to say)
NEUTRAL = {
    "n": (lambda v: v in (None, 1), "n > 1 (several choices)"),
    "tools": (lambda v: not v, "tools"),
    "tool_choice": (lambda v: v in (None, "none"), "tool_choice"),
    "functions": (lambda v: not v, "functions"),
    "function_call": (lambda v: v in (None, "none"), "function_call"),
    "parallel_tool_calls": (lambda v: v in (None, False, True), "parallel_tool_calls"),
    "logprobs": (lambda v: v in (None, False), "logprobs"),
    "top_logprobs": (lambda v: v in (None, 0), "top_logprobs"),
    "logit_bias": (lambda v: not v, "logit_bias"),
    "frequency_penalty": (lambda v: v in (None, 0, 0.0), "frequency_penalty other than 0"),
    "presence_penalty": (lambda v: v in (None, 0, 0.0), "presence_penalty other than 0"),
    "response_format": (lambda v: v in (None, {"type": "text"}), "response_format other than text"),
    "modalities": (lambda v: v in (None, ["text"]), "output modalities other than text"),
    "audio": (lambda v: v is None, "audio output"),
    "prediction": (lambda v: v is None, "prediction"),
}
IGNORED = ("user", "metadata", "store", "service_tier", "reasoning_effort")   # accepted, no effect here
KNOWN = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "seed", "stop", *NEUTRAL, *IGNORED}


@dataclass(frozen=True)
class Limits:
    default_max_tokens: int = 256
    max_tokens: int = 1024            # the largest max_tokens a request may ask for
    max_prompt_chars: int = 4000      # the question text, before tokenisation


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    question: str                     # text parts joined; `<image-placeholder>` where the image sat mid-text
    image_url: str
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


def parse_request(body, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object.", "send {\"model\": ..., \"messages\": [...]}")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise bad_request(f"unknown field '{unknown[0]}'.", "remove it (see docs/serve.md for the accepted fields)",
                          unknown[0], "unknown_parameter")
    for name, (neutral, what) in NEUTRAL.items():
        if not neutral(body.get(name)):
            raise unsupported(what, name, f"leave '{name}' out")
    question, image_url = parse_messages(body.get("messages"), limits)
    max_tokens = _max_tokens(body, limits)
    stream = _typed(body, "stream", bool, False)
    options = _typed(body, "stream_options", dict, None)
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed with stream: true.", "set stream or drop stream_options",
                          "stream_options")
    include_usage = _typed(options or {}, "include_usage", bool, False, "stream_options.include_usage")
    return ChatRequest(model=_typed(body, "model", str, None), question=question, image_url=image_url,
                       stream=stream, include_usage=include_usage, max_tokens=max_tokens,
                       temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                       top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
                       seed=_typed(body, "seed", int, None), stop=_stop(body.get("stop")))


def parse_messages(messages, limits: Limits) -> tuple[str, str]:
    """→ (question, image URL) of the one user message."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list.", "send [{\"role\": \"user\", \"content\": [...]}]",
                          "messages", "invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a 'role'.", SINGLE_TURN_FIX, f"messages[{i}]")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise bad_request(f"messages[{i}] has the unknown or unsupported field '{extra[0]}'.",
                              "send role and content only", f"messages[{i}].{extra[0]}", "unknown_parameter")
    roles = [m["role"] for m in messages]
    if roles != ["user"]:
        other = next((r for r in roles if r != "user"), "user")
        what = (f"a '{other}' message" if other != "user" else f"{roles.count('user')} user messages")
        raise bad_request(f"FUSION's chat template is single-turn (one user message, a fixed system text); "
                          f"this conversation has {what}.", SINGLE_TURN_FIX, "messages", "unsupported_conversation")
    return _content(messages[0].get("content"), limits)


def _content(content, limits: Limits) -> tuple[str, str]:
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request("messages[0].content must be a string or a list of parts.", SINGLE_TURN_FIX,
                          "messages[0].content", "invalid_type")
    texts, images, image_at = [], [], None
    for j, part in enumerate(content):
        where = f"messages[0].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str) and set(part) <= {"type", "text"}:
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and set(part) <= {"type", "image_url"}:
            url = part["image_url"]
            if set(url) - {"url", "detail"} or not isinstance(url.get("url"), str):
                raise bad_request(f"{where}.image_url must be {{\"url\": \"data:...\"}}.", None, where, "invalid_type")
            images.append(url["url"])
            image_at = len(texts) if image_at is None else image_at
        else:
            raise bad_request(f"{where} is not a text or image_url part (type {kind!r}).",
                              "send {\"type\": \"text\", \"text\": ...} or {\"type\": \"image_url\", ...}", where,
                              "invalid_type")
    if not images:
        raise bad_request("the message has no image; FUSION answers questions about an image.",
                          "add an {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}} "
                          "part", "messages", "missing_image")
    if len(images) > 1:
        raise unsupported(f"a conversation with {len(images)} images (one image per conversation)", "messages",
                          "send one image per request")
    if image_at:                      # the image sat after some text: keep its place in the prompt
        texts.insert(image_at, IMAGE_PLACEHOLDER)
    question = "\n".join(texts)
    if len(question) > limits.max_prompt_chars:
        raise bad_request(f"the question is {len(question)} characters; the limit is {limits.max_prompt_chars}.",
                          "ask a shorter question", "messages", "context_length_exceeded")
    return question, images[0]


def _typed(body: dict, name: str, kind: type, default, param: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"'{param or name}' must be of type {kind.__name__}, got {type(value).__name__}.",
                          None, param or name, "invalid_type")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {type(value).__name__}.", None, name, "invalid_type")
    if not (low < value <= high if low_open else low <= value <= high):
        raise bad_request(f"'{name}' is {value}; it must be in {'(' if low_open else '['}{low}, {high}].",
                          None, name, "invalid_value")
    return float(value)


def _max_tokens(body: dict, limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    n = _typed(body, name, int, limits.default_max_tokens)
    if not 1 <= n <= limits.max_tokens:
        raise bad_request(f"'{name}' is {n}; it must be between 1 and {limits.max_tokens}.",
                          f"ask for at most {limits.max_tokens} tokens", name, "invalid_value")
    return n


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise bad_request("'stop' must be a non-empty string or a list of up to 4 of them.", None, "stop",
                          "invalid_type")
    return tuple(items)
