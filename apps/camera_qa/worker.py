"""The inference worker: the one thread that owns the Pipeline.

One job runs at a time; one more may wait (depth-1 queue); a third is refused with
BusyError. A user question outranks the standing watch question: it cancels a running
watch job and takes its place. `look` runs once per frame: scenes are cached by frame key
(a frozen frame or an uploaded photo keeps its scene for every question about it).
Cancelling sets the job's event; the worker stops consuming the answer generator at the
next token and closes it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from fusion_edge.runtime.errors import FusionEdgeError

from . import heap
from .jobs import BusyError, Job

log = logging.getLogger("fusion_edge.camera")


class Worker:
    def __init__(self, pipeline, publish, temperature: float = 0.0, scene_cache: int = 4):
        self.pipe = pipeline
        self.publish = publish                  # event dict → None (Hub.publish)
        self.temperature = temperature
        self._scenes: OrderedDict = OrderedDict()     # frame key → Scene, least recent first
        self._scene_cache = scene_cache
        self._cond = threading.Condition()
        self._current: Job | None = None        # running (or about to run)
        self._waiting: Job | None = None        # the depth-1 queue
        self._stop = False
        self.looks = 0                          # how many times `look` ran (scene-cache misses)
        self._thread = threading.Thread(target=self._loop, name="camera-inference", daemon=True)

    # ---- control (any thread) ------------------------------------------------------------
    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            for job in (self._current, self._waiting):
                if job is not None:
                    job.cancel_event.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        return self._current is None and self._waiting is None

    def submit(self, job: Job) -> str:
        """→ "running" or "queued"; raises BusyError when a question already waits."""
        with self._cond:
            if self._stop:
                raise BusyError("the app is shutting down.", "restart it")
            if self._current is None:
                self._current = job
                state = "running"
            elif self._waiting is None or (job.kind == "ask" and self._waiting.kind == "watch"):
                if self._waiting is not None:
                    self._end(self._waiting, "cancelled", error="replaced by a question")
                self._waiting = job
                state = "queued"
                if job.kind == "ask" and self._current.kind == "watch":
                    self._current.cancel_event.set()      # user questions outrank watch
            else:
                raise BusyError("a question is already waiting for the running one to finish.",
                                "wait for the answer, or stop the running one")
            job.state = state
            # published under the lock: the worker cannot start (and stream tokens) before this
            self.publish({"type": "job", "job": job.public()})
            self._cond.notify_all()
        return state

    def cancel(self, job_id: str | None = None) -> bool:
        """Cancel the job with this id (or the running one). False when nothing matched."""
        with self._cond:
            waiting = self._waiting
            if waiting is not None and waiting.id == job_id:
                self._waiting = None
                self._end(waiting, "cancelled")
                return True
            current = self._current
            if current is not None and job_id in (None, current.id):
                current.cancel_event.set()
                return True
        return False

    def cancel_kind(self, kind: str) -> None:
        """Cancel every job of this kind, running or waiting (watch mode switched off)."""
        with self._cond:
            if self._waiting is not None and self._waiting.kind == kind:
                waiting, self._waiting = self._waiting, None
                self._end(waiting, "cancelled")
            if self._current is not None and self._current.kind == kind:
                self._current.cancel_event.set()

    def snapshot(self) -> dict:
        cur, wait = self._current, self._waiting
        return {"running": cur.public() if cur else None, "waiting": wait.public() if wait else None}

    # ---- worker thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._current is None and not self._stop:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                job = self._current
            assert job is not None              # the wait above ends on a job (or returns on stop)
            self._run(job)
            with self._cond:
                self._current, self._waiting = self._waiting, None
                nxt = self._current
                if nxt is not None:
                    nxt.state = "running"
            if nxt is not None:
                self.publish({"type": "job", "job": nxt.public()})

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        try:
            scene, look_s = self._scene(job.frame)
            if job.cancelled:
                return self._finish(job, "cancelled")
            temperature = self.temperature if job.temperature is None else job.temperature
            pieces = self.pipe.ask(scene, job.question, stream=True, max_new_tokens=job.max_new_tokens,
                                   temperature=temperature, query_len=job.query_len)
            n = 0
            try:
                for piece in pieces:
                    n += 1
                    job.text += piece
                    self.publish({"type": "token", "id": job.id, "text": piece})
                    if job.cancelled:
                        break
            finally:
                pieces.close()
            job.stats = self._stats(look_s, n, job.cancelled, time.perf_counter() - t0)
            self._finish(job, "cancelled" if job.cancelled else "done")
        except FusionEdgeError as e:
            self._finish(job, "error", error=e.problem, fix=e.fix)
        except Exception as e:  # noqa: BLE001 — shown as a message; the traceback goes to the log
            log.exception("inference failed")
            self._finish(job, "error", error=f"inference failed: {type(e).__name__}: {e}",
                      fix="see the server log; the app keeps running")

    def _scene(self, frame):
        """(Scene, seconds spent in look: 0.0 when the scene came from the cache)."""
        scene = self._scenes.get(frame.key)
        if scene is not None:
            self._scenes.move_to_end(frame.key)
            return scene, 0.0
        t = time.perf_counter()
        scene = self.pipe.look(frame.image)
        self.looks += 1
        self._scenes[frame.key] = scene
        while len(self._scenes) > self._scene_cache:
            self._scenes.popitem(last=False)
        return scene, time.perf_counter() - t

    def _stats(self, look_s: float, pieces: int, cancelled: bool, total_s: float) -> dict:
        s = self.pipe.last_stats
        new_tokens = s.get("new_tokens", pieces) if not cancelled else pieces
        prefill_end = s.get("ttft_s", 0.0)
        decode_s = s.get("decode_s") if not cancelled else None
        if decode_s is None:
            decode_s = max(total_s - look_s - prefill_end, 0.0)
        return {"scene_cached": look_s == 0.0, "look_s": look_s,
                "vision_s": look_s + s.get("vision_main_s", 0.0), "prefill_s": s.get("prefill_s", 0.0),
                "ttft_s": look_s + prefill_end, "decode_s": decode_s, "new_tokens": new_tokens,
                "tokens_per_s": (s.get("decode_tokens_per_s", 0.0) if not cancelled
                                 else (max(pieces - 1, 0) / decode_s if decode_s else 0.0)),
                "total_s": total_s, "device": self.pipe.device,
                "devices": self.pipe.devices}

    def _finish(self, job: Job, state: str, error: str | None = None, fix: str | None = None) -> None:
        """End a job that ran: its freed tensors go back to the kernel first (heap.py), so RSS
        stays flat over a long run and what a client measures after an answer is trimmed."""
        heap.trim()
        self._end(job, state, error, fix)

    def _end(self, job: Job, state: str, error: str | None = None, fix: str | None = None) -> None:
        job.state, job.error, job.fix = state, error, fix
        self.publish({"type": "end", "job": job.public()})
