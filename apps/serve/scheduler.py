"""The worker thread that owns the Pipeline, and the bounded queue in front of it.

One generation runs at a time (a Pipeline is not thread-safe, and one request at full speed
beats two at half); up to `max_queue` more wait. Beyond that a request is refused at once with
429 and a Retry-After estimate, never piled up. A job's events cross from the worker thread to
the request's event loop through `call_soon_threadsafe`. Cancelling a waiting job drops it; a
running one stops at its next token. `drain` stops taking jobs and waits for the ones taken.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque

from .errors import ApiError, as_api_error
from .handler import ChatHandler, Outcome, Prepared

log = logging.getLogger("fusion_edge.serve")


class Job:
    """One accepted request: its prepared input, a cancel flag and the events for its loop."""

    def __init__(self, prep: Prepared, loop: asyncio.AbstractEventLoop):
        self.prep = prep
        self.cancel = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self.finished = False                # the last event was taken

    def emit(self, event) -> None:           # worker thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:                 # the request's loop is gone: nobody listens
            self.cancel.set()

    async def next(self, timeout: float | None):
        """The next event (Text pieces, then an Outcome or an ApiError), or None after `timeout` s."""
        try:
            event = await (self._events.get() if timeout is None else asyncio.wait_for(self._events.get(), timeout))
        except asyncio.TimeoutError:
            return None
        if isinstance(event, (Outcome, ApiError)):
            self.finished = True
        return event


class Scheduler:
    def __init__(self, handler: ChatHandler, max_queue: int = 8):
        self.handler = handler
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closing = False
        self._stopped = False
        self._avg_s = 2.0                    # running mean of a job's duration, for Retry-After
        self.outcomes = {"done": 0, "cancelled": 0, "error": 0}
        self._thread = threading.Thread(target=self._loop, name="serve-worker", daemon=True)

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return int(self._running is not None)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, job: Job) -> None:
        """Accept the job or raise ApiError: 429 when the queue is full, 503 while shutting down."""
        with self._cond:
            if self._closing:
                raise ApiError(503, "the server is shutting down.", "retry on another replica or later",
                               code="shutting_down")
            busy = self._running is not None or self._waiting
            if busy and len(self._waiting) >= self.max_queue:
                wait = max(1, math.ceil(self._avg_s * (len(self._waiting) + 1)))
                raise ApiError(429, f"the queue is full ({self.max_queue} requests waiting for the model).",
                               f"retry after {wait} s", code="queue_full", headers={"retry-after": str(wait)})
            self._waiting.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it still waits, else stop it at the next token."""
        job.cancel.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.outcomes["cancelled"] += 1

    def drain(self, timeout: float = 600.0) -> bool:
        """Stop taking jobs, finish the taken ones, stop the thread. → whether all finished in time."""
        with self._cond:
            self._closing = True
            done = self._cond.wait_for(lambda: self._running is None and not self._waiting, timeout)
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(5)
        return done

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._stopped)
                if not self._waiting:
                    return
                job = self._running = self._waiting.popleft()
            outcome = self._run(job)
            with self._cond:
                self._running = None
                self.outcomes[outcome] += 1
                self._cond.notify_all()

    def _run(self, job: Job) -> str:
        if job.cancel.is_set():
            return "cancelled"
        t0 = _now()
        outcome = "error"
        try:
            for event in self.handler.generate(job.prep, job.cancel):
                if isinstance(event, Outcome):
                    outcome = "cancelled" if event.finish_reason == "cancelled" else "done"
                job.emit(event)
        except Exception as e:  # noqa: BLE001 — any failure becomes the request's error, the worker lives on
            err = as_api_error(e)
            if err.status >= 500:
                log.exception("generation failed")
            job.emit(err)
        self._avg_s = 0.8 * self._avg_s + 0.2 * (_now() - t0)
        return outcome


def _now() -> float:
    import time
    return time.perf_counter()
