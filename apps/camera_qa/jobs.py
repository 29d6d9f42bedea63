"""Questions as jobs: what was asked, about which frame, and how it ended.

States: queued → running → done | cancelled | error (a queued job can be cancelled
without running). `public()` is the JSON the UI and the log see.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from fusion_edge.runtime.errors import FusionEdgeError, PromptError

from .capture import Frame

_ids = itertools.count(1)
FINAL_STATES = ("done", "cancelled", "error")


class BusyError(FusionEdgeError):
    """One question is running and one is waiting; a third is refused, not piled up."""


@dataclass(eq=False)
class Job:
    kind: str                    # ask | watch
    question: str
    frame: Frame
    max_new_tokens: int
    thumb: str = ""              # data: URL of the frame the question is about
    temperature: float | None = None    # None: the worker's
    query_len: int | None = None        # None: the bundle's
    id: str = field(default_factory=lambda: f"j{next(_ids)}")
    created: float = field(default_factory=time.time)
    state: str = "new"
    text: str = ""
    stats: dict = field(default_factory=dict)
    error: str | None = None
    fix: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "question": self.question, "state": self.state,
                "text": self.text, "stats": self.stats, "error": self.error, "fix": self.fix,
                "frame": {"key": self.frame.key, "seq": self.frame.seq, "origin": self.frame.origin,
                          "time": self.frame.time},
                "thumb": self.thumb, "created": self.created}


def clean_question(text, max_chars: int) -> str:
    """Strip, refuse empty or over-long questions (PromptError with the limit in it)."""
    if not isinstance(text, str):
        raise PromptError("the question must be text.", "type a question")
    q = "".join(ch for ch in text if ch == "\n" or ch >= " ").strip()   # no control characters
    if not q:
        raise PromptError("the question is empty.", "type a question first")
    if len(q) > max_chars:
        raise PromptError(f"the question is {len(q)} characters long; the limit is {max_chars}.",
                          "shorten the question")
    return q
