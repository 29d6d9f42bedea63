"""The capture thread: reads a source continuously and keeps only the newest frame.

A source that cannot be opened, raises, or stops delivering is closed, reported through
`status()` / `on_status`, and reopened after a back-off that doubles up to a cap; the
thread never dies of a source error, so the app keeps serving while a camera is away.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from fusion_edge.runtime.errors import FusionEdgeError

log = logging.getLogger("fusion_edge.camera")
_upload_ids = itertools.count(1)


@dataclass(frozen=True, eq=False)
class Frame:
    """One image the app can ask about. `key` names it in the scene cache."""
    key: str                  # "f<seq>" for captured frames, "u<n>" for uploaded photos
    seq: int                  # capture sequence number (0 for uploads)
    image: Image.Image        # RGB
    time: float               # wall clock when captured
    origin: str = "camera"    # camera | upload
    _jpeg: dict = field(default_factory=dict, compare=False, repr=False)  # encode cache (view size → bytes)


def upload_frame(image: Image.Image) -> Frame:
    return Frame(f"u{next(_upload_ids)}", 0, image, time.time(), origin="upload")


def readable(err: BaseException) -> str:
    """A one-line message for the UI: the problem (and fix) of our errors, type + text otherwise."""
    if isinstance(err, FusionEdgeError):
        return err.problem + (f" — {err.fix}" if err.fix else "")
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class Capture:
    """Owns one source at a time in a daemon thread. `latest()` is the newest Frame or None."""

    def __init__(self, make_source, label: str, on_status=None, backoff: tuple[float, float] = (0.5, 10.0),
                 stall_after: float = 10.0):
        self.make_source = make_source       # () → unopened source (sources.open_source)
        self.label = label
        self.on_status = on_status or (lambda status: None)
        self.backoff = backoff
        self.stall_after = stall_after
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._seq = 0
        self._state: dict[str, Any] = {"state": "starting", "message": f"opening {label}…", "fix": None,
                                       "retry_in": 0.0, "failures": 0}
        self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)

    # ---- public --------------------------------------------------------------------------
    def start(self) -> "Capture":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def latest(self) -> Frame | None:
        return self._frame

    def status(self) -> dict:
        """state: starting | live | retrying | stalled | stopped, with a readable message (and fix)."""
        with self._lock:
            st = dict(self._state)
        frame = self._frame
        st.update(label=self.label, frames=self._seq, last_frame_age=(time.time() - frame.time) if frame else None)
        if st["state"] == "live" and frame is not None and st["last_frame_age"] > self.stall_after:
            st.update(state="stalled", message=f"no new frame from {self.label} for {st['last_frame_age']:.0f} s",
                      fix="check the camera; the app reopens it if it reports an error")
        return st

    # ---- thread --------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            source = self.make_source()
            got_frame = False
            try:
                source.open()
                while not self._stop.is_set():
                    image = source.read(self._stop)
                    if self._stop.is_set():
                        break
                    self._publish(image)
                    if not got_frame:
                        got_frame, delay = True, self.backoff[0]
                        self._set_state("live", f"{self.label}: live")
            except Exception as e:  # noqa: BLE001 — any source failure is reported and retried
                if not self._stop.is_set():
                    log.debug("source %s failed", self.label, exc_info=True)
                    problem, fix = (e.problem, e.fix) if isinstance(e, FusionEdgeError) else (readable(e), None)
                    self._set_state("retrying", problem, fix, retry_in=delay, failed=True)
            finally:
                _close_quietly(source)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff[1])
        self._set_state("stopped", f"{self.label}: stopped")

    def _publish(self, image: Image.Image) -> None:
        self._seq += 1
        self._frame = Frame(f"f{self._seq}", self._seq, image, time.time())

    def _set_state(self, state: str, message: str, fix: str | None = None, retry_in: float = 0.0,
                   failed: bool = False) -> None:
        with self._lock:
            failures = self._state["failures"] + (1 if failed else 0)
            self._state = {"state": state, "message": message, "fix": fix, "retry_in": retry_in,
                           "failures": failures}
        try:
            self.on_status(self.status())
        except Exception:  # noqa: BLE001 — a listener must not kill the capture thread
            log.exception("status listener failed")


def _close_quietly(source) -> None:
    try:
        source.close()
    except Exception:  # noqa: BLE001
        log.debug("closing source failed", exc_info=True)
