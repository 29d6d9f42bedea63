"""Calibration end to end, the one entry point: data set → fp32 pipeline → recording folder.

`calibrate_bundle(fp32_bundle, out, data)` is what `fusion-edge calibrate` and the quantized
export run: load and check the data set (reporting every skipped entry), hold out the
last pairs for the quality gate (the built-in set: its own `eval` split), run the fp32
pipeline over the rest and record; the held-out pairs are listed in the recording.
"""
from __future__ import annotations

import logging

from .dataset import builtin_set, load_calibration_set
from .record import Recordings, record_calibration
from .source import source_info

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 32
DEFAULT_HOLDOUT = 4
DEFAULT_MAX_MB = 2048.0


def calibrate_bundle(bundle_path, out, data=None, questions=None, samples: int = DEFAULT_SAMPLES,
                     holdout: int = DEFAULT_HOLDOUT, max_mb: float = DEFAULT_MAX_MB, dtype: str = "float16",
                     overwrite: bool = False, threads: int | None = None, progress: bool = True,
                     low_memory: bool | None = None, reuse: bool = False) -> Recordings:
    """Record the fp32 bundle's graph inputs over a data set (None = built in). low_memory:
    weights memory-mapped instead of prepacked (None: when they would not fit in RAM). An
    interrupted recording of the same inputs resumes (calibration/record.py); reuse: a complete
    one at `out` of the same inputs is returned as it is."""
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.memory import needs_low_memory
    from fusion_edge.runtime.option_types import check_float, check_int, check_threads
    from fusion_edge.runtime.pipeline import Pipeline
    check_int(samples, "--samples", 1)         # the command line's checks (calibration/cli.py), for the API
    check_int(holdout, "--holdout", 0)
    check_float(max_mb, "--max-mb", 0, low_open=True)
    check_threads(threads, "--threads")
    dataset = load_calibration_set(data, questions)
    if data is None:
        log.warning("notice: no calibration data given; using the built-in generated scenes and camera questions "
                    "(pass --data/--calib with your own images and questions for a better calibration)")
    log.info(dataset.summary())
    if data is None:       # the built-in set has its own held-out split (other scenes, other questions)
        items, held_out = dataset.items, builtin_set("eval", holdout).items if holdout > 0 else []
    else:
        items, held_out = dataset.split(holdout)
    if low_memory is None and needs_low_memory(Bundle.open(bundle_path, check_hashes=False).manifest):
        low_memory = True
        log.warning("notice: the fp32 bundle's weights do not fit in this machine's free memory; they stay "
                    "memory-mapped (low-memory sessions: slower, same results)")
    pipe = Pipeline.open(bundle_path, device="cpu", threads=threads, low_memory=bool(low_memory))
    info = {"kind": dataset.kind, "source": dataset.source, "pairs": len(dataset), "held_out": len(held_out),
            "skipped": [{"where": s.where, "reason": s.reason} for s in dataset.skipped]}
    rec = record_calibration(pipe, items, out, samples=samples, max_mb=max_mb, dtype=dtype,
                             source=source_info(bundle_path), dataset=info, held_out=held_out,
                             overwrite=overwrite, progress=progress, reuse=reuse)
    m = rec.manifest
    log.info(f"recorded {m['samples']} samples over {m['images']} images, {m['bytes'] / (1 << 20):.1f} MB, in {out}")
    return rec

