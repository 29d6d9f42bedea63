"""The camera app's answer log survives a failing disk: nothing is lost, the problem is
reported once, and the lines are written when the file is writable again. /dev/full is a
real device whose writes fail with ENOSPC."""
from __future__ import annotations

import json
import os

import pytest

from fusion_edge.apps.camera_qa.hub import Hub
from fusion_edge.apps.camera_qa.jsonlog import JsonLog

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _end(n: int) -> dict:
    return {"type": "end", "job": {"kind": "question", "id": n, "question": f"q{n}", "text": f"a{n}",
                                   "state": "done", "error": None, "frame": {"key": n, "origin": "live"},
                                   "stats": {}}}


def test_full_disk_keeps_answers_and_catches_up(tmp_path):
    link = tmp_path / "answers.jsonl"
    link.symlink_to("/dev/full")
    warnings: list[str] = []
    log = JsonLog(link, "clip.mp4", warn=warnings.append)
    hub = Hub()
    hub.subscribe(log)
    for n in range(3):
        hub.publish(_end(n))                  # every write fails with ENOSPC
    assert len(hub) == 1         # the listener is not dropped by the hub
    assert log.pending == 3
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    real = tmp_path / "real.jsonl"
    link.unlink()
    link.symlink_to(real)                     # the disk has room again
    hub.publish(_end(3))
    assert log.pending == 0 and "writable again" in warnings[-1]
    lines = [json.loads(x) for x in real.read_text().splitlines()]
    assert [r["id"] for r in lines] == [0, 1, 2, 3] and lines[3]["answer"] == "a3"
    log.close()
