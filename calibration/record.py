"""Record every graph's inputs while the fp32 pipeline answers the calibration pairs.

Layout of a recording folder (what `fusion-edge calibrate` writes, what the quantizers read):
```
calib/calibration.json          manifest: source checkpoint fingerprint, options, counts, bytes,
                                the data set and its skipped entries, the held-out pairs
calib/<graph>/<nnnnnn>.npz      one call's inputs, named as the graph's inputs
```
Graphs: `vision_global` (4 global tiles, once per image), `vision_main` (main tile +
instruct embeddings), `align_00..` (one call per prefill each), `segment_00..` (the
prefill inputs: hidden (1,S,H), cos/sin (S,hd), empty past caches). Float arrays are
stored as float16 by default (half the bytes; the quantizers only need value ranges) —
an array that float16 cannot hold (|x| > 60000) stays float32. Only the prefill is run
(one new token), which is where every graph sees its full-length inputs.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from fusion_edge.runtime.errors import FusionEdgeError

from .dataset import CalibItem, CalibrationDataError

FORMAT = "fusion-edge-calibration"
FORMAT_VERSION = 1
MANIFEST = "calibration.json"
FP16_LIMIT = 60000.0


def _compact(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16" and a.dtype == np.float32 and (a.size == 0 or float(np.max(np.abs(a))) < FP16_LIMIT):
        return a.astype(np.float16)
    return a


class _Sample:
    """Collects one pair's graph inputs from `pipe.recorder` (name → inputs dict)."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, name: str, inputs: dict) -> None:
        self.calls.append((name, {k: _compact(np.asarray(v), self.dtype) for k, v in inputs.items()}))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, d in self.calls for a in d.values())


def record_calibration(pipe, items: list[CalibItem], out: str | Path, *, samples: int = 32,
                       max_mb: float = 2048.0, dtype: str = "float16", source: dict | None = None,
                       dataset: dict | None = None, held_out: list[CalibItem] | None = None,
                       overwrite: bool = False, progress: bool = True, log=print) -> "Recordings":
    """Run `pipe` (an fp32 Pipeline) over up to `samples` items and write their graph inputs
    to `out` (atomically: a `.partial` folder renamed when complete). Stops early, with a
    notice, when the next sample would pass `max_mb`. Items whose question the prompt
    builder rejects are skipped and counted."""
    if dtype not in ("float16", "float32"):
        raise CalibrationDataError(f"unknown recording dtype {dtype!r}.", "use float16 or float32")
    if samples < 1:
        raise CalibrationDataError(f"--samples must be at least 1, got {samples}.", "pass a positive number")
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise CalibrationDataError(f"{out} already exists.", "choose another -o folder, or pass --overwrite")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        counts, nbytes, skipped, stop = _record_items(pipe, _ordered(items[:samples]), tmp, max_mb, dtype,
                                                      progress)
        n = counts.get("vision_main", 0)
        if n == 0:
            raise CalibrationDataError("no calibration pair could be recorded: " +
                                       "; ".join(f"{w}: {r}" for w, r in skipped[:3]), "check the questions")
        if stop:
            log(f"notice: recording stopped after {n} samples: the next one would pass --max-mb {max_mb:g}")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": source or {},
                    "options": {"query_len": pipe.default_query_len, "image_tokens": pipe.image_tokens},
                    "dtype": dtype, "samples": n, "images": counts.get("vision_global", 0), "bytes": nbytes,
                    "graphs": dict(sorted(counts.items())), "dataset": dataset or {},
                    "record_skipped": [{"where": w, "reason": r} for w, r in skipped],
                    "held_out": [_item_json(i) for i in (held_out or [])]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Recordings.open(out)


def _ordered(items: list[CalibItem]) -> list[CalibItem]:
    """Group items by image (stable) so each image's global tiles are encoded once."""
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        first.setdefault(item.key, n)
    return sorted(items, key=lambda it: first[it.key])


def _record_items(pipe, items, folder: Path, max_mb: float, dtype: str, progress: bool):
    from tqdm import tqdm
    counts: dict[str, int] = {}
    nbytes, skipped, scene_key, scene, stop = 0, [], None, None, False
    limit = max_mb * (1 << 20)
    bar = tqdm(items, desc="calibrate", unit="pair", disable=not progress, leave=False)
    for item in bar:
        sample = _Sample(dtype)
        pipe.recorder = sample
        try:
            if item.key != scene_key:
                scene, scene_key = pipe.look(item.image), item.key
            pipe.ask(scene, item.question, max_new_tokens=1)
        except FusionEdgeError as e:          # a question the prompt builder refuses, an image that fails
            skipped.append((f"{item.key} / {item.question[:40]!r}", e.problem))
            if not any(name == "vision_global" for name, _ in sample.calls):
                continue
            sample.calls = [c for c in sample.calls if c[0] == "vision_global"]
        finally:
            pipe.recorder = None
        if nbytes + sample.nbytes > limit and counts:
            stop = True
            break
        nbytes += _write_sample(folder, sample, counts)
        bar.set_postfix(MB=f"{nbytes / (1 << 20):.0f}")
    bar.close()
    return counts, nbytes, skipped, stop


def _write_sample(folder: Path, sample: _Sample, counts: dict[str, int]) -> int:
    total = 0
    for name, inputs in sample.calls:
        n = counts.get(name, 0)
        path = folder / name / f"{n:06d}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, **inputs)
        counts[name] = n + 1
        total += path.stat().st_size
    return total


def held_out_cases(entries: list[dict]) -> tuple[list[tuple], int]:
    """A recording's held-out entries → ((image, question) cases, how many are gone)."""
    from .builtin import builtin_image
    cases = []
    for e in entries:
        if "builtin" in e:
            cases.append((builtin_image(e["builtin"]), e["question"]))
        elif Path(e.get("image", "")).is_file():
            cases.append((Path(e["image"]), e["question"]))
    return cases, len(entries) - len(cases)


def _item_json(item: CalibItem) -> dict:
    if isinstance(item.image, (str, Path)):
        return {"image": str(item.image), "question": item.question}
    return {"builtin": item.key, "question": item.question}


@dataclass
class Recordings:
    """A recording folder: read back per graph, float16 restored to float32."""
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "Recordings":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise CalibrationDataError(f"{path} is not a calibration recording (no {MANIFEST}).",
                                       "record one: fusion-edge calibrate MODEL --data DATA -o " + str(path))
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CalibrationDataError(f"{mpath} is not valid JSON ({e}).", "record the calibration again") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise CalibrationDataError(f"{path} was recorded by another fusion-edge version.",
                                       "record the calibration again with this version")
        return cls(path, manifest)

    @staticmethod
    def is_recording(path: str | Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @property
    def graphs(self) -> dict[str, int]:
        return self.manifest["graphs"]

    def count(self, graph: str) -> int:
        return int(self.graphs.get(graph, 0))

    def samples(self, graph: str) -> Iterator[dict[str, np.ndarray]]:
        """Each recorded call's inputs for `graph`, float arrays as float32."""
        for n in range(self.count(graph)):
            path = self.path / graph / f"{n:06d}.npz"
            if not path.is_file():
                raise CalibrationDataError(f"recording file {path} is missing.", "record the calibration again")
            with np.load(path) as z:
                yield {k: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files}

    def check_source(self, fingerprint: str) -> None:
        have = self.manifest.get("source", {}).get("fingerprint")
        if have and have != fingerprint:
            raise CalibrationDataError(
                f"the calibration recording {self.path} was made with another checkpoint "
                f"(fingerprint {have[:12]}…, this one {fingerprint[:12]}…).",
                "record it again with this model: fusion-edge calibrate MODEL --data DATA -o DIR")
