"""Frame sources for the camera app: parse `--source` and read frames from it.

Kinds (`parse_source`):
  csi://N[?width=&height=&fps=&flip=]  Jetson CSI camera via a GStreamer nvarguscamerasrc pipeline
  /dev/videoN or N                     USB / V4L2 camera
  rtsp://… rtsps://… http(s)://…       network stream (OpenCV's FFmpeg backend)
  a video file                         played at its own frame rate, looping
  a folder of images / one image       slideshow (Pillow only; no OpenCV needed)

A source is opened, read and closed by one capture thread (capture.py). `read(stop)`
blocks until the next frame and returns an RGB PIL image; it raises SourceError when the
source fails, and the capture thread reopens it with back-off.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from fusion_edge.runtime.errors import FusionEdgeError, MissingExtraError, SourceError
from fusion_edge.runtime.option_types import check_int

if TYPE_CHECKING:
    import cv2

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
STREAM_TIMEOUT_MS = 10_000
MAX_DEVICE_INDEX = 255            # /dev/video0..255, CSI sensor ids: V4L2's device numbers
CSI_RANGES = {"width": (1, 16384), "height": (1, 16384), "fps": (1, 1000), "flip": (0, 7)}   # flip: nvvidconv


@dataclass(frozen=True)
class SourceSpec:
    kind: str        # csi | v4l2 | stream | video | folder | image
    target: str      # what is opened: GStreamer pipeline, device path/index, URL or path
    label: str       # short text for the UI


def parse_source(spec: str) -> SourceSpec:
    """Classify `--source`; raises SourceError for a path that does not exist."""
    s = str(spec).strip()
    if not s:
        raise SourceError("--source is empty.", "pass csi://0, /dev/video0, 0, rtsp://…, a video file or a folder")
    if s.startswith("csi://"):
        return SourceSpec("csi", _csi_from_url(s), f"CSI camera {urlsplit(s).netloc or '0'}")
    if s.lower().startswith(STREAM_SCHEMES):
        return SourceSpec("stream", s, _redact_url(s))
    if s.isdigit():
        check_int(int(s), "--source camera index", 0, MAX_DEVICE_INDEX,
                  f"pass a camera index from 0 to {MAX_DEVICE_INDEX} (/dev/videoN), or another source")
        return SourceSpec("v4l2", s, f"camera {s}")
    if s.startswith("/dev/video"):
        return SourceSpec("v4l2", s, s)     # may appear later (USB re-plug): not checked here
    path = Path(s).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), f"folder {path.name or path}")
    if path.is_file():
        kind = "image" if path.suffix.lower() in IMAGE_EXTS else "video"
        return SourceSpec(kind, str(path), path.name)
    raise SourceError(f"source '{s}' does not exist (it is not a camera, URL, file or folder).",
                      "check the path, or use csi://0, /dev/video0, 0 or rtsp://host/stream")


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """GStreamer pipeline string for OpenCV's CAP_GSTREAMER: Argus camera → BGR appsink.

    nvarguscamerasrc gives NVMM (GPU) buffers; nvvidconv copies them to CPU as BGRx and
    videoconvert drops the x. `drop=true max-buffers=1` keeps only the newest frame.
    """
    return (f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
            f"video/x-raw(memory:NVMM), width=(int){int(width)}, height=(int){int(height)}, "
            f"framerate=(fraction){int(fps)}/1 ! nvvidconv flip-method={int(flip)} ! "
            "video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def _csi_from_url(url: str) -> str:
    parts = urlsplit(url)
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        sensor = int(parts.netloc or 0)
        opts = {k: int(q[k]) for k in ("width", "height", "fps", "flip") if k in q}
    except ValueError:
        raise SourceError(f"cannot read the CSI source '{url}'.",
                          "use csi://N with optional ?width=1280&height=720&fps=30&flip=0 (integers)") from None
    unknown = set(q) - {"width", "height", "fps", "flip"}
    if unknown:
        raise SourceError(f"unknown CSI option(s) {sorted(unknown)} in '{url}'.", "known: width, height, fps, flip")
    check_int(sensor, "CSI sensor id", 0, MAX_DEVICE_INDEX)
    for key, (low, high) in CSI_RANGES.items():
        if key in opts:
            check_int(opts[key], f"CSI {key}", low, high)
    return csi_pipeline(sensor, **opts)


def _redact_url(url: str) -> str:
    """rtsp://user:pass@host/x → rtsp://host/x (credentials never reach the UI)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return f"{p.scheme}://{host}{p.path}"


def open_source(spec: SourceSpec, max_fps: float = 15.0, slide_seconds: float = 3.0):
    """A new, unopened source object for `spec` (the capture thread makes one per attempt)."""
    if spec.kind in ("folder", "image"):
        return SlideshowSource(spec, slide_seconds)
    return OpenCVSource(spec, max_fps)


# ---- OpenCV: CSI, V4L2, streams, video files --------------------------------------------
def import_cv2():
    try:
        import cv2
    except ImportError:
        raise MissingExtraError("opencv-python-headless", "camera",
                                "reading video files, USB/V4L2, RTSP and CSI cameras") from None
    return cv2


def gstreamer_available(cv2) -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class OpenCVSource:
    """cv2.VideoCapture behind the source interface; video files loop at their own fps."""

    def __init__(self, spec: SourceSpec, max_fps: float = 15.0):
        self.spec = spec
        self.max_fps = max_fps
        self.cap: cv2.VideoCapture | None = None
        self.period = 0.0           # seconds between frames taken (0: every frame)
        self.skip = 0               # file frames dropped per shown frame, to keep real-time speed
        self.next_t = 0.0

    def open(self) -> None:
        cv2 = import_cv2()
        if self.spec.kind == "csi":
            if not gstreamer_available(cv2):
                raise SourceError("this OpenCV was built without GStreamer, which CSI cameras need.",
                                  "on the Jetson use JetPack's OpenCV (sudo apt install python3-opencv; "
                                  "pip uninstall opencv-python-headless), or use a USB camera (/dev/video0)")
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_GSTREAMER)
        elif self.spec.kind == "v4l2":
            target = int(self.spec.target) if self.spec.target.isdigit() else self.spec.target
            if isinstance(target, str) and not os.path.exists(target):
                raise SourceError(f"camera {target} is not connected.", "plug the camera in; the app keeps retrying")
            api = cv2.CAP_V4L2 if os.name == "posix" and hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
            cap = cv2.VideoCapture(target, api)
        elif self.spec.kind == "stream":
            # bounded network waits: a dead stream fails (and is retried) instead of hanging
            params = [getattr(cv2, name) for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC")
                      if hasattr(cv2, name)]
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG,
                                   [v for prop in params for v in (prop, STREAM_TIMEOUT_MS)])
        else:
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG)
        self.cap = cap                              # close() releases it, opened or not
        if not cap.isOpened():
            raise SourceError(f"cannot open {self.spec.label}.", _open_fix(self.spec.kind))
        if self.spec.kind in ("v4l2", "stream"):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)     # newest frame, not a stale queue
        if self.spec.kind == "video":
            fps = cap.get(cv2.CAP_PROP_FPS)
            fps = fps if 0 < fps < 1000 else 25.0
            rate = max(0.5, min(fps, self.max_fps))
            self.period = 1.0 / rate
            self.skip = max(0, round(fps / rate) - 1)
        elif self.max_fps:
            self.period = 1.0 / self.max_fps       # live: frames in between are grabbed, not decoded
        self.next_t = time.monotonic()

    def read(self, stop) -> Image.Image:
        return self._read_file(stop) if self.spec.kind == "video" else self._read_live(stop)

    def _read_file(self, stop) -> Image.Image:
        """Wait for the frame's time, decode it, and grab past the frames not shown; at the
        end of the file, rewind (looping)."""
        wait = self.next_t - time.monotonic()
        if wait > 0 and stop.wait(wait):
            raise SourceError("stopped.")
        self.next_t = max(self.next_t + self.period, time.monotonic())
        cap = self._opened()
        ok, bgr = cap.read()
        if not ok:
            ok, bgr = self._rewind()
        for _ in range(self.skip):
            cap.grab()
        if not ok or bgr is None:
            raise SourceError(f"{self.spec.label} has no frame to show, even after rewinding.",
                              "check the file (is it complete?); the app keeps retrying")
        return bgr_to_image(bgr)

    def _read_live(self, stop) -> Image.Image:
        """Drain frames with grab() until one is due, then decode that one: a live camera
        keeps delivering at its own rate, and only max_fps frames a second are converted."""
        cap = self._opened()
        while self.period and time.monotonic() < self.next_t and not stop.is_set():
            if not cap.grab():
                raise self._stopped()
        self.next_t = max(self.next_t + self.period, time.monotonic())
        ok, bgr = cap.read()
        if not ok or bgr is None:
            raise self._stopped()
        return bgr_to_image(bgr)

    def _stopped(self) -> SourceError:
        return SourceError(f"{self.spec.label} stopped delivering frames.",
                           "check the cable / network; the app keeps retrying")

    def _opened(self) -> cv2.VideoCapture:
        assert self.cap is not None, "read before open()"
        return self.cap

    def _rewind(self):
        import cv2
        cap = self._opened()
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return cap.read()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def bgr_to_image(bgr: np.ndarray) -> Image.Image:
    """(H, W, 3) BGR uint8 (OpenCV's order) → RGB PIL image; gray frames are expanded."""
    if bgr.ndim == 2:
        return Image.fromarray(bgr).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(bgr[:, :, 2::-1]))


def _open_fix(kind: str) -> str:
    return {
        "csi": "check the ribbon cable and sensor id (csi://0, csi://1); run "
               "'gst-launch-1.0 nvarguscamerasrc ! fakesink' to test; restart nvargus-daemon if it is stuck",
        "v4l2": "check 'ls /dev/video*' and that no other program holds the camera; the app keeps retrying",
        "stream": "check the URL, credentials and that the stream is reachable; the app keeps retrying",
        "video": "use a file OpenCV can decode (mp4/avi/mkv with H.264 or MJPG)",
    }[kind]


# ---- slideshow: a folder of images or one image ------------------------------------------
class SlideshowSource:
    """Shows each image of a folder (sorted by name) for `slide_seconds`, looping.

    The folder is listed again on each lap, so images added later show up. Unreadable
    files are skipped (`skipped` names the last one); a lap with no readable image fails.
    """

    def __init__(self, spec: SourceSpec, slide_seconds: float = 3.0):
        self.spec = spec
        self.slide_seconds = max(0.05, float(slide_seconds))
        self.queue: list[Path] = []
        self.next_t = 0.0
        self.skipped: str | None = None

    def open(self) -> None:
        self._list()
        self.next_t = time.monotonic()

    def _list(self) -> None:
        root = Path(self.spec.target)
        if self.spec.kind == "image":
            files = [root] if root.is_file() else []
        elif root.is_dir():
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        else:
            raise SourceError(f"folder {root} is gone.", "restore the folder; the app keeps retrying")
        if not files:
            raise SourceError(f"{self.spec.label} has no images ({', '.join(IMAGE_EXTS)}).",
                              "put JPEG/PNG/WebP/BMP files in it; the app keeps retrying")
        self.queue = files

    def read(self, stop) -> Image.Image:
        wait = self.next_t - time.monotonic()
        if wait > 0 and stop.wait(wait):
            raise SourceError("stopped.")
        self.next_t = time.monotonic() + self.slide_seconds
        for _ in range(2):                     # this lap's remainder, then one fresh lap
            while self.queue:
                path = self.queue.pop(0)
                image = self._load(path)
                if image is not None:
                    return image
            self._list()
        raise SourceError(f"no readable image in {self.spec.label} (last problem: {self.skipped}).",
                          "replace the corrupt files; the app keeps retrying")

    def _load(self, path: Path) -> Image.Image | None:
        from fusion_edge.runtime.preprocess import load_image
        try:
            return load_image(path)
        except FusionEdgeError as e:
            self.skipped = e.problem
            return None

    def close(self) -> None:
        self.queue = []
