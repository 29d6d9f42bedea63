"""Camera sources and the capture thread: parsing `--source`, a generated MJPG video file
(order, looping), image-folder slideshows (order, skipping corrupt files, new files), and
sources that fail, raise or end being retried with back-off and reported. No model here."""
from __future__ import annotations

import functools
import http.server
import threading
import time

import numpy as np
import pytest
from conftest import wait_for
from PIL import Image

from fusion_edge.apps.camera_qa.capture import Capture, readable
from fusion_edge.apps.camera_qa.sources import (OpenCVSource, SlideshowSource, bgr_to_image, csi_pipeline,
                                                open_source, parse_source)
from fusion_edge.runtime.errors import SourceError

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the 'camera' extra) is not installed")

LEVELS = [20, 60, 100, 140, 180, 220]       # frame i is a flat gray image of LEVELS[i]


def write_level_video(path, fps=20.0, size=(64, 48)):
    """MJPG AVI whose frame i is uniformly LEVELS[i] gray: the order survives compression."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for level in LEVELS:
        writer.write(np.full((size[1], size[0], 3), level, np.uint8))
    writer.release()
    return path


def level(image: Image.Image) -> int:
    """Nearest LEVELS index of a (near) flat image."""
    mean = float(np.asarray(image, np.float32).mean())
    return int(np.argmin([abs(mean - v) for v in LEVELS]))


# ---- parsing -----------------------------------------------------------------------------------
def test_parse_source_kinds(tmp_path):
    (tmp_path / "shots").mkdir()
    video = write_level_video(tmp_path / "v.avi")
    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still)
    assert parse_source("/dev/video2").kind == "v4l2"
    assert parse_source("1") == parse_source("1") and parse_source("1").kind == "v4l2"
    assert parse_source(str(tmp_path / "shots")).kind == "folder"
    assert parse_source(str(video)).kind == "video"
    assert parse_source(str(still)).kind == "image"
    rtsp = parse_source("rtsp://admin:hunter2@10.0.0.9:554/live")
    assert rtsp.kind == "stream" and rtsp.target.startswith("rtsp://admin:hunter2@")
    assert "hunter2" not in rtsp.label and rtsp.label == "rtsp://10.0.0.9:554/live"


def test_csi_source_builds_an_argus_pipeline():
    spec = parse_source("csi://1?width=1920&height=1080&fps=30&flip=2")
    assert spec.kind == "csi" and spec.label == "CSI camera 1"
    assert spec.target == csi_pipeline(1, 1920, 1080, 30, 2)
    for part in ("nvarguscamerasrc sensor-id=1", "width=(int)1920", "height=(int)1080", "framerate=(fraction)30/1",
                 "nvvidconv flip-method=2", "format=(string)BGR", "appsink drop=true max-buffers=1"):
        assert part in spec.target
    assert "sensor-id=0" in parse_source("csi://0").target


@pytest.mark.parametrize("bad, words", [("csi://0?zoom=2", "unknown CSI option"), ("csi://x", "csi://N"),
                                        ("no/such/clip.mp4", "does not exist"), ("  ", "empty")])
def test_parse_source_refuses_with_a_fix(bad, words):
    with pytest.raises(SourceError) as e:
        parse_source(bad)
    assert words in str(e.value) and e.value.fix


def test_bgr_frames_become_rgb_images():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 2] = 255                                     # red in OpenCV's BGR order
    assert bgr_to_image(bgr).getpixel((0, 0)) == (255, 0, 0)
    assert bgr_to_image(np.full((2, 2), 7, np.uint8)).getpixel((1, 1)) == (7, 7, 7)


# ---- video files ------------------------------------------------------------------------------
def test_video_file_plays_in_order_and_loops(tmp_path):
    src = OpenCVSource(parse_source(str(write_level_video(tmp_path / "v.avi"))), max_fps=1000)
    stop = threading.Event()
    src.open()
    try:
        seen = [level(src.read(stop)) for _ in range(len(LEVELS) * 2 + 1)]
    finally:
        src.close()
    n = len(LEVELS)
    assert seen == list(range(n)) * 2 + [0]


def test_video_file_above_max_fps_skips_frames_to_keep_time(tmp_path):
    # 20 fps file shown at 10 fps: every other frame, so playback keeps real-time speed
    src = OpenCVSource(parse_source(str(write_level_video(tmp_path / "v.avi", fps=20))), max_fps=10)
    stop = threading.Event()
    src.open()
    try:
        seen = [level(src.read(stop)) for _ in range(3)]
    finally:
        src.close()
    assert seen == [0, 2, 4]


def test_unreadable_video_and_missing_camera_are_source_errors(tmp_path):
    fake = tmp_path / "fake.avi"
    fake.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot open fake.avi"):
        OpenCVSource(parse_source(str(fake))).open()
    with pytest.raises(SourceError, match="not connected"):
        OpenCVSource(parse_source("/dev/video97")).open()


def test_csi_without_gstreamer_explains_the_fix():
    from fusion_edge.apps.camera_qa.sources import gstreamer_available
    if gstreamer_available(cv2):
        pytest.skip("this OpenCV has GStreamer: the CSI path would try a real camera")
    with pytest.raises(SourceError) as e:
        OpenCVSource(parse_source("csi://0")).open()
    assert "GStreamer" in e.value.problem and "python3-opencv" in e.value.fix


# ---- image folders -------------------------------------------------------------------------------
def save_level(path, i):
    Image.new("RGB", (32, 24), (LEVELS[i],) * 3).save(path)


def test_slideshow_order_skips_corrupt_files_and_sees_new_ones(tmp_path):
    save_level(tmp_path / "a.png", 0)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff broken")         # corrupt: skipped
    save_level(tmp_path / "c.png", 2)
    (tmp_path / "notes.txt").write_text("not an image")             # ignored by extension
    src = SlideshowSource(parse_source(str(tmp_path)), slide_seconds=0.01)
    stop = threading.Event()
    src.open()
    assert [level(src.read(stop)) for _ in range(3)] == [0, 2, 0]
    assert src.skipped and "b.jpg" in src.skipped
    save_level(tmp_path / "d.png", 3)                                # picked up on the next lap
    assert [level(src.read(stop)) for _ in range(4)] == [2, 0, 2, 3]


def test_slideshow_of_empty_or_vanished_folder_fails(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    with pytest.raises(SourceError, match="has no images"):
        SlideshowSource(parse_source(str(folder))).open()
    save_level(folder / "a.png", 1)
    src = SlideshowSource(parse_source(str(folder)), slide_seconds=0.01)
    src.open()
    stop = threading.Event()
    assert level(src.read(stop)) == 1
    (folder / "a.png").unlink()
    folder.rmdir()
    with pytest.raises(SourceError, match="is gone"):
        src.read(stop)


# ---- the capture thread ------------------------------------------------------------------------------
class FlakySource:
    """A source that delivers `good` frames per opening and then raises, as a camera whose
    cable is pulled would. Used to drive Capture's retry logic (Capture is under test)."""
    opened = 0

    def __init__(self, good=2):
        self.good = good

    def open(self):
        FlakySource.opened += 1

    def read(self, stop):
        if self.good == 0:
            raise RuntimeError("cable pulled")
        self.good -= 1
        time.sleep(0.005)
        return Image.new("RGB", (8, 8), (FlakySource.opened, 0, 0))

    def close(self):
        pass


def test_capture_retries_a_raising_source_with_backoff_and_reports_it():
    FlakySource.opened = 0
    events = []
    cap = Capture(lambda: FlakySource(2), "flaky cam", on_status=events.append, backoff=(0.05, 0.2)).start()
    try:
        assert wait_for(lambda: FlakySource.opened >= 3)
        assert wait_for(lambda: cap.latest() is not None and cap.latest().image.getpixel((0, 0))[0] >= 3)
        assert wait_for(lambda: cap.latest().seq >= 6)     # the third opening's second frame
    finally:
        cap.stop()
    states = [e["state"] for e in events]
    assert "live" in states and "retrying" in states and states[-1] == "stopped"
    retry = next(e for e in events if e["state"] == "retrying")
    assert retry["message"] == "RuntimeError: cable pulled" and retry["label"] == "flaky cam"
    assert retry["retry_in"] == pytest.approx(0.05)       # reset after each opening that delivered frames
    assert cap.status()["failures"] >= 2 and cap.latest().seq >= 6


def test_capture_backoff_doubles_while_a_source_keeps_failing(tmp_path):
    folder = tmp_path / "later"
    folder.mkdir()
    events = []
    spec = parse_source(str(folder))
    cap = Capture(lambda: open_source(spec, slide_seconds=0.05), spec.label, on_status=events.append,
                  backoff=(0.02, 0.08)).start()
    try:
        assert wait_for(lambda: len([e for e in events if e["state"] == "retrying"]) >= 4)
        assert cap.latest() is None and "has no images" in cap.status()["message"]
        save_level(folder / "x.png", 4)                       # the source comes back
        assert wait_for(lambda: cap.latest() is not None)
        assert cap.status()["state"] == "live" and level(cap.latest().image) == 4
    finally:
        cap.stop()
    delays = [e["retry_in"] for e in events if e["state"] == "retrying"][:4]
    assert delays == [0.02, 0.04, 0.08, 0.08]


def test_capture_of_a_video_file_keeps_only_the_newest_frame(tmp_path):
    spec = parse_source(str(write_level_video(tmp_path / "v.avi", fps=50)))
    cap = Capture(lambda: open_source(spec, max_fps=50), spec.label).start()
    try:
        assert wait_for(lambda: cap.latest() is not None and cap.latest().seq > 2 * len(LEVELS))
        first = cap.latest()
        assert wait_for(lambda: cap.latest().seq > first.seq)        # keeps going past the end: looping
        st = cap.status()
    finally:
        cap.stop()
    assert st["state"] == "live" and st["failures"] == 0 and st["frames"] >= first.seq
    assert first.key == f"f{first.seq}" and first.image.size == (64, 48)


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_network_stream_that_ends_is_reported_and_reopened(tmp_path):
    """A real OpenCV/FFmpeg stream from a loopback HTTP server: it ends, the capture thread
    reports 'stopped delivering frames' and opens it again."""
    write_level_video(tmp_path / "v.avi")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietFiles, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = parse_source(f"http://127.0.0.1:{server.server_port}/v.avi")
    events = []
    cap = Capture(lambda: open_source(spec, max_fps=200), spec.label, on_status=events.append,
                  backoff=(0.05, 0.1)).start()
    try:
        assert wait_for(lambda: sum(e["state"] == "retrying" for e in events) >= 2)
    finally:
        cap.stop()
        server.shutdown()
    assert spec.kind == "stream"
    states = [e["state"] for e in events]
    assert states[:3] == ["live", "retrying", "live"]
    assert "stopped delivering frames" in next(e for e in events if e["state"] == "retrying")["message"]
    assert cap.latest() is not None and cap.status()["failures"] >= 2


def test_readable_errors_have_no_traceback():
    assert readable(SourceError("camera gone.", "plug it in")) == "camera gone. — plug it in"
    assert readable(ValueError("bad")) == "ValueError: bad"


def test_the_app_never_imports_torch():
    import subprocess
    import sys
    code = ("import sys, fusion_edge.apps.camera_qa.app, fusion_edge.apps.camera_qa.server, "
            "fusion_edge.apps.camera_qa.cli, fusion_edge.apps.camera_qa.headless, fusion_edge.runtime.pipeline; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
