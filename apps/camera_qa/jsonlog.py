"""`--log FILE`: one JSON object per line for every question that ended (answered,
cancelled or failed): time, kind, question, answer, frame, state, error and stats.

A write that fails (disk full, file removed, a network mount gone) loses no answer: the
line waits in memory (the newest MAX_PENDING), the problem is reported once on stderr, and
the next answer reopens the file and writes everything that waited.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from fusion_edge.runtime.errors import FusionEdgeError

MAX_PENDING = 10_000


class JsonLog:
    """A hub listener appending finished jobs to a file (flushed per line)."""

    def __init__(self, path, source_label: str, warn=None):
        self.path = Path(path)
        self.source_label = source_label
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._dropped = 0
        self._failing: str | None = None        # the problem being reported, while writes fail
        try:
            self._fh = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise FusionEdgeError(f"cannot write the log file {self.path} ({e.strerror}).",
                                  "pick a writable --log path") from None

    def __call__(self, event: dict) -> None:
        if event.get("type") != "end":
            return
        job = event["job"]
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kind": job["kind"], "id": job["id"],
                  "question": job["question"], "answer": job["text"], "state": job["state"],
                  "error": job["error"], "frame": job["frame"]["key"], "frame_origin": job["frame"]["origin"],
                  "source": self.source_label, "stats": job["stats"]}
        with self._lock:
            self._pending.append(json.dumps(record, ensure_ascii=False) + "\n")
            if len(self._pending) > MAX_PENDING:
                self._dropped += len(self._pending) - MAX_PENDING
                del self._pending[:-MAX_PENDING]
            self._flush_pending()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _flush_pending(self) -> None:
        try:
            if self._failing is not None:       # reopen: the file may have been replaced or the disk freed
                self._close_quietly()
                self._fh = self.path.open("a", encoding="utf-8")
            while self._pending:
                self._fh.write(self._pending[0])
                self._fh.flush()
                self._pending.pop(0)
        except OSError as e:
            if self._failing is None:
                self.warn(f"warning: cannot write the answer log {self.path} ({e.strerror or e}); "
                          "answers are kept in memory and written when the file is writable again")
            self._failing = str(e)
            return
        if self._failing is not None:
            lost = f" ({self._dropped} oldest lines were dropped)" if self._dropped else ""
            self.warn(f"notice: the answer log {self.path} is writable again; caught up{lost}")
            self._failing, self._dropped = None, 0

    def _close_quietly(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass                                # its buffer held lines that are still pending

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_pending()
            finally:
                self._close_quietly()
