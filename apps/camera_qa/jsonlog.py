"""`--log FILE`: one JSON object per line for every question that ended (answered,
cancelled or failed): time, kind, question, answer, frame, state, error and stats."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from fusion_edge.runtime.errors import FusionEdgeError


class JsonLog:
    """A hub listener appending finished jobs to a file (flushed per line)."""

    def __init__(self, path, source_label: str):
        self.path = Path(path)
        self.source_label = source_label
        self._lock = threading.Lock()
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
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
