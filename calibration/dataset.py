"""Calibration data sets: (image, question) pairs from a folder, a JSONL file or built in.

* Folder: every image file in it (sorted by name) plus a questions file, one question a
  line (`questions.txt` in the folder unless another file is given). Images and questions
  are paired round-robin: n = max(#images, #questions) pairs (image[i % I], question[i % Q]),
  so every image and every question is used.
* JSONL: one `{"image": "path", "question": "text"}` object a line; relative image paths
  are relative to the JSONL file's folder. Blank lines are ignored.
* Built in (no path given): generated scenes and typical camera questions (builtin.py).

Bad entries — a missing, empty or undecodable image, an empty question, a malformed JSON
line — are skipped and listed in `CalibrationSet.skipped` with where and why; the loader
never drops anything silently, and a set with no usable pair is a CalibrationDataError.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fusion_edge.runtime.errors import FusionEdgeError, ImageError
from fusion_edge.runtime.preprocess import load_image

from .builtin import builtin_pairs

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
QUESTIONS_FILE = "questions.txt"
FORMAT_HELP = ("a folder of images with questions.txt (one question a line), a .jsonl file of "
               '{"image": "path", "question": "text"} lines, or nothing for the built-in set')


class CalibrationDataError(FusionEdgeError):
    """A calibration data set or recording is missing, malformed, or has no usable entry."""


@dataclass(frozen=True)
class CalibItem:
    key: str          # identifies the image (path or built-in id): items with one key share a scene
    image: str | Path | Image.Image     # an image file or an in-memory PIL image
    question: str


@dataclass(frozen=True)
class Skipped:
    where: str        # "photo.jpg", "data.jsonl:7", "questions.txt:3"
    reason: str


@dataclass
class CalibrationSet:
    kind: str                                   # folder | jsonl | builtin
    source: str
    items: list[CalibItem]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self, show: int = 5) -> str:
        """One line of counts, then the first `show` skipped entries with their reasons."""
        images = len({i.key for i in self.items})
        lines = [f"calibration set ({self.kind}: {self.source}): {len(self.items)} pairs over {images} images"
                 + (f", {len(self.skipped)} bad entries skipped" if self.skipped else "")]
        lines += [f"  skipped {s.where}: {s.reason}" for s in self.skipped[:show]]
        if len(self.skipped) > show:
            lines.append(f"  … and {len(self.skipped) - show} more")
        return "\n".join(lines)

    def split(self, holdout: int) -> tuple[list[CalibItem], list[CalibItem]]:
        """(calibration items, held-out items): the last `holdout` items are held out when at
        least one item is left to calibrate on; otherwise nothing is held out."""
        if holdout <= 0 or len(self.items) <= holdout:
            return list(self.items), []
        return list(self.items[:-holdout]), list(self.items[-holdout:])


def load_calibration_set(path: str | Path | None = None, questions: str | Path | None = None) -> CalibrationSet:
    """A folder, a .jsonl file, or (None) the built-in set."""
    if path is None:
        return builtin_set()
    path = Path(path)
    if path.is_dir():
        return load_folder(path, questions)
    if path.is_file():
        if questions is not None:
            raise CalibrationDataError(f"--questions applies to an image folder, but {path} is a file.",
                                       "put the questions in the JSONL records, or pass a folder")
        return load_jsonl(path)
    raise CalibrationDataError(f"calibration data {path} does not exist.", "pass " + FORMAT_HELP)


def builtin_set(split: str = "calib", n: int | None = None) -> CalibrationSet:
    items = [CalibItem(key, img, q) for key, img, q in builtin_pairs(split, n)]
    return CalibrationSet("builtin", f"generated scenes ({split})", items)


def load_folder(folder: Path, questions: str | Path | None = None) -> CalibrationSet:
    qfile = Path(questions) if questions is not None else folder / QUESTIONS_FILE
    if not qfile.is_file():
        raise CalibrationDataError(f"no questions file for the image folder {folder} (looked for {qfile}).",
                                   f"write one question a line into {folder / QUESTIONS_FILE}, "
                                   "or pass --questions FILE")
    skipped: list[Skipped] = []
    qs = _read_questions(qfile, skipped)
    images = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.resolve() == qfile.resolve() or f.is_dir():
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(Skipped(f.name, f"not an image file type ({f.suffix or 'no suffix'})"))
            continue
        problem = _image_problem(f)
        if problem:
            skipped.append(Skipped(f.name, problem))
        else:
            images.append(f)
    _require(images, f"no readable image in {folder}", skipped)
    _require(qs, f"no non-empty question in {qfile}", skipped)
    n = max(len(images), len(qs))
    items = [CalibItem(str(images[i % len(images)]), images[i % len(images)], qs[i % len(qs)]) for i in range(n)]
    return CalibrationSet("folder", str(folder), items, skipped)


def load_jsonl(path: Path) -> CalibrationSet:
    skipped: list[Skipped] = []
    items: list[CalibItem] = []
    checked: dict[Path, str | None] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CalibrationDataError(f"{path} is not UTF-8 text ({e}).", "pass " + FORMAT_HELP) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        record, problem = _parse_record(line)
        if problem is not None:
            skipped.append(Skipped(where, problem))
            continue
        assert record is not None                   # _parse_record gives a record or a problem
        image = Path(record["image"])
        image = image if image.is_absolute() else path.parent / image
        if image not in checked:
            checked[image] = _image_problem(image)
        image_problem = checked[image]
        if image_problem:
            skipped.append(Skipped(where, image_problem))
            continue
        items.append(CalibItem(str(image), image, record["question"]))
    _require(items, f"no usable record in {path}", skipped)
    return CalibrationSet("jsonl", str(path), items, skipped)


def _parse_record(line: str) -> tuple[dict | None, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    for key in ("image", "question"):
        if key not in record:
            return None, f"no '{key}' field"
        if not isinstance(record[key], str):
            return None, f"'{key}' is not a string"
    if not record["question"].strip():
        return None, "empty question"
    if not record["image"].strip():
        return None, "empty image path"
    return record, None


def _read_questions(qfile: Path, skipped: list[Skipped]) -> list[str]:
    lines = qfile.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()                     # blank lines at the end of the file are not entries
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            out.append(line.strip())
        else:
            skipped.append(Skipped(f"{qfile.name}:{n}", "empty question"))
    return out


def _image_problem(path: Path) -> str | None:
    """None if the image decodes, else why not (missing, empty, corrupt)."""
    try:
        load_image(path)
    except ImageError as e:
        return e.problem
    return None


def _require(items: list, what: str, skipped: list[Skipped]) -> None:
    if items:
        return
    detail = "; ".join(f"{s.where}: {s.reason}" for s in skipped[:3])
    raise CalibrationDataError(what + (f" ({len(skipped)} bad entries, e.g. {detail})" if skipped else "") + ".",
                               "pass " + FORMAT_HELP)
