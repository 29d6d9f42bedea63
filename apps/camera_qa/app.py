"""CameraApp: the camera QA application without its web layer.

It wires a capture thread (newest frame), the inference worker (owns the Pipeline), watch
mode, the freeze / uploaded-photo state and the answer history to one event Hub. The web
server (server.py), the terminal printer (headless.py) and the JSON log (jsonlog.py) are
listeners on that hub and callers of the methods below; none of them touches the Pipeline.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from fusion_edge.runtime.errors import SourceError
from fusion_edge.runtime.option_types import check_float, check_int
from fusion_edge.runtime.prompt import check_max_new_tokens
from fusion_edge.runtime.sampling import Sampler

from .capture import Capture, Frame, upload_frame
from .hub import Hub
from .images import decode_upload, thumbnail_data_url
from .jobs import FINAL_STATES, Job, clean_question
from .sources import SourceSpec, open_source
from .watch import Watch
from .worker import Worker


@dataclass
class Settings:
    max_new_tokens: int = 64              # per answer (a question may ask for fewer)
    temperature: float = 0.0              # 0 = greedy
    max_question_chars: int = 500
    max_upload_bytes: int = 8 * 1024 * 1024
    max_fps: float = 15.0                 # video files play at min(their fps, this)
    slide_seconds: float = 3.0            # image folders: seconds per image
    backoff: tuple = (0.5, 10.0)          # source retry delay: first, cap (doubling)
    view_px: int = 960                    # live view JPEG: longer side
    thumb_px: int = 192                   # answer thumbnails: longer side
    history: int = 30                     # finished answers kept for a page (re)load
    watch_keep: int = 10                  # watch answers listed

    def __post_init__(self):
        """The ranges the command line checks too (cli.py): OptionError / PromptError, never a
        value reinterpreted; the limits themselves may be as large as wanted."""
        check_max_new_tokens(self.max_new_tokens, name="max_new_tokens", option="--max-new-tokens")
        Sampler(self.temperature)
        check_int(self.max_question_chars, "--max-question-chars", 1)
        check_int(self.max_upload_bytes, "max_upload_bytes", 1)
        check_float(self.max_fps, "--max-fps", 0, low_open=True)
        check_float(self.slide_seconds, "--slide-seconds", 0, low_open=True)


class CameraApp:
    def __init__(self, pipeline, source: SourceSpec, settings: Settings | None = None):
        self.settings = s = settings or Settings()
        self.source = source
        self.pipeline = pipeline
        self.hub = Hub()
        self.capture = Capture(lambda: open_source(source, s.max_fps, s.slide_seconds), source.label,
                               on_status=self._on_source, backoff=tuple(s.backoff),
                               stall_after=max(10.0, 3 * s.slide_seconds))
        self.worker = Worker(pipeline, self.hub.publish, s.temperature)
        self.watch = Watch(s.max_question_chars, s.watch_keep)
        self.history: deque = deque(maxlen=s.history)     # finished ask jobs (public dicts)
        self.frozen: Frame | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="camera-ticker", daemon=True)
        self.hub.subscribe(self._remember)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "CameraApp":
        self.capture.start()
        self.worker.start()
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()
        self.capture.stop()
        if self._ticker.is_alive():
            self._ticker.join(5)

    # ---- frames ----------------------------------------------------------------------------
    def current_frame(self) -> Frame | None:
        """The frozen frame (or uploaded photo) while frozen, else the newest captured frame."""
        return self.frozen or self.capture.latest()

    def freeze(self, on: bool) -> dict:
        if on:
            frame = self.frozen or self.capture.latest()
            if frame is None:
                raise SourceError("there is no frame to freeze yet.", self._no_frame_fix())
            self.frozen = frame
        else:
            self.frozen = None
        self.hub.publish({"type": "freeze", "freeze": self.freeze_state()})
        return self.freeze_state()

    def upload(self, data: bytes, content_type: str | None) -> dict:
        """Check + decode an uploaded photo and freeze on it (questions then go to the photo)."""
        image = decode_upload(data, content_type, self.settings.max_upload_bytes)
        self.frozen = upload_frame(image)
        self.hub.publish({"type": "freeze", "freeze": self.freeze_state()})
        return self.freeze_state()

    def freeze_state(self) -> dict:
        f = self.frozen
        if f is None:
            return {"on": False}
        return {"on": True, "key": f.key, "origin": f.origin, "width": f.image.width, "height": f.image.height}

    # ---- questions -------------------------------------------------------------------------
    def ask(self, question, max_new_tokens=None) -> Job:
        """Queue a question about the current frame; raises PromptError / SourceError / BusyError."""
        q = clean_question(question, self.settings.max_question_chars)
        max_new_tokens = self._token_budget(max_new_tokens)         # checked before the frame is taken
        frame = self.current_frame()
        if frame is None:
            raise SourceError(f"no frame from {self.source.label} yet ({self.capture.status()['message']})",
                              self._no_frame_fix())
        return self._submit("ask", q, frame, max_new_tokens)

    def _submit(self, kind: str, question: str, frame: Frame, max_new_tokens) -> Job:
        job = Job(kind, question, frame, self._token_budget(max_new_tokens),
                  thumb=thumbnail_data_url(frame.image, self.settings.thumb_px))
        self.worker.submit(job)
        return job

    def cancel(self, job_id: str | None = None) -> bool:
        return self.worker.cancel(job_id)

    def set_watch(self, on: bool, question=None, interval=None, max_new_tokens=None) -> dict:
        budget = None if max_new_tokens is None else self._token_budget(max_new_tokens)
        state = self.watch.configure(on, question, interval, budget)
        if not state["on"]:
            self.worker.cancel_kind("watch")
        self.hub.publish({"type": "watch", "watch": state})
        return state

    def _token_budget(self, requested) -> int:
        """A question's max_new_tokens: none = the app's limit; a whole number >= 1 (PromptError
        otherwise), at most the limit (a larger one is lowered to it: --max-new-tokens caps every
        answer)."""
        cap = self.settings.max_new_tokens
        if requested is None:
            return cap
        check_max_new_tokens(requested)
        return min(int(requested), cap)

    def _no_frame_fix(self) -> str:
        return "wait for the camera, or upload a photo to ask about"

    # ---- state for a page (re)load ------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"source": self.capture.status(), "freeze": self.freeze_state(), "watch": self.watch.public(),
                "queue": self.worker.snapshot(), "history": list(self.history),
                "model": {"backend": self.pipeline.backend_name, "device": self.pipeline.device,
                          "verification": self.pipeline.bundle.verification_status,
                          "warning": self.pipeline.verification_warning,
                          "devices": self.pipeline.devices, "tf32_parts": self.pipeline.tf32_parts},
                "limits": {"max_question_chars": self.settings.max_question_chars,
                           "max_upload_bytes": self.settings.max_upload_bytes,
                           "max_new_tokens": self.settings.max_new_tokens}}

    def _remember(self, event: dict) -> None:
        if event["type"] == "end" and event["job"]["state"] in FINAL_STATES:
            job = event["job"]
            (self.watch.answers if job["kind"] == "watch" else self.history).append(job)

    def _on_source(self, status: dict) -> None:
        self.hub.publish({"type": "source", "source": status})

    # ---- ticker: watch questions and stalled-source reports --------------------------------------
    def _tick_loop(self) -> None:
        last_state = None
        while not self._stop.wait(0.2):
            st = self.capture.status()
            if "stalled" in (st["state"], last_state) and st["state"] != last_state:
                self.hub.publish({"type": "source", "source": st})
            last_state = st["state"]
            self._maybe_watch(time.monotonic())

    def _maybe_watch(self, now: float) -> None:
        frame = self.current_frame()
        if frame is None or not self.watch.due(now, frame, self.worker.idle):
            return
        self.watch.started(now, frame)
        try:
            self._submit("watch", self.watch.question, frame, self.watch.max_new_tokens)
        except Exception as e:  # noqa: BLE001 — e.g. busy: try again on a later tick
            self.hub.publish({"type": "notice", "message": f"watch question skipped: {e}"})
