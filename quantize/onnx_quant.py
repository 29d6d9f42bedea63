"""`fusion-export MODEL --target onnx --precision int8|int4`: quantized ONNX bundles.

Steps: fp32 bundle (given, or exported from the checkpoint by fusion_edge/targets.py) → precision
plan for the hardware (`--for cpu|cuda|trt`, `--sm`) → calibration recording (the one
given with `--calib DIR`, or recorded now from `--calib DATA` or the built-in set) →
quantize every graph in the export sequence (runtime/bundle.py write_bundle; vision +
alignment: int8 W8A8 Q/DQ; embed: int8 rows; LLM segments: int8 W8A8 or int4 weight-only)
→ manifest → agreement with the fp32 pipeline on held-out cases → gate → rename into place.
A failed gate (without --force) or any error leaves no bundle.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from fusion_edge.calibration.builtin import builtin_pairs
from fusion_edge.calibration.calibrate import calibrate_bundle
from fusion_edge.calibration.record import Recordings, held_out_cases
from fusion_edge.calibration.source import check_fp32_bundle
from fusion_edge.runtime.bundle import Bundle, write_bundle
from fusion_edge.runtime.errors import ExportError

from . import agreement
from .bundle_quant import QuantOptions, write_quantized
from .planner import Plan, plan

log = logging.getLogger(__name__)

FLAVOURS = {"cpu": "onnxruntime-cpu", "cuda": "onnxruntime-cuda", "trt": "tensorrt"}
DEFAULT_CALIB_SAMPLES = 32
DEFAULT_EVAL_CASES = 4


def export_quantized_bundle(fp32: str | Path, out, target: str = "onnx", precision: str = "int8",
                            query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                            verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True,
                            *, calib=None, calib_samples: int = DEFAULT_CALIB_SAMPLES,
                            calib_questions=None, flavour: str = "cpu", sm=None, block_size: int = 32,
                            accuracy_level: int | None = 4, keep_float=(), eval_cases: int = DEFAULT_EVAL_CASES,
                            thresholds: dict | None = None, threads: int | None = None, reference=None,
                            manifest_extend=None, vision_precision: str | None = None, **extra) -> Path:
    """fp32 ONNX bundle → quantized, gated ONNX bundle at `out` (a checkpoint is exported to
    fp32 first by fusion_edge/targets.py). reference: (pipe, image, question, steps) →
    (layout, tokens, logits), the PyTorch reference's side of the gate (targets.py builds it).
    target "trt": the same TensorRT-flavoured graphs (--for trt) in a trt bundle;
    manifest_extend(fields) → fields adds its sections. vision_precision: a name of
    runtime/precisions.py VISION_PRECISIONS — None / "int8": as planned (dynamic int8 for --for cpu, static
    Q/DQ for cuda/trt), "int8-dynamic", "int8-static", or "fp32": the vision graph stays fp32
    (copied), the rest as planned (the LLM-only comparison with gguf bundles, whose vision is
    fp32 too). An unknown name is a PrecisionNotSupportedError listing the supported ones."""
    the_plan = checked_plan(target, precision, flavour, sm, vision_precision, extra)
    src = check_fp32_bundle(fp32, query_len, image_tokens)
    with tempfile.TemporaryDirectory(prefix="fusion-edge-calib-") as tmp:
        rec, cases = prepare_calibration(src, calib, Path(tmp) / "calib", calib_samples, calib_questions,
                                         eval_cases, threads, progress)
        opts = QuantOptions(block_size, accuracy_level, tuple(keep_float or ()))
        return quantize_bundle(src, out, the_plan, rec, cases, opts, verify=verify, force=force, steps=steps,
                               thresholds=thresholds, overwrite=overwrite, threads=threads,
                               progress=progress, reference=reference, target=target,
                               manifest_extend=manifest_extend)


def checked_plan(target: str, precision: str, flavour: str, sm, vision_precision: str | None,
                 extra: dict) -> Plan:
    """The options of a quantized ONNX export checked (ExportError naming the wrong one) → its
    precision plan, logged (also the streamed export's: fusion_edge/streamed.py)."""
    if extra:
        raise ExportError(f"unknown option(s) for the quantized ONNX export: {', '.join(sorted(extra))}.",
                          "see fusion-export --help")
    if target not in ("onnx", "trt") or precision not in ("int8", "int4"):
        raise ExportError(f"this exporter writes onnx and trt int8/int4 bundles, not {target}/{precision}.",
                          "use --target onnx|trt --precision int8|int4")
    if target == "trt" and flavour != "trt":
        raise ExportError(f"a trt bundle holds TensorRT-flavoured graphs, not --for {flavour}.",
                          "drop --for (trt bundles use --for trt)")
    if flavour not in FLAVOURS:
        raise ExportError(f"unknown --for {flavour!r}.", f"choose one of: {', '.join(FLAVOURS)}")
    the_plan = plan(FLAVOURS[flavour], precision, sm).with_vision(vision_precision)
    log.info(the_plan.explain())
    return the_plan


# ---- calibration ---------------------------------------------------------------------------
def prepare_calibration(src: Path, calib, tmp: Path, samples: int, questions, eval_cases: int,
                        threads: int | None, progress: bool) -> tuple[Recordings, list[tuple]]:
    """(recordings, held-out (image, question) cases) from a recording folder, or recorded now
    (calibration's one entry point) from a data set or (None) the built-in set."""
    if calib is not None and Recordings.is_recording(calib):
        return recorded_calibration(calib, eval_cases)
    rec = calibrate_bundle(src, tmp, calib, questions, samples=samples, holdout=eval_cases, threads=threads,
                           progress=progress)
    return rec, _held_out_cases(rec.manifest.get("held_out", []), eval_cases)


def recorded_calibration(calib, eval_cases: int) -> tuple[Recordings, list[tuple]]:
    """A complete recording folder → (its recordings, up to `eval_cases` of its held-out cases)."""
    rec = Recordings.open(calib)
    log.info(f"calibration: recording {calib} ({rec.manifest['samples']} samples)")
    return rec, _held_out_cases(rec.manifest.get("held_out", []), eval_cases)


def _held_out_cases(entries: list[dict], n: int) -> list[tuple]:
    cases, gone = held_out_cases(entries)
    if gone:
        log.warning(f"notice: {gone} held-out images of the recording are gone")
    if not cases:
        cases = [(img, q) for _, img, q in builtin_pairs("eval", n)]
        log.warning(f"notice: no held-out pairs of the calibration data; the gate uses {len(cases)} built-in cases")
    return cases[:n]


# ---- quantization ----------------------------------------------------------------------------
def quantize_bundle(src_path, out, the_plan: Plan, rec: Recordings, cases: list[tuple],
                    opts: QuantOptions = QuantOptions(), *, verify: bool = True, force: bool = False,
                    steps: int = 16, thresholds: dict | None = None, overwrite: bool = False,
                    threads: int | None = None, progress: bool = True, reference=None,
                    target: str = "onnx", manifest_extend=None) -> Path:
    """fp32 bundle + plan + recordings → quantized bundle at `out` (gated unless verify=False)."""
    src = Bundle.open(src_path)
    rec.check_source(src.manifest["source"]["fingerprint"])

    def gate(folder: Path) -> dict:
        return gate_folder(folder, src.path, the_plan.precision, cases, steps, thresholds, force, threads,
                           progress, reference)

    def fill(writer) -> dict:
        fields = {**write_quantized(src, writer, the_plan, rec, opts, progress, force=force, gate_twin=verify),
                  "target": target}
        return manifest_extend(fields) if manifest_extend else fields
    return write_bundle(out, fill, gate if verify else None, overwrite)


# ---- the gate ----------------------------------------------------------------------------------
FIX = ("calibrate on images and questions like yours (--calib DATA), try int8 instead of int4 or a smaller "
       "--block-size; --force keeps the bundle anyway")


def gate_folder(folder: Path, fp32_path: Path | None, precision: str, cases: list[tuple], steps: int,
                thresholds: dict | None, force: bool, threads: int | None, progress: bool,
                reference=None) -> dict:
    """Measure the quantized folder against the fp32 bundle (fp32_path None: the streamed export
    keeps none) and the PyTorch reference, when given; raise below the gate unless forced
    (quantize/agreement.py gate_folder)."""
    return agreement.gate_folder(folder, fp32_path, precision, cases, steps, thresholds, force, threads, progress,
                                 reference, FIX)
