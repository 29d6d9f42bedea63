"""Watch mode: one standing question, asked about each new frame at a chosen interval.

`due(now, frame, idle)` says whether to ask now: watching, the worker idle (watch never
queues behind or ahead of a person's question), the interval since the last watch
question passed, and the frame is a new one (a frozen frame is asked about once).
"""
from __future__ import annotations

import threading
from collections import deque

from fusion_edge.runtime.errors import PromptError

from .jobs import clean_question

MIN_INTERVAL_S = 0.5
MAX_INTERVAL_S = 3600.0


class Watch:
    def __init__(self, max_question_chars: int, keep: int = 10):
        self.max_question_chars = max_question_chars
        self.question = ""
        self.interval = 5.0
        self.on = False
        self.max_new_tokens: int | None = None      # None = the app's limit
        self.answers: deque = deque(maxlen=keep)    # public dicts of finished watch jobs, oldest first
        self._last_start = float("-inf")
        self._last_key: str | None = None
        self._lock = threading.Lock()

    def configure(self, on: bool, question=None, interval=None, max_new_tokens=None) -> dict:
        """Start / change / stop watching; validates like a typed question."""
        q = clean_question(question, self.max_question_chars) if question is not None else self.question
        seconds = parse_interval(interval) if interval is not None else self.interval
        if on and not q:
            raise PromptError("watch mode needs a question.", "type the standing question, then start")
        with self._lock:                       # all checked: change nothing on a refusal
            self.question, self.interval, self.on = q, seconds, bool(on)
            if on:
                self.max_new_tokens = max_new_tokens     # None: the app's limit
            self._last_start, self._last_key = float("-inf"), None
            return self.public()

    def due(self, now: float, frame, idle: bool) -> bool:
        with self._lock:
            return (self.on and idle and frame is not None and frame.key != self._last_key
                    and now - self._last_start >= self.interval)

    def started(self, now: float, frame) -> None:
        with self._lock:
            self._last_start, self._last_key = now, frame.key

    def public(self) -> dict:
        return {"on": self.on, "question": self.question, "interval": self.interval,
                "max_new_tokens": self.max_new_tokens, "answers": list(self.answers)}


def parse_interval(value) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"watch interval '{value}' is not a number of seconds.", "pick an interval") from None
    if not MIN_INTERVAL_S <= s <= MAX_INTERVAL_S:
        raise PromptError(f"watch interval {s:g} s is outside {MIN_INTERVAL_S:g}–{MAX_INTERVAL_S:g} s.",
                          "pick an interval in that range")
    return s
