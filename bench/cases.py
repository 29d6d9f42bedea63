"""The benchmark's inputs: generated scenes (JPEG files, so decoding is timed like a real
photo) and questions. Every backend worker reads the same files and asks the same
questions, in the same order. Numpy + Pillow only: no backend's import cost leaks in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

QUESTIONS = ("What is on the table?", "How many red objects are there?",
             "Describe the scene in one sentence.", "What colour is the largest shape?",
             "Is there any text in the picture?")
# Camera-like sizes and one odd aspect ratio: preprocessing cost depends on the input size.
SIZES = ((1280, 720), (640, 480), (1024, 256), (800, 800))
MAX_CASES = 1000            # --cases: the images are written before any measurement


def scene(index: int) -> Image.Image:
    """A deterministic scene of shapes for case `index`."""
    w, h = SIZES[index % len(SIZES)]
    rng = np.random.default_rng(1000 + index)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = int(rng.integers(x0 + 4, w)), int(rng.integers(y0 + 4, h))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


def write_images(folder: Path, cases: int) -> list[Path]:
    """`cases` JPEG files in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cases):
        p = folder / f"case_{i:02d}.jpg"
        scene(i).save(p, quality=90)
        paths.append(p)
    return paths


def questions_for(case: int, per_image: int) -> list[str]:
    """The questions asked about image `case`: the first is asked on a fresh image, the
    rest are follow-ups on its cached scene."""
    return [QUESTIONS[(case * per_image + j) % len(QUESTIONS)] for j in range(per_image)]
