"""Export targets: (target, precision) → the exporter that writes the bundle.

This is the one place that composes the packages (docs/architecture.md: export, quantize and
calibration depend on the runtime only, never on each other's entry points): a quantized
ONNX bundle is an fp32 ONNX export (export/) → calibration recording (calibration/) →
quantized graphs and the gate (quantize/). Every exporter writes through the one export
sequence, runtime/bundle.py `write_bundle`. A new target is one TARGETS entry plus its module.

Faults during the long work: the output is checked before anything runs (exists,
writable, a disk with at least the weights' bytes free: runtime/outputs.py); a full disk is a
DiskFullError. The intermediate results of a quantized export (and of `calibrate` from a
checkpoint) — the fp32 bundle, the calibration recording — live in `.<out>.work/` beside the
output until it is in place: an interrupted run (killed, Ctrl-C, a full disk) leaves them there
and the same command reuses the fp32 bundle (same checkpoint, options, version) and resumes the
recording (same inputs); other inputs start them anew.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_edge.runtime.errors import ExportError, FusionEdgeError, missing_module_error
from fusion_edge.runtime.outputs import output_faults
from fusion_edge.runtime.precisions import PRECISIONS, precision_names

from .workspace import (check_calibration_output, check_export_output, kept_note, record_in, reusable_fp32,
                        work_area)

log = logging.getLogger(__name__)


@contextmanager
def _importing(what: str):
    """Around a step's lazy import: a missing package is a typed error naming the extra that installs it."""
    try:
        yield
    except ModuleNotFoundError as e:
        raise missing_module_error(e, f"the {what} exporter", "export") from None


def export_onnx(model, out, **kw) -> Path:
    with _importing("onnx"):
        from fusion_edge.export.bundle_export import export_bundle
    return export_bundle(model, out, **kw)


GGUF_FIX = ("try a wider type (Q4_K_M → Q8_0 → F16), or re-export the fp32 bundle it is compared with; "
            "--force keeps the bundle anyway")


def export_gguf(model, out, *, query_len=None, image_tokens=None, progress: bool = True, fp32_from=None,
                eval_cases: int = 4, **kw) -> Path:
    """A gguf bundle; a quantized one (F16, Q8_0, Q4_*) is gated against a verified fp32 ONNX
    pipeline (`fp32_from`, or a temporary verified export of the checkpoint, whose vision
    graphs it then reuses) and the PyTorch reference, on `eval_cases` built-in held-out cases."""
    with _importing("gguf"):
        from fusion_edge.export.gguf_bundle import export_gguf_bundle as exporter
    from fusion_edge.export.gguf_writer import PRECISION_QUANT
    quant = kw.get("quant") or PRECISION_QUANT.get(kw.get("precision", "fp32"))
    opts = dict(query_len=query_len, image_tokens=image_tokens, progress=progress)
    if quant == "F32" or not kw.get("verify", True):
        return exporter(model, out, **opts, **kw)
    with work_area(out) as work, fp32_source(fp32_from or model, query_len, image_tokens, progress,
                                             verified=True, steps=kw.get("steps", 16), work=work) as src:
        if kw.get("vision_precision", "fp32") == "fp32":
            kw.setdefault("onnx_from", src)          # the same fp32 vision graphs: exported once
        gate = gguf_gate(model, src, eval_cases, kw.get("steps", 16), kw.get("force", False),
                         kw.get("threads") or None, progress)
        return exporter(model, out, gate=gate, **opts, **kw)


def gguf_gate(model, fp32: Path, eval_cases: int = 4, steps: int = 16, force: bool = False,
              threads: int | None = None, progress: bool = True) -> GgufGate:
    """The quality gate of a quantized gguf bundle: (folder, quant type) → figures, raising
    ExportError below GATES["fp32_pipeline"][quant type] against the verified fp32 ONNX
    bundle `fp32` or the PyTorch reference of checkpoint `model`, unless forced."""
    return GgufGate(str(model), Path(fp32), eval_cases, steps, force, threads, progress)


@dataclass
class GgufGate:
    """gguf_gate's gate as data, so the export can run it in a child process (export/isolated.py):
    the PyTorch reference is loaded where the gate runs (its log records come back to the caller)."""
    model: str
    fp32: Path
    eval_cases: int
    steps: int
    force: bool
    threads: int | None
    progress: bool

    def __call__(self, folder: Path, kind: str) -> dict:
        with _importing("gguf quality gate"):
            from fusion_edge.quantize.agreement import gate_folder
        from fusion_edge.calibration.builtin import builtin_pairs
        cases = [(img, q) for _, img, q in builtin_pairs("eval", self.eval_cases)]
        return gate_folder(folder, self.fp32, kind, cases, self.steps, None, self.force, self.threads, self.progress,
                           reference_answer(self.model), GGUF_FIX)


def export_onnx_quantized(model, out, *, query_len=None, image_tokens=None, progress: bool = True, **kw) -> Path:
    """fp32 source (the bundle given, or a temporary export of the checkpoint) → quantized bundle,
    gated against it and against the PyTorch reference of its checkpoint. With verify=False
    (--no-verify) there is no gate: the source need not be verified, and the bundle is marked
    `skipped` (warned about at open, refused by --strict) — for models whose fp32 reference
    does not fit this machine (bench/real_size.py)."""
    with _importing("onnx int8/int4"):
        from fusion_edge.quantize.onnx_quant import export_quantized_bundle as quantized
    verify = kw.get("verify", True)     # --no-verify: no gate, so no verified source needed; marked skipped
    if streams(model, kw):
        from fusion_edge.streamed import export_streamed
        with work_area(out) as work:
            return export_streamed(model, out, work, query_len=query_len, image_tokens=image_tokens,
                                   progress=progress, reference=lazy_reference(model) if verify else None, **kw)
    if streams(model, {**kw, "calib": None}, recording=False):
        log.info("notice: exporting the fp32 bundle first: the align graphs' calibration needs the whole fp32 "
                 "pipeline (with a recording, --calib DIR, int4 is exported one graph at a time instead)")
    with work_area(out) as work, fp32_source(model, query_len, image_tokens, progress, verified=verify,
                                             steps=kw.get("steps", 16), work=work) as src:
        kw["calib"] = record_in(work, src, kw, progress)
        reference = reference_answer(src) if verify else None
        return quantized(src, out, progress=progress, reference=reference, **kw)


def streams(model, kw: dict, recording: bool = True) -> bool:
    """Whether a quantized ONNX export goes straight from the checkpoint, one graph at a time
    (fusion_edge/streamed.py): onnx int4 of a checkpoint with a complete calibration recording
    (--calib DIR; recording=False: whatever the calibration). Otherwise the fp32 bundle is
    exported first, as recording the align graphs' inputs needs the whole fp32 pipeline
    (docs/quantization.md, Streamed int4 export)."""
    from fusion_edge.calibration.record import Recordings
    from fusion_edge.calibration.source import is_bundle
    calib = kw.get("calib")
    return (kw.get("target", "onnx") == "onnx" and kw.get("precision") == "int4" and not is_bundle(model)
            and (not recording or (calib is not None and Recordings.is_recording(calib))))


def lazy_reference(model: str | Path) -> Callable:
    """reference_answer(model), the fp32 PyTorch model loaded at the first call (the gate), so
    that the streamed export does not hold it while it exports and quantizes."""
    answer: Callable | None = None

    def call(pipe, image, question: str, steps: int):
        nonlocal answer
        if answer is None:
            answer = reference_answer(model)
        return answer(pipe, image, question, steps)
    return call


def reference_answer(model: str | Path) -> Callable:
    """The PyTorch reference's side of a quantized bundle's gate: (pipe, image, question, steps)
    → (layout, tokens, logits per step) for pipe's options. `model`: a checkpoint, or a bundle
    whose source checkpoint is still where it was exported from (checked by fingerprint)."""
    from fusion_edge.calibration.source import is_bundle
    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.export.reference import FusionReference
    from fusion_edge.runtime.bundle import Bundle
    if is_bundle(model):
        bundle = Bundle.open(model, check_hashes=False)
        source = bundle.manifest["source"]["model"]
        try:
            ckpt = open_checkpoint(source)
        except FusionEdgeError as e:
            raise ExportError(f"the checkpoint {source} that bundle {model} was exported from cannot be opened "
                              f"({e.problem}); quantized bundles are gated against its PyTorch reference.",
                              "export from the checkpoint itself (fusion-export CHECKPOINT ...)") from None
        bundle.check_source(ckpt.fingerprint)
    else:
        ckpt = open_checkpoint(str(model))
    ref = FusionReference(ckpt)

    def answer(pipe, image, question: str, steps: int):
        return ref.greedy_logits(image, question, steps, pipe.default_query_len, pipe.image_tokens)
    return answer


def export_trt(model, out, *, precision: str, sm=None, verify: bool = True, progress: bool = True, **kw) -> Path:
    """TensorRT bundle: the TensorRT-ready ONNX graphs (fp16 weights, or --for trt Q/DQ int8 /
    int4 blocks) through the onnx exporters, gated the same way, plus the trt manifest sections
    (profiles, precision plan, engines). Where a TensorRT EP and a GPU are usable the engines
    are built now and the bundle verified on them; elsewhere they stay `pending`."""
    from fusion_edge.quantize.planner import plan
    from fusion_edge.export.trt_manifest import trt_fields
    the_plan = plan("tensorrt", precision, sm)
    kw.pop("target", None)

    def extend(fields: dict) -> dict:
        return trt_fields(fields, the_plan.to_dict())
    common: dict[str, Any] = dict(target="trt", precision=precision, verify=verify, progress=progress,
                                  manifest_extend=extend)
    if precision == "fp16":
        log.info(the_plan.explain())
        kw = {k: v for k, v in kw.items() if k not in QUANT_ONLY}
        path = export_onnx(model, out, **common, **kw)
    else:
        path = export_onnx_quantized(model, out, **common, flavour="trt", sm=sm, **kw)
    from fusion_edge.calibration.source import is_bundle
    from fusion_edge.export.trt_engines import build_after_export
    checkpoint = None if (not verify or is_bundle(model)) else model     # the reference needs a checkpoint
    build_after_export(path, checkpoint, progress=progress, force=kw.get("force", False))
    return path


# options of the quantizer that an fp16 export does not take
QUANT_ONLY = ("calib", "calib_samples", "calib_questions", "flavour", "block_size", "accuracy_level",
              "keep_float", "eval_cases")


# target → precision → exporter(model, out, target=, precision=, query_len=, image_tokens=, overwrite=,
#                                verify=, force=, steps=, progress=, **target options)
TARGETS: dict[str, dict[str, Callable]] = {
    "onnx": {p: export_onnx_quantized if PRECISIONS[p].quantized else export_onnx for p in precision_names("onnx")},
    "gguf": {p: export_gguf for p in precision_names("gguf")},
    "trt": {p: export_trt for p in precision_names("trt")},
}


def check_target(target: str, precision: str) -> Callable:
    """→ the exporter for (target, precision), or an ExportError naming what is available."""
    if target not in TARGETS:
        raise ExportError(f"target '{target}' is not available in this fusion-edge build.",
                          f"available targets: {', '.join(TARGETS)}")
    if precision not in TARGETS[target]:
        raise ExportError(f"precision '{precision}' is not available for target '{target}'.",
                          f"choose one of: {', '.join(TARGETS[target])}")
    return TARGETS[target][precision]


def check_checkpoint_extra(model, purpose: str) -> None:
    """A checkpoint (anything but a bundle folder) is read with PyTorch, the export extra: without
    it a core install gets the error naming the extra before any check of paths or options."""
    from fusion_edge.calibration.source import is_bundle
    if is_bundle(model):
        return
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        raise missing_module_error(e, purpose, "export") from None


def export_bundle(model: str, out: str | Path, target: str = "onnx", precision: str = "fp32",
                  query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                  verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True,
                  **extra) -> Path:
    """Checkpoint (or, for quantized ONNX, an fp32 bundle) → verified bundle of (target, precision)."""
    exporter = check_target(target, precision)
    check_checkpoint_extra(model, "exporting a checkpoint")
    from fusion_edge.export.cli_export import check_export_options
    check_export_options(steps, extra)         # before any work; the command line's types check the same
    streamed = streams(model, {**extra, "target": target, "precision": precision})
    need = check_export_output(model, out, target, precision, overwrite, verify, extra.get("quant"),
                               extra.get("fp32_from"), streamed)
    with output_faults(Path(out).parent, "bundle", out, need,
                       kept=lambda: kept_note(out) or "Nothing half-written was kept."):
        return exporter(model, out, target=target, precision=precision, query_len=query_len,
                        image_tokens=image_tokens, overwrite=overwrite, verify=verify, force=force,
                        steps=steps, progress=progress, **extra)


@contextmanager
def fp32_source(model: str, query_len: int | None = None, image_tokens: int | None = None,
                progress: bool = True, verified: bool = False, steps: int = 16,
                work: Path | None = None):
    """Yield the path of an fp32 ONNX bundle of `model`: the bundle itself (checked), or an
    export of the checkpoint into `work`/fp32 (reused there when an interrupted run left one of
    the same checkpoint, options and version; the caller's work_area removes it) or, without
    `work`, a temporary folder (removed afterwards). verified: the bundle must have passed its
    verification, the temporary export is verified — quantized bundles are gated against this
    pipeline, so an fp32 export error must not pass into them."""
    from fusion_edge.calibration.source import check_fp32_bundle, is_bundle
    from fusion_edge.runtime.bundle import Bundle, check_verified
    if is_bundle(model):
        path = check_fp32_bundle(model, query_len, image_tokens)
        if verified:
            check_verified(Bundle.open(path, check_hashes=False),
                           "quantized bundles are built only from a verified fp32 pipeline "
                           "(with --no-verify: ungated, marked unverified)")
        yield path
        return
    if work is not None:
        dest = Path(work) / "fp32"
        if not reusable_fp32(dest, model, query_len, image_tokens, verified):
            shutil.rmtree(dest, ignore_errors=True)
            log.info(f"exporting {'and verifying ' if verified else ''}a temporary fp32 ONNX bundle of {model} …")
            export_onnx(model, dest, target="onnx", precision="fp32", query_len=query_len, image_tokens=image_tokens,
                        verify=verified, steps=steps, progress=progress)
        yield dest
        return
    with tempfile.TemporaryDirectory(prefix="fusion-edge-fp32-") as tmp:
        log.info(f"exporting {'and verifying ' if verified else ''}a temporary fp32 ONNX bundle of {model} …")
        yield export_onnx(model, Path(tmp) / "fp32", target="onnx", precision="fp32", query_len=query_len,
                          image_tokens=image_tokens, verify=verified, steps=steps, progress=progress)


def run_export(args) -> int:
    """`fusion-edge export` / `fusion-export` (arguments: export/cli_export.py)."""
    from fusion_edge.export.cli_export import gguf_kwargs, quant_kwargs, trt_kwargs
    out = export_bundle(args.model, args.out, args.target, args.precision, args.query_len, args.image_tokens,
                        overwrite=args.overwrite, verify=not args.no_verify, force=args.force,
                        steps=args.verify_steps, progress=not args.quiet, **quant_kwargs(args), **gguf_kwargs(args),
                        **trt_kwargs(args))
    print(f"bundle written to {out}")
    return 0


def run_calibrate(args) -> int:
    """`fusion-edge calibrate` (arguments: calibration/cli.py): a checkpoint is exported to a
    temporary fp32 bundle first."""
    from fusion_edge.calibration.calibrate import calibrate_bundle
    out = Path(args.out)
    check_checkpoint_extra(args.model, "calibrating a checkpoint")
    need = check_calibration_output(args.model, out, args.overwrite)
    with output_faults(out.parent, "calibration recording", out, need, kept=lambda: kept_note(out)), \
            work_area(out) as work, \
            fp32_source(args.model, args.query_len, args.image_tokens, not args.quiet, work=work) as src:
        calibrate_bundle(src, out, data=args.data, questions=args.questions, samples=args.samples,
                         holdout=args.holdout, max_mb=args.max_mb, dtype=args.dtype, overwrite=args.overwrite,
                         threads=args.threads, progress=not args.quiet, low_memory=args.low_memory)
    return 0
