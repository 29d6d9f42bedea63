"""The one implementation of a chat-completions request, shared by the single-process server and
the Ray Serve replicas; no HTTP here.

  prepare(body)         any thread: parse + validate (request.py), decode the image (images.py),
                        build the prompt once to refuse an over-long one before it is queued
  generate(prep, stop)  the worker thread only (it owns the Pipeline): scene from the cache or
                        `look`, then `ask(stream=True)`; yields Text pieces, then one Outcome
  completion / chunk    response bodies in OpenAI's shapes, with the extension field `fusion`
                        (token ids, scene cache hit, replica, timings) kept by clients in model_extra
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

from fusion_edge.runtime.errors import OptionError, PromptError
from fusion_edge.runtime.prompt import build_prompt, check_room
from fusion_edge.runtime.sampling import Sampler

from .errors import ApiError
from .images import ImageSettings, load_image_url
from .request import ChatRequest, Limits, parse_request


@dataclass(frozen=True)
class ServeSettings:
    model_id: str
    limits: Limits = Limits()
    images: ImageSettings = ImageSettings()
    scene_cache: int = 8              # scenes (4 global tiles each) kept, least recently used dropped


@dataclass
class Prepared:
    request: ChatRequest
    image: object                     # PIL RGB image
    image_key: str                    # sha256 of the decoded pixels: the scene cache key
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Text:
    text: str
    token_ids: list[int]              # the tokens decoded since the previous piece


@dataclass
class Outcome:
    token_ids: list[int]
    finish_reason: str                # stop | length | cancelled
    scene_cached: bool
    timings: dict                     # the pipeline's last_stats (+ look_s)


class _RecordingTokenizer:
    """The pipeline's tokenizer, with stream decoders that record the token ids pushed to them:
    the ids of an answer cut short (stop string, disconnect) are then known exactly."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.pushed: list[int] = []

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def stream_decoder(self, *args, **kwargs):
        decoder, pushed = self._tok.stream_decoder(*args, **kwargs), self.pushed
        push = decoder.push

        def recording_push(tok: int) -> str:
            pushed.append(int(tok))
            return push(tok)
        decoder.push = recording_push
        return decoder


class ChatHandler:
    def __init__(self, pipeline, settings: ServeSettings, replica: str):
        self.pipe = pipeline
        self.settings = settings
        self.replica = replica
        self._tokens = _RecordingTokenizer(pipeline.tokenizer)
        pipeline.tokenizer = self._tokens
        self._scenes: OrderedDict = OrderedDict()          # image key → Scene (worker thread only)
        self.looks = 0                                     # scene-cache misses

    # ---- descriptions ------------------------------------------------------------------------
    def model_card(self) -> dict:
        b = self.pipe.bundle
        return {"id": self.settings.model_id, "object": "model", "created": int(time.time()),
                "owned_by": "fusion-edge", "fusion": {
                    "target": b.target, "precision": b.precision, "backend": self.pipe.backend_name,
                    "devices": self.pipe.devices, "tf32_parts": self.pipe.tf32_parts,
                    "verification": b.verification_status, "verification_warning": self.pipe.verification_warning,
                    "query_len": self.pipe.default_query_len, "image_tokens": self.pipe.image_tokens,
                    "max_tokens": self.settings.limits.max_tokens, "replica": self.replica}}

    # ---- any thread --------------------------------------------------------------------------
    def prepare(self, body) -> Prepared:
        req = parse_request(body, self.settings.limits)
        if req.model is not None and req.model != self.settings.model_id:
            raise ApiError(404, f"the model '{req.model}' is not served here.",
                           f"use '{self.settings.model_id}' (GET /v1/models)", "model", "model_not_found")
        image, key = load_image_url(req.image_url, self.settings.images)
        return Prepared(req, image, key, self._check_prompt(req))

    def _check_prompt(self, req: ChatRequest) -> int:
        """Build the prompt as `ask` will (PromptError on an over-long or malformed one), check that
        it and max_tokens fit the context (runtime/prompt.py `check_room`, every bundle: the model's
        positions, a trt bundle's engine profiles) and the sampling options (`Sampler`: the seed's
        range) → the prompt's length. Everything `ask` would refuse is a 400 before the queue."""
        p, cfg = self.pipe, self.pipe.cfg
        layout = build_prompt(self._tokens._tok, cfg.template, req.question, p.image_tokens, p.default_query_len,
                              cfg.tokenizer_model_max_length)
        context, what = p.context_limit()
        try:
            check_room(layout.seq_len, req.max_tokens, context, what, option="max_tokens")
        except PromptError as e:
            param = "messages" if layout.seq_len > context else "max_tokens"
            raise ApiError(400, e.problem, e.fix, param, "context_length_exceeded") from None
        try:
            Sampler(req.temperature, req.top_p, 0, req.seed)
        except OptionError as e:
            raise ApiError(400, e.problem, e.fix, "seed", "invalid_value") from None
        return layout.seq_len

    # ---- the worker thread -------------------------------------------------------------------
    def generate(self, prep: Prepared, cancel: threading.Event) -> Iterator[Text | Outcome]:
        """Text pieces (stop strings cut out), then one Outcome. `cancel` set: stop at the next token."""
        req = prep.request
        scene, cached, look_s = self._scene(prep)
        pushed: list[int] = []
        self._tokens.pushed = pushed
        pieces = self.pipe.ask(scene, req.question, stream=True, max_new_tokens=req.max_tokens,
                               temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        stops, finish, sent = StopText(req.stop), None, 0
        try:
            for piece in pieces:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                text, hit = stops.push(piece)
                if text or hit:
                    yield Text(text, pushed[sent:])
                    sent = len(pushed)
                if hit:
                    finish = "stop"
                    break
        finally:
            pieces.close()
        if finish is None:
            tail = stops.flush()
            if tail or len(pushed) > sent:
                yield Text(tail, pushed[sent:])
            finish = "length" if len(pushed) >= req.max_tokens else "stop"
        timings = {**self.pipe.last_stats, "look_s": look_s}
        yield Outcome(list(pushed), finish, cached, timings)

    def _scene(self, prep: Prepared):
        scene = self._scenes.get(prep.image_key)
        if scene is not None:
            self._scenes.move_to_end(prep.image_key)
            return scene, True, 0.0
        t0 = time.perf_counter()
        scene = self.pipe.look(prep.image)
        self.looks += 1
        self._scenes[prep.image_key] = scene
        while len(self._scenes) > self.settings.scene_cache:
            self._scenes.popitem(last=False)
        return scene, False, time.perf_counter() - t0

    # ---- response shapes ---------------------------------------------------------------------
    def completion(self, prep: Prepared, text: str, out: Outcome) -> dict:
        return {"id": prep.id, "object": "chat.completion", "created": prep.created, "model": self.settings.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": _openai_finish(out.finish_reason)}],
                "usage": self.usage(prep, out), "fusion": self.extension(out)}

    def chunk(self, prep: Prepared, delta: dict, finish: str | None = None, extra: dict | None = None) -> dict:
        body = {"id": prep.id, "object": "chat.completion.chunk", "created": prep.created,
                "model": self.settings.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": _openai_finish(finish) if finish else None}]}
        return {**body, **(extra or {})}

    def usage_chunk(self, prep: Prepared, out: Outcome) -> dict:
        return {"id": prep.id, "object": "chat.completion.chunk", "created": prep.created,
                "model": self.settings.model_id, "choices": [], "usage": self.usage(prep, out)}

    def usage(self, prep: Prepared, out: Outcome) -> dict:
        n = len(out.token_ids)
        return {"prompt_tokens": prep.prompt_tokens, "completion_tokens": n, "total_tokens": prep.prompt_tokens + n}

    def extension(self, out: Outcome) -> dict:
        t = out.timings
        keep = ("look_s", "vision_main_s", "prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s")
        return {"token_ids": out.token_ids, "scene_cached": out.scene_cached, "replica": self.replica,
                "timings": {k: round(float(t[k]), 6) for k in keep if k in t}}


def _openai_finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


class StopText:
    """Cuts a streamed text at the first of the stop strings, holding back a tail that may be
    the start of one (so no part of a stop string is ever sent)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """→ (text safe to send, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held
