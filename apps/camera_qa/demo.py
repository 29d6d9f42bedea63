"""A generated demo clip for trying the camera app without a camera (and for its tests):
`python -m fusion_edge.apps.camera_qa.demo clip.avi` writes an MJPG AVI of a moving
shape with the frame number drawn in; `fusion-edge camera BUNDLE --source clip.avi`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .sources import import_cv2


def write_demo_video(path, frames: int = 40, size: tuple[int, int] = (320, 240), fps: float = 10.0) -> Path:
    """Write `frames` BGR frames (width, height = size) as MJPG/AVI; returns the path."""
    cv2 = import_cv2()
    w, h = size
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    try:
        for i in range(frames):
            frame = np.empty((h, w, 3), np.uint8)
            frame[:] = (60 + i % 40, 90, 140)                              # slowly shifting background
            x = int((w - w // 5) * (i % frames) / max(frames - 1, 1))      # a box crossing the frame
            cv2.rectangle(frame, (x, h // 4), (x + w // 5, h // 2), (0, 200, 255), -1)
            cv2.circle(frame, (w - 40, h - 40), 18 + 6 * (i % 4), (80, 220, 120), -1)
            cv2.putText(frame, f"{i:03d}", (12, h - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
            writer.write(frame)
    finally:
        writer.release()
    return path


if __name__ == "__main__":
    out = write_demo_video(sys.argv[1] if len(sys.argv) > 1 else "demo.avi")
    print(f"wrote {out}")
