"""The camera app's C-heap settings (apps/camera_qa/heap.py): what kept the soak test's RSS
climbing was free memory held in glibc's per-thread arenas, not live objects; these tests
show the settings take and that a trim really hands fragmented free memory back.

Each runs in a fresh process (malloc settings are process-wide and sticky)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# 2000 blocks of 100 KiB (below the 256 KiB mmap threshold: they come from an arena), every
# other one freed, the last one kept (it pins the heap top, so no plain sbrk shrink frees
# anything): ~100 MiB free, fragmented, inside the heap — what a long run accumulates.
FRAGMENT = textwrap.dedent('''
    import ctypes, sys, threading
    from fusion_edge.apps.camera_qa import heap
    print("configured", heap.configure())
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    blocks = []
    def work():                                  # a worker thread, as in the app
        for _ in range(2000):
            p = libc.malloc(100 * 1024)
            ctypes.memset(p, 1, 100 * 1024)      # touched: resident
            blocks.append(p)
        for p in blocks[:-1:2]:
            libc.free(p)
    t = threading.Thread(target=work); t.start(); t.join()
    before = rss_mb()
    if sys.argv[1] == "trim":
        heap.trim()
    print("freed_mb", before - rss_mb())
''')


def _run(mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", FRAGMENT, mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())


@glibc
@pytest.mark.xdist_group("memory")      # conftest.py: Ray clusters and memory soaks, one at a time
def test_trim_hands_fragmented_free_arena_memory_back():
    kept, trimmed = _run("keep"), _run("trim")
    assert kept["configured"] == trimmed["configured"] == "True"
    assert float(kept["freed_mb"]) < 10              # free() alone keeps the holes resident
    assert float(trimmed["freed_mb"]) > 80           # ~100 MiB of holes returned by the trim


def test_the_worker_trims_after_every_answer(monkeypatch):
    """The inference worker calls heap.trim once per finished job (here: jobs whose look fails),
    before it publishes the end (a client reading RSS after an answer sees the trimmed heap)."""
    import time

    from PIL import Image

    from fusion_edge.apps.camera_qa import worker as W
    from fusion_edge.apps.camera_qa.capture import Frame
    from fusion_edge.apps.camera_qa.jobs import Job
    from fusion_edge.runtime.errors import SourceError
    trims, ends = [], []
    monkeypatch.setattr(W.heap, "trim", lambda: trims.append(1))

    class NoScene:                                   # look fails: every job ends as an error
        def look(self, image):
            raise SourceError("no frame", "wait")

    w = W.Worker(NoScene(), lambda ev: ends.append((ev, len(trims))) if ev["type"] == "end" else None).start()
    frame = Frame("f1", 1, Image.new("RGB", (8, 8)), time.time())
    try:
        for n in range(3):
            w.submit(Job("ask", f"q{n}", frame, 4))
            deadline = time.monotonic() + 30      # ms of work; headroom for a core shared with another worker
            while not w.idle and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        w.stop()
    assert [(e["job"]["state"], n) for e, n in ends] == [("error", 1), ("error", 2), ("error", 3)]
    assert len(trims) == 3
