"""The built-in calibration set: generated scenes and typical camera questions, no files.

Two disjoint splits: `calib` (what the quantizers see) and `eval` (held-out cases for the
quality gate). Scenes are drawn from seeds, so the set is the same on every machine and
needs no download; they are crude (flat shapes, stripes, text-like marks) but exercise
the vision encoder over colours, edges and layouts, and the questions cover what a robot
or camera user asks. Calibrate on your own images and questions when you can.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CALIB_QUESTIONS = (
    "What is on the table?", "How many people are in the image?", "Is the door open or closed?",
    "What color is the car?", "Describe the scene in one sentence.", "Is there anything blocking the path?",
    "What is the person holding?", "Where is the nearest chair?", "Is it day or night?",
    "Are there any animals?", "What objects are on the floor?", "Is the light on?",
    "How many boxes are stacked?", "What is written on the sign?", "Is the shelf empty?",
    "Which object is closest to the camera?", "Is there a cup on the desk?", "What is the weather like?",
    "Are the lights green or red?", "Is anyone sitting down?", "What is in the top left corner?",
    "Is the floor wet?", "What shape is the red object?", "Count the yellow items.",
    "Is there a laptop in the room?", "What is the largest object?", "Is the window open?",
    "Is there smoke or fire?", "What is behind the box?", "Is the parking spot free?",
    "What tool is on the bench?", "Is the package damaged?", "Describe the colors you see.",
    "Is a person wearing a helmet?", "What is the robot doing?", "Is the bin full?",
)
EVAL_QUESTIONS = (
    "What do you see?", "Is there a person near the door?", "How many red objects are there?",
    "What is the main color of the background?", "Is there text in the image?",
    "What is on the left side?", "Is the road clear?", "What is next to the yellow shape?",
)
CALIB_SEED, EVAL_SEED = 0, 10_000
EVAL_PAIRS = len(EVAL_QUESTIONS)     # 4 scenes, questions cycling over them: 8 distinct held-out pairs
SIZES = ((640, 480), (480, 640), (1024, 256), (384, 384), (1280, 720), (300, 500))


def scene(seed: int) -> Image.Image:
    """One generated scene: background gradient, a floor line, boxes, discs and marks."""
    rng = np.random.default_rng(seed)
    w, h = SIZES[seed % len(SIZES)]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    grad = (top * (1 - t) + bottom * t).astype(np.uint8)                     # (h, 1, 3)
    img = Image.fromarray(np.repeat(grad, w, axis=1), "RGB")
    d = ImageDraw.Draw(img)
    floor = int(h * rng.uniform(0.55, 0.85))
    d.rectangle((0, floor, w, h), fill=_colour(rng))
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = min(w, x0 + int(rng.integers(8, w // 2))), min(h, y0 + int(rng.integers(8, h // 2)))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)((x0, y0, x1, y1), fill=_colour(rng))
    for _ in range(int(rng.integers(0, 4))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.line((x, y, int(rng.integers(0, w)), int(rng.integers(0, h))), fill=_colour(rng),
               width=int(rng.integers(1, 8)))
    if rng.random() < 0.5:
        x, y = int(rng.integers(0, max(1, w - 80))), int(rng.integers(0, max(1, h - 20)))
        d.text((x, y), "EXIT 42" if rng.random() < 0.5 else "STOP", fill=_colour(rng))
    return img


def _colour(rng) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def builtin_pairs(split: str = "calib", n: int | None = None) -> list[tuple[str, Image.Image, str]]:
    """(image key, image, question) for the `calib` or `eval` split; questions cycle over
    the images so every question is asked, each image with several questions. The `eval` split
    (held-out cases of quality gates) has EVAL_PAIRS distinct pairs: a larger n gives those,
    none repeated."""
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    questions = CALIB_QUESTIONS if split == "calib" else EVAL_QUESTIONS
    seed0 = CALIB_SEED if split == "calib" else EVAL_SEED
    n = len(questions) if n is None else n if split == "calib" else min(n, EVAL_PAIRS)
    n_images = max(1, min(n, 12 if split == "calib" else 4))
    images = {}
    out = []
    for i in range(n):
        k = i % n_images
        if k not in images:
            images[k] = scene(seed0 + k)
        out.append((f"builtin:{split}:{k}", images[k], questions[i % len(questions)]))
    return out


def builtin_image(key: str) -> Image.Image:
    """The scene of a built-in key `builtin:<split>:<k>` (as builtin_pairs names them)."""
    _, split, k = key.split(":")
    return scene((CALIB_SEED if split == "calib" else EVAL_SEED) + int(k))
