"""Record every graph's inputs while the fp32 pipeline answers the calibration pairs.

Layout of a recording folder (what `fusion-edge calibrate` writes, what the quantizers read):
```
calib/calibration.json          manifest: source checkpoint fingerprint, options, counts, bytes,
                                the data set and its skipped entries, the held-out pairs
calib/<graph>/<nnnnnn>.npz      one call's inputs, named as the graph's inputs
```
It is written in `.calib.partial-resumable/` beside it (flock-ed while recorded, with
`progress.json`: the pairs done, the counts, the inputs' key) and renamed when complete. A
recording that was interrupted — killed, Ctrl-C, a full disk — resumes there on the next run
with the same inputs (checkpoint fingerprint, query_len / image tokens, dtype, --max-mb, the
pairs and their image files: the key); a run with other inputs starts it anew.
Graphs: `vision_global` (4 global tiles, once per image), `vision_main` (main tile +
instruct embeddings), `align_00..` (one call per prefill each), `segment_00..` (the
prefill inputs: hidden (1,S,H), cos/sin (S,hd), empty past caches). Float arrays are
stored as float16 by default (half the bytes; the quantizers only need value ranges) —
an array that float16 cannot hold (|x| > 60000) stays float32. Only the prefill is run
(one new token), which is where every graph sees its full-length inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from fusion_edge import __version__
from fusion_edge.runtime.bundle import remove_stale
from fusion_edge.runtime.errors import FusionEdgeError, OutputError
from fusion_edge.runtime.outputs import (LOCKS, disk_full, existing_ancestor, hold_folder, is_disk_full,
                                         size_text, write_error)

from .dataset import CalibItem, CalibrationDataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

FORMAT = "fusion-edge-calibration"
FORMAT_VERSION = 1
MANIFEST = "calibration.json"
PROGRESS = "progress.json"
FP16_LIMIT = 60000.0
ELSEWHERE = "choose another -o folder"


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


def partial_folder(out: Path) -> Path:
    """Where the recording of `out` is made (and an interrupted one waits to be resumed)."""
    return out.parent / f".{out.name}.partial-resumable"


def record_calibration(pipe, items: list[CalibItem], out: str | Path, *, samples: int = 32,
                       max_mb: float = 2048.0, dtype: str = "float16", source: dict | None = None,
                       dataset: dict | None = None, held_out: list[CalibItem] | None = None,
                       overwrite: bool = False, progress: bool = True, reuse: bool = False) -> "Recordings":
    """Run `pipe` (an fp32 Pipeline) over up to `samples` items and write their graph inputs
    to `out` (atomically: `partial_folder(out)` renamed when complete; an interrupted recording of
    the same inputs resumes from its last sample). Stops early, with a notice, when the next
    sample would pass `max_mb`. Items whose question the prompt builder rejects are skipped and
    counted. reuse: a complete recording at `out` of the same inputs is returned as it is (the
    quantized export's work folder), one of other inputs replaced."""
    if dtype not in ("float16", "float32"):
        raise CalibrationDataError(f"unknown recording dtype {dtype!r}.", "use float16 or float32")
    if samples < 1:
        raise CalibrationDataError(f"--samples must be at least 1, got {samples}.", "pass a positive number")
    out = Path(out).resolve()
    chosen = _ordered(items[:samples])
    key = recording_key(source, pipe, dtype, max_mb, chosen)
    if out.exists():
        if reuse and _recorded_key(out) == key:
            log.info(f"calibration: reusing the recording in {out} (same checkpoint, options and pairs)")
            return Recordings.open(out)
        if not (overwrite or reuse):
            raise CalibrationDataError(f"{out} already exists.", "choose another -o folder, or pass --overwrite")
    tmp = partial_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)                   # `.partial-<pid>` folders of killed runs of earlier versions
        tmp.mkdir(exist_ok=True)
    except OSError as e:
        raise write_error(e, existing_ancestor(out.parent), "calibration recording", out, ELSEWHERE) from None
    lock = hold_folder(tmp)
    if lock is None and LOCKS:
        raise CalibrationDataError(f"another fusion-edge process is recording into {tmp}.",
                                   "wait for it to finish, or stop it; or record to another -o folder")
    state = _Progress()
    try:
        state = _resume(tmp, key, len(chosen))
        stop = _record_items(pipe, chosen, tmp, max_mb, dtype, progress, state)
        n = state.counts.get("vision_main", 0)
        if n == 0:
            raise CalibrationDataError("no calibration pair could be recorded: " +
                                       "; ".join(f"{w}: {r}" for w, r in state.skipped[:3]), "check the questions")
        if stop:
            log.warning(f"notice: recording stopped after {n} samples: the next one would pass --max-mb {max_mb:g}")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": source or {},
                    "options": {"query_len": pipe.default_query_len, "image_tokens": pipe.image_tokens},
                    "dtype": dtype, "samples": n, "images": state.counts.get("vision_global", 0),
                    "bytes": state.nbytes, "graphs": dict(sorted(state.counts.items())), "dataset": dataset or {},
                    "record_skipped": [{"where": w, "reason": r} for w, r in state.skipped],
                    "held_out": [_item_json(i) for i in (held_out or [])], "key": key}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / PROGRESS).unlink()
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException as e:
        n = state.counts.get("vision_main", 0)
        resumable = (isinstance(e, KeyboardInterrupt) or is_disk_full(e)) and n > 0
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e) and not isinstance(e, OutputError):
            kept = (f"The {n} samples recorded so far ({size_text(state.nbytes)}) are kept in {tmp}: the same "
                    "command resumes from them (delete that folder to start over)." if resumable
                    else "Nothing was kept.")
            more = int(state.nbytes / n * (len(chosen) - state.done)) if n else None      # at this pace
            raise disk_full(tmp.parent, "calibration recording", out, kept=kept, elsewhere=ELSEWHERE,
                            more=min(more, int(max_mb * (1 << 20))) if more else None) from None
        if resumable:
            log.warning(f"notice: the {n} samples recorded so far are kept in {tmp}; the same command resumes "
                        "from them")
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return Recordings.open(out)


def recording_key(source: dict | None, pipe, dtype: str, max_mb: float, items: list[CalibItem]) -> str:
    """What a recording is made of: the checkpoint (fingerprint), the pipeline's options, dtype,
    --max-mb and the pairs in order (an image file by path, size and modification time; an
    in-memory image by its pixels). A recording is resumed or reused only under the same key."""
    h = hashlib.sha256(json.dumps({
        "format_version": FORMAT_VERSION, "fusion_edge": __version__,
        "fingerprint": (source or {}).get("fingerprint"), "query_len": pipe.default_query_len,
        "image_tokens": pipe.image_tokens, "dtype": dtype, "max_mb": float(max_mb)}, sort_keys=True).encode())
    for item in items:
        h.update(json.dumps([item.key, item.question]).encode())
        if isinstance(item.image, (str, Path)):
            try:
                st = os.stat(item.image)
                h.update(f"{os.path.abspath(item.image)}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{item.image}|missing".encode())
        else:
            h.update(f"{item.image.mode}|{item.image.size}".encode())
            h.update(hashlib.sha256(item.image.tobytes()).digest())
    return h.hexdigest()


def _recorded_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class _Progress:
    """How far a recording got: items done (recorded or skipped), calls per graph, bytes, skips."""
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    key: str = ""

    def save(self, folder: Path) -> None:
        tmp = folder / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps({"key": self.key, "done": self.done, "counts": self.counts, "bytes": self.nbytes,
                                   "skipped": self.skipped}), encoding="utf-8")
        os.replace(tmp, folder / PROGRESS)


def _resume(folder: Path, key: str, total: int) -> _Progress:
    """The progress of an interrupted recording of the same inputs in `folder` (its files past
    the last complete sample removed), or a fresh start (anything else there removed)."""
    try:
        st = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
        ok = st["key"] == key and 0 <= int(st["done"]) <= total and all(
            len(list((folder / g).glob("*.npz"))) >= int(c) for g, c in st["counts"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        st, ok = None, False
    if not ok:
        leftovers = [p for p in folder.iterdir()]
        if leftovers:
            log.warning(f"notice: removed an interrupted calibration recording of other inputs from {folder}")
        for p in leftovers:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        state = _Progress(key=key)
        state.save(folder)
        return state
    state = _Progress(int(st["done"]), {g: int(c) for g, c in st["counts"].items()}, int(st["bytes"]),
                      [tuple(x) for x in st["skipped"]], key)
    for sub in folder.iterdir():              # files a killed run wrote after its last complete sample
        if sub.is_dir():
            for f in sub.glob("*.npz"):
                if not f.stem.isdigit() or int(f.stem) >= state.counts.get(sub.name, 0):
                    f.unlink()
    log.info(f"calibration: resuming the interrupted recording in {folder}: {state.done} of {total} pairs done, "
             f"{state.counts.get('vision_main', 0)} samples ({size_text(state.nbytes)}) kept")
    return state


def _ordered(items: list[CalibItem]) -> list[CalibItem]:
    """Group items by image (stable) so each image's global tiles are encoded once."""
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        first.setdefault(item.key, n)
    return sorted(items, key=lambda it: first[it.key])


def _record_items(pipe, items, folder: Path, max_mb: float, dtype: str, progress: bool, state: _Progress) -> bool:
    """Record items[state.done:], saving the progress after each; → whether --max-mb stopped it."""
    from tqdm import tqdm
    scene_key, scene = None, None
    limit = max_mb * (1 << 20)
    start = state.done
    bar = tqdm(total=len(items), initial=start, desc="calibrate", unit="pair", disable=not progress, leave=False)
    for i in range(start, len(items)):
        item = items[i]
        sample = _Sample(dtype)
        # resumed within one image's pairs: its global tiles were recorded with an earlier pair
        pipe.recorder = None if (i == start and i > 0 and items[i - 1].key == item.key) else sample
        keep = True
        try:
            if item.key != scene_key:
                scene, scene_key = pipe.look(item.image), item.key
            pipe.recorder = sample
            pipe.ask(scene, item.question, max_new_tokens=1)
        except FusionEdgeError as e:          # a question the prompt builder refuses, an image that fails
            state.skipped.append((f"{item.key} / {item.question[:40]!r}", e.problem))
            keep = any(name == "vision_global" for name, _ in sample.calls)
            sample.calls = [c for c in sample.calls if c[0] == "vision_global"]
        finally:
            pipe.recorder = None
        if keep:
            if state.nbytes + sample.nbytes > limit and state.counts:
                bar.close()
                return True
            state.nbytes += _write_sample(folder, sample, state.counts)
        state.done = i + 1
        state.save(folder)
        bar.update(1)
        bar.set_postfix(MB=f"{state.nbytes / (1 << 20):.0f}")
    bar.close()
    return False


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
    cases: list[tuple[Image.Image | Path, str]] = []
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
