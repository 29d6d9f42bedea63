"""The work of a long export around its output folder (faults during long work).

* Before anything runs: the output does not exist (or --overwrite), can be made (not on a
  read-only disk, not under a file) and its disk has at least a lower bound of the bytes the
  export writes free (`check_export_output`, runtime/outputs.py).
* `.<out>.work/` beside the output holds the intermediate results of a quantized export (and
  of `calibrate` from a checkpoint) until the output is in place: the temporary fp32 bundle
  (`fp32/`) and the calibration recording (`calib/`, recorded in `.calib.partial-resumable/`).
  An interrupted run (SIGKILL, Ctrl-C, a full disk) leaves them; the same command reuses the
  fp32 bundle when it is what the export would write now (`reusable_fp32`: same checkpoint
  fingerprint, options, fusion-edge version, verified when asked) and resumes the recording
  when its inputs are the same (calibration/record.py); anything else starts them anew. A
  finished run, or one that failed in a way a re-run would repeat, removes the folder.
"""
from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from fusion_edge.runtime.errors import BundleError, FusionEdgeError
from fusion_edge.runtime.precisions import PRECISIONS
from fusion_edge.runtime.outputs import check_output, hold_folder, is_disk_full, size_text, tree_bytes

log = logging.getLogger(__name__)

BYTES_PER_WEIGHT = {**{name: p.bytes_per_weight for name, p in PRECISIONS.items()},
                    "F32": 4.0, "F16": 2.0, "Q8_0": 1.0, "Q4_0": 0.5, "Q4_K_M": 0.5}    # + --gguf-quant
LOWER_BOUND = 0.9       # of params × bytes per weight: graphs, scales and tokenizer only add to it


def check_export_output(model, out, target: str, precision: str, overwrite: bool = False,
                        verify: bool = True, quant: str | None = None, fp32_from=None,
                        streamed: bool = False) -> int | None:
    """Before any long work: `out` does not exist (or --overwrite), can be made (not read-only,
    not under a file) and its disk has at least the bytes `needed_bytes` → that figure."""
    if Path(out).exists() and not overwrite:
        raise BundleError(f"{Path(out).resolve()} already exists.", "choose another -o folder, or pass --overwrite")
    check_output(out, "bundle")
    need = needed_bytes(model, target, precision, verify, quant, fp32_from, streamed)
    if need:
        check_output(out, "bundle", need)
    return need


def check_calibration_output(model, out: Path, overwrite: bool = False) -> int | None:
    """`fusion-edge calibrate`'s output, checked as an export's (a checkpoint is exported to a
    temporary fp32 bundle in the work folder first: its bytes are the figure) → that figure."""
    from fusion_edge.calibration.dataset import CalibrationDataError
    from fusion_edge.calibration.source import is_bundle
    if out.exists() and not overwrite:
        raise CalibrationDataError(f"{out.resolve()} already exists.", "choose another -o folder, or pass --overwrite")
    check_output(out, "calibration recording")
    need = None if is_bundle(model) else needed_bytes(model, "onnx", "fp32")
    if need:
        check_output(out, "calibration recording", need)
    return need


def needed_bytes(model, target: str, precision: str, verify: bool = True, quant: str | None = None,
                 fp32_from=None, streamed: bool = False) -> int | None:
    """A lower bound of the bytes an export writes beside `out`: its weights at the precision's
    (or gguf `quant` type's) width (× LOWER_BOUND), plus the temporary fp32 bundle in the work
    folder when a checkpoint is quantized without an fp32 bundle given (`fp32_from`; the
    calibration recording comes on top: up to --max-mb) — not when the export is `streamed`
    (fusion_edge/streamed.py: one fp32 graph at a time, on top of the bound). None: not known here."""
    from fusion_edge.calibration.source import is_bundle
    if is_bundle(model):
        from fusion_edge.runtime.bundle import Bundle
        try:
            src = Bundle.open(model, check_hashes=False)
        except FusionEdgeError:
            return None                     # the exporter names what is wrong with it
        params = sum(int(f["bytes"]) for f in src.manifest.files.values()) / BYTES_PER_WEIGHT.get(src.precision, 4.0)
        fp32_work = 0.0
    else:
        import numpy as np

        from fusion_edge.export.checkpoint import open_checkpoint
        ckpt = open_checkpoint(model)
        params = float(sum(int(np.prod(e.shape)) for e in ckpt.entries))
        quantized = (PRECISIONS[precision].quantized if target != "gguf"
                     else (quant or precision) not in ("fp32", "F32") and verify)     # targets.export_gguf
        fp32_work = params * BYTES_PER_WEIGHT["fp32"] if quantized and fp32_from is None and not streamed else 0.0
    width = BYTES_PER_WEIGHT.get(quant or precision, BYTES_PER_WEIGHT["int4"])
    return int(LOWER_BOUND * (params * width + fp32_work))


def work_folder(out) -> Path:
    """`.<out>.work/` beside `out`: the intermediate results of the export of `out`."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.work"


@contextmanager
def work_area(out):
    """Hold the work folder of `out` (flock: one export of `out` at a time) → its path. Removed
    when the work succeeds or fails in a way that re-running would repeat; kept when the run is
    interrupted (Ctrl-C; a SIGKILL leaves it anyway) or the disk fills, for the same command to
    resume from."""
    work = work_folder(out)
    work.mkdir(parents=True, exist_ok=True)
    lock = hold_folder(work)
    if lock is None and os.name != "nt":
        raise BundleError(f"another fusion-edge process is exporting {Path(out).resolve()} (its work folder {work} "
                          "is in use).", "wait for it to finish, or choose another -o folder")
    try:
        yield work
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or is_disk_full(e):
            if kept_note(out):
                log.warning(f"notice: {kept_note(out)}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if lock is not None:
            os.close(lock)


def kept_note(out) -> str:
    """What an interrupted export of `out` left for the next run, in words ("" when nothing)."""
    work = work_folder(out)
    if not work.is_dir() or not any(work.iterdir()):
        shutil.rmtree(work, ignore_errors=True)
        return ""
    return (f"The work folder {work} ({size_text(tree_bytes(work))}: the fp32 bundle and the calibration recorded "
            "so far) is kept: the same command resumes from it (delete it to free the space and start over).")


def reusable_fp32(dest: Path, model: str, query_len: int | None, image_tokens: int | None, verified: bool) -> bool:
    """Whether `dest` holds an fp32 ONNX bundle that an export of `model` with these options would
    write now: intact, from the same checkpoint (fingerprint), options and fusion-edge version,
    verified when that is asked for."""
    from fusion_edge import __version__
    from fusion_edge.calibration.source import is_bundle
    from fusion_edge.runtime.bundle import Bundle
    if not is_bundle(dest):
        return False
    from fusion_edge.export.bundle_export import export_options
    from fusion_edge.export.checkpoint import open_checkpoint
    try:
        bundle = Bundle.open(dest)
        ckpt = open_checkpoint(model)
        bundle.check_source(ckpt.fingerprint)
        q, n_img = export_options(ckpt, query_len, image_tokens)
        same = ((bundle.target, bundle.precision) == ("onnx", "fp32") and int(bundle.options["query_len"]) == q
                and int(bundle.options["image_tokens"]) == n_img
                and bundle.manifest.get("build", {}).get("fusion_edge") == __version__
                and (bundle.verification_status == "passed" or not verified))
    except (FusionEdgeError, KeyError, TypeError, ValueError):
        same = False
    if same:
        log.info(f"reusing the fp32 ONNX bundle an interrupted run left in {dest}")
    else:
        log.warning(f"notice: the fp32 bundle in {dest} is not one this export would write (other checkpoint, "
                    "options or version); exporting it again")
    return same


def record_in(work: Path, src: Path, kw: dict, progress: bool) -> str:
    """The calibration of a quantized export: a recording folder given with --calib as it is;
    else recorded (from --calib DATA or the built-in set) into the work folder, where an
    interrupted recording of the same inputs resumes and a complete one is reused."""
    from fusion_edge.calibration.calibrate import calibrate_bundle
    from fusion_edge.calibration.record import Recordings
    from fusion_edge.quantize.onnx_quant import DEFAULT_CALIB_SAMPLES, DEFAULT_EVAL_CASES
    calib = kw.get("calib")
    if calib is not None and Recordings.is_recording(calib):
        return calib
    rec = calibrate_bundle(src, work / "calib", calib, kw.get("calib_questions"),
                           samples=kw.get("calib_samples", DEFAULT_CALIB_SAMPLES),
                           holdout=kw.get("eval_cases", DEFAULT_EVAL_CASES), threads=kw.get("threads"),
                           progress=progress, reuse=True)
    return str(rec.path)
