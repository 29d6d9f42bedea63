"""`fusion-edge serve` as a real subprocess for the tests: start, find its port, stop with SIGTERM."""
from __future__ import annotations

import base64
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
READY = re.compile(r"serving .* at (http://\S+/v1)")


class ServerProcess:
    """`fusion-edge serve ARGS` until it prints its address; `.stop()` sends SIGTERM and waits."""

    def __init__(self, *args: str, ready_timeout: float = 240.0):
        self.proc = subprocess.Popen([sys.executable, "-m", "fusion_edge.cli", "serve", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        self.lines: list[str] = []
        self._ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.base_url = self._ready.get(timeout=ready_timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.lines[-40:])) from None
        if self.base_url is None:
            raise AssertionError(f"server exited ({self.proc.wait()}):\n" + "".join(self.lines[-40:]))
        self.root = self.base_url[: -len("/v1")]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = READY.search(line)
            if m:
                self._ready.put(m.group(1))
        self._ready.put(None)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def data_url(path_or_image, fmt: str = "PNG") -> str:
    from PIL import Image
    if isinstance(path_or_image, (str, Path)):
        data = Path(path_or_image).read_bytes()
        mime = "image/jpeg" if str(path_or_image).lower().endswith((".jpg", ".jpeg")) else "image/png"
    else:
        buf = io.BytesIO()
        Image.Image.save(path_or_image, buf, fmt)
        data, mime = buf.getvalue(), f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def user(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def wait_until(fn, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
