"""Event fan-out from the app's threads (worker, capture, ticker) to its listeners.

A listener is a callable taking one event dict; it runs on the publishing thread, so it
must be quick (web sockets hand the event to their event loop; the terminal printer and
the JSON log write a line). A listener that raises is dropped, never the publisher.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("fusion_edge.camera")


class Hub:
    def __init__(self):
        self._lock = threading.Lock()
        self._listeners: list = []

    def subscribe(self, fn):
        """Add a listener; returns the function that removes it."""
        with self._lock:
            self._listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)
        return unsubscribe

    def publish(self, event: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event)
            except Exception:  # noqa: BLE001 — e.g. a socket whose event loop has closed
                log.debug("dropping a listener that failed", exc_info=True)
                with self._lock:
                    if fn in self._listeners:
                        self._listeners.remove(fn)

    def __len__(self) -> int:
        return len(self._listeners)
