"""Engines of a trt bundle: built right after export where TensorRT runs, else left `pending`;
and `fusion-edge build-engines BUNDLE [--rebuild]` on the target.

Both build through runtime/trt/build.py (onnxruntime's TensorRT EP builds and caches the
engines). After an export on a TensorRT machine (and with build-engines --model) the bundle is
verified on the engines against the PyTorch reference; the figures are stored as
`verification_tensorrt`. Engines whose figures miss the gate (runtime/fidelity.py
gate_reference, as on the CPU) are refused: the bundle's verification_status becomes "failed"
and a typed error says so, unless --force (then "forced").
"""
from __future__ import annotations

import logging
from pathlib import Path

from fusion_edge.runtime.backends.ort_session import import_ort, provider_chain
from fusion_edge.runtime.bundle import Bundle
from fusion_edge.runtime.devices import TRT_FIX
from fusion_edge.runtime.errors import ExportError, TensorRTError
from fusion_edge.runtime.outputs import check_output, output_faults
from fusion_edge.runtime.trt import stamp
from fusion_edge.runtime.trt.build import build_engines, require_trt_bundle
from fusion_edge.runtime.trt.ep import probe_platform
from fusion_edge.runtime.trt.stamp import ENGINES_DIR

log = logging.getLogger(__name__)

ENGINES_WHAT = "TensorRT engines"
ENGINES_ELSEWHERE = "copy the bundle to a folder"


def current_platform(probe=probe_platform):
    """The TensorRT platform here, or None (probe(ort) → Platform | None, injectable)."""
    return probe(import_ort())


ENGINES_FIX = ("report this with the figures above; check the bundle on the CPU (fusion-edge verify BUNDLE --model "
               "CKPT --device cpu); --force keeps the engines and marks the bundle \"forced\"")


def engine_status(figures: dict, force: bool) -> str | None:
    """The verification_status the engines' figures (verify_gated's dict) give the bundle: None
    (within the gate: unchanged), "forced" (missed, kept with --force) or "failed"."""
    if figures["passed"]:
        return None
    return "forced" if force else "failed"


def record_engine_figures(bundle: Bundle, figures: dict, force: bool = False) -> str:
    """Store the figures as `verification_tensorrt` with the status they give; engines below the
    gate without `force` → ExportError after the bundle is marked "failed" → the status now."""
    status = engine_status(figures, force)
    bundle.update_manifest(verification_tensorrt=figures, **({"verification_status": status} if status else {}))
    if status == "failed":
        raise ExportError(f"the TensorRT engines of {bundle.path} do not match the reference closely enough: "
                          + "; ".join(figures["gate"]) + "; the bundle is marked failed", ENGINES_FIX)
    return bundle.verification_status


def build_after_export(path: Path, model: str | None, progress: bool = True, probe=probe_platform,
                       force: bool = False) -> None:
    """Build the engines now where TensorRT runs (then verify on them against `model`, unless
    None); else say that they are pending and how to build them on the target."""
    platform = current_platform(probe)
    if platform is None:
        log.info(f"engines: pending — no TensorRT execution provider here. Copy {path} to the target "
                 f"(Jetson / RTX machine) and run: fusion-edge build-engines {path}  (see docs/tensorrt.md)")
        return
    log.info(f"building TensorRT engines for {platform.gpu_name} (SM {platform.sm_text}, TensorRT "
             f"{platform.tensorrt_version}); the timing cache is kept in {path}/engines/timing")
    build_engines_checked(path, platform, provider_chain("tensorrt", trt_provider=platform.provider),
                          progress=progress)
    if model is not None:
        verify_on_engines(path, model, force=force)


def build_engines_checked(path, platform, chain: list, **kw) -> dict:
    """runtime/trt/build.py `build_engines` with the bundle folder checked first (a read-only one
    is refused before any engine is built) and a full disk turned into a DiskFullError; the
    graphs built so far stay recorded in the manifest, and the same command resumes after them."""
    folder = Path(path)
    check_output(folder / ENGINES_DIR, ENGINES_WHAT, elsewhere=ENGINES_ELSEWHERE)
    with output_faults(folder, ENGINES_WHAT, folder / ENGINES_DIR, kept=lambda: engines_kept(folder),
                       elsewhere=ENGINES_ELSEWHERE):
        return build_engines(path, platform, chain, **kw)


def engines_kept(folder: Path) -> str:
    """What an interrupted engine build leaves, in words."""
    try:
        engines = Bundle.open(folder, check_hashes=False).manifest.get(stamp.ENGINES_KEY)
    except Exception:           # noqa: BLE001 - only words for an error message
        return ""
    done = sorted(stamp.built_graphs(engines))
    if not done:
        return "No engine was recorded yet."
    return (f"The engines of {len(done)} graphs built so far stay recorded in the manifest: "
            f"`fusion-edge build-engines {folder}` resumes with the next graph.")


def verify_on_engines(path: Path, model: str, steps: int = 16, force: bool = False) -> dict:
    """Figures of the bundle on its engines against the PyTorch reference, gated as on the CPU
    (quantized bundles: finite logits; their agreement gate ran at export) and recorded
    (record_engine_figures: below the gate the bundle is "failed" and refused unless `force`)."""
    from fusion_edge.runtime.fidelity import format_reference
    from fusion_edge.runtime.pipeline import Pipeline

    from .checkpoint import open_checkpoint
    from .reference import FusionReference
    from .verify import verify_gated
    bundle = Bundle.open(path)
    pipe = Pipeline.open(path, device="tensorrt", no_build=True)
    figures = verify_gated(pipe, FusionReference(open_checkpoint(model)), bundle.precision, bundle.target, steps)
    log.info(format_reference(figures))
    record_engine_figures(bundle, figures, force)
    return figures


def run_build_engines(args) -> int:
    """`fusion-edge build-engines BUNDLE [--rebuild]`."""
    bundle = Bundle.open(args.bundle)
    require_trt_bundle(bundle)
    platform = current_platform()
    if platform is None:
        ort = import_ort()
        raise TensorRTError(f"no TensorRT execution provider is usable here (onnxruntime {ort.__version__}: "
                            f"{', '.join(ort.get_available_providers())}); engines are built on the target.",
                            TRT_FIX)
    engines = build_engines_checked(bundle.path, platform, provider_chain("tensorrt", trt_provider=platform.provider),
                                    rebuild=args.rebuild, progress=not args.quiet)
    print(f"engines {engines['state']}: {len(stamp.built_graphs(engines))} graphs for {platform.gpu_name} "
          f"(SM {platform.sm_text}, TensorRT {platform.tensorrt_version}) in {bundle.path}")
    if args.model:
        verify_on_engines(bundle.path, args.model, force=args.force)
    return 0


def add_args(p) -> None:
    p.add_argument("bundle", help="a trt bundle (fusion-export MODEL --target trt ... -o BUNDLE)")
    p.add_argument("--rebuild", action="store_true", help="delete the recorded engines and build every graph again")
    p.add_argument("--model", default=None, help="also verify the engines against this checkpoint's PyTorch reference")
    p.add_argument("--force", action="store_true",
                   help="with --model: keep engines below the gate (the bundle is marked forced, not failed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
