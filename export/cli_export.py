"""Arguments of `fusion-edge export` / `fusion-export` (run by fusion_edge/targets.py
`run_export`) and the `fusion-edge verify` handler."""
from __future__ import annotations

import json
import logging
import sys

from fusion_edge.runtime import option_types as ot
from fusion_edge.runtime.precisions import precision_names


def add_export_args(p) -> None:
    p.add_argument("model", help="checkpoint folder or hub id (e.g. starriver030515/FUSION-X-Phi3.5-3B)")
    p.add_argument("--target", default="onnx", choices=["onnx", "gguf", "trt"])
    p.add_argument("--precision", default="fp32", choices=precision_names())
    p.add_argument("-o", "--out", required=True, type=ot.output_dir_arg("-o"),
                   help="bundle folder to create (with its parents)")
    p.add_argument("--query-len", type=int, default=None, help="default latent count of the bundle")
    p.add_argument("--image-tokens", type=int, choices=[144], default=None, help="144 = FUSION-L mode")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the PyTorch reference")
    p.add_argument("--force", action="store_true", help="keep a bundle that fails the verification gate")
    p.add_argument("--verify-steps", type=ot.int_arg("--verify-steps", 1), default=16,
                   help="greedy steps compared end to end (1 to the model's context)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_quant_args(p)
    add_gguf_args(p)


def add_quant_args(p) -> None:
    """Options of --precision int8|int4 with --target onnx (fusion_edge.quantize, docs/quantization.md)."""
    g = p.add_argument_group("quantization (--target onnx|trt --precision int8|int4)")
    g.add_argument("--calib", default=None, type=ot.existing_path_arg("--calib"),
                   help="calibration: a recording folder (fusion-edge calibrate; onnx int4 of a checkpoint is "
                        "then exported one graph at a time, without an fp32 bundle), an image folder with "
                        "questions.txt, or a .jsonl file; default: built-in set")
    g.add_argument("--calib-samples", type=ot.int_arg("--calib-samples", 1), default=32,
                   help="most calibration pairs recorded (at least 1; more than the data has: all of it)")
    g.add_argument("--calib-questions", default=None, type=ot.existing_file_arg("--calib-questions"),
                   help="questions file for an image-folder --calib")
    g.add_argument("--for", dest="flavour", choices=["cpu", "cuda", "trt"], default="cpu",
                   help="hardware the Q/DQ is meant for: cpu (onnxruntime, asymmetric activations), "
                        "cuda (onnxruntime CUDA) or trt (TensorRT: symmetric, int4 as opset-21 DequantizeLinear)")
    g.add_argument("--sm", default=None, help="GPU compute capability for --for cuda|trt (default 8.7, Orin)")
    g.add_argument("--block-size", type=ot.int_arg("--block-size", choices=ot.INT4_BLOCK_SIZES), default=32,
                   help=f"int4 block size along K: {', '.join(map(str, ot.INT4_BLOCK_SIZES))}")
    g.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                   help="MatMulNBits accuracy_level (4 = int8 compute on CPU, 0 = unset)")
    g.add_argument("--keep-float", action="append", default=[], metavar="REGEX", type=ot.regex_arg("--keep-float"),
                   help="leave weighted nodes whose name matches REGEX unquantized (repeatable)")
    g.add_argument("--eval-cases", type=ot.int_arg("--eval-cases", 1), default=4,
                   help="held-out cases of the quality gate (at least 1; the built-in set has 8 distinct ones "
                        "and repeats none)")
    from fusion_edge.runtime.precisions import VISION_PRECISIONS
    g.add_argument("--vision-precision", choices=list(VISION_PRECISIONS), default=None,
                   help="--target onnx: how the vision tower is stored: "
                        + "; ".join(f"{k}: {v}" for k, v in VISION_PRECISIONS.items()) + " (default: int8)")


def add_gguf_args(p) -> None:
    g = p.add_argument_group("gguf (--target gguf)")
    g.add_argument("--gguf-quant", choices=["F16", "Q8_0", "Q4_0", "Q4_K_M"], default=None,
                   help="GGUF weight type instead of the one --precision picks (e.g. Q4_0 for int4)")


def check_export_options(steps: int, extra: dict) -> None:
    """The numeric and path options of an export (fusion_edge/targets.py `export_bundle`, the Python
    API too), checked before any work as the command line's types check them: OptionError.
    --verify-steps against the model's context once the checkpoint is open (bundle_export.py)."""
    from fusion_edge.runtime.errors import OptionError
    ot.check_int(steps, "--verify-steps", 1)
    for key, option in (("eval_cases", "--eval-cases"), ("calib_samples", "--calib-samples")):
        if extra.get(key) is not None:
            ot.check_int(extra[key], option, 1)
    block, sizes = extra.get("block_size"), ", ".join(map(str, ot.INT4_BLOCK_SIZES))
    if block is not None and (ot.check_int(block, "--block-size") not in ot.INT4_BLOCK_SIZES):
        raise OptionError(f"--block-size {block} is not one of {sizes}.", f"pass one of {sizes}")
    ot.check_threads(extra.get("threads"), "threads")
    if extra.get("calib") is not None:
        ot.check_existing_path(extra["calib"], "--calib")
    if extra.get("calib_questions") is not None:
        ot.check_existing_file(extra["calib_questions"], "--calib-questions")
    warn_slow_accuracy_level(extra)


def warn_slow_accuracy_level(extra: dict) -> None:
    """MatMulNBits on onnxruntime's CPU runs int8 compute only at accuracy level 4; at 0 (unset)
    the 8-bit lm_head of every int8/int4 cpu bundle takes ~100x longer per decoded token
    (bench/kernels.py, 3072 x 8192 one row: 240 ms against 2.9 ms, 2026-12-08)."""
    if "accuracy_level" in extra and extra.get("flavour", "cpu") == "cpu" and extra["accuracy_level"] != 4:
        level = extra["accuracy_level"] or 0
        logging.getLogger(__name__).warning(
            f"--accuracy-level {level}: onnxruntime's CPU kernels for MatMulNBits are fast at level 4 only; "
            f"the bundle's 8-bit lm_head will decode about 100x slower per token at level 0 "
            f"(python -m fusion_edge.bench.kernels times every level)")


def gguf_kwargs(args) -> dict:
    """--gguf-quant, and --eval-cases for the quality gate of a quantized gguf bundle."""
    if args.target != "gguf":
        return {}
    kw = {"eval_cases": args.eval_cases} if hasattr(args, "eval_cases") else {}
    return {**kw, "quant": args.gguf_quant} if getattr(args, "gguf_quant", None) else kw


def trt_kwargs(args) -> dict:
    """--target trt: the GPU the precision plan is made for (fp16; int8/int4 pass it in quant_kwargs)."""
    return {"sm": args.sm} if args.target == "trt" and args.precision == "fp16" else {}


def quant_kwargs(args) -> dict:
    """The quantization options as keyword arguments, for the onnx and trt int8/int4 exporters only
    (a trt bundle is always --for trt)."""
    if args.target not in ("onnx", "trt") or args.precision not in ("int8", "int4") or not hasattr(args, "flavour"):
        return {}
    if args.target == "trt":
        return {"calib": args.calib, "calib_samples": args.calib_samples, "calib_questions": args.calib_questions,
                "sm": args.sm, "block_size": args.block_size, "accuracy_level": args.accuracy_level or None,
                "keep_float": args.keep_float, "eval_cases": args.eval_cases}
    return {"calib": args.calib, "calib_samples": args.calib_samples, "calib_questions": args.calib_questions,
            "flavour": args.flavour, "sm": args.sm, "block_size": args.block_size,
            "accuracy_level": args.accuracy_level or None, "keep_float": args.keep_float,
            "eval_cases": args.eval_cases, "vision_precision": args.vision_precision}


def add_verify_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument("--model", required=True, help="the checkpoint the bundle was exported from")
    p.add_argument("--steps", type=ot.int_arg("--steps", 1), default=16,
                   help="greedy steps compared per case (1 to the model's context)")
    p.add_argument("--eval-cases", type=ot.int_arg("--eval-cases", 1), default=4,
                   help="quantized bundles: built-in cases of the quality gate (teacher-forced agreement; "
                        "at least 1; there are 9 distinct ones, none is repeated)")
    p.add_argument("--fp32-bundle", default=None, metavar="B", type=ot.existing_dir_arg("--fp32-bundle"),
                   help="quantized bundles: also compare with this verified fp32 ONNX bundle of the same "
                        "checkpoint, as the export does")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p, default="cpu")


VERIFY_CRASH_FIX = ("the bundle was not changed. Re-check it with --llm-device cpu (llama.cpp then keeps every op "
                    "on the CPU); please report the crash with the frames above")


def run_verify(args) -> int:
    """`fusion-edge verify`: the bundle's figures against the PyTorch reference, re-measured with
    the installed versions on the chosen device, gated as at export: fp32 / onnx fp16 by the
    reference gate, quantized bundles by their quality gate (export/verify.py `quality_gate`).
    The manifest gets the figures and `verification_status` passed or failed, from that gate
    alone. → 0 passed, 1 failed."""
    from fusion_edge.runtime import versions
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.device_args import device_kwargs

    from .checkpoint import open_checkpoint
    bundle = Bundle.open(args.bundle)
    bundle.check_source(open_checkpoint(args.model).fingerprint)
    changes = versions.drift(bundle.manifest.get("build", {}))
    if changes:
        print(f"note: installed versions differ from the bundle's build: {versions.describe_drift(changes)}; "
              "the figures below hold for the installed versions", file=sys.stderr if args.json else sys.stdout)
    measure = (args.bundle, args.model, bundle.precision, bundle.target, device_kwargs(args), args.steps,
               args.eval_cases, args.fp32_bundle)
    if bundle.manifest.llm_backend == "llama.cpp":      # a native crash in llama.cpp becomes an error here
        from .isolated import run_isolated
        stored = run_isolated(verify_measure, *measure, what="verifying the bundle with llama.cpp",
                              fix=VERIFY_CRASH_FIX)
    else:
        stored = verify_measure(*measure)
    passed = stored["verification"]["passed"]
    for figures in stored.values():
        figures["version_drift"] = [list(c) for c in changes]
    bundle.update_manifest(**stored, verification_status="passed" if passed else "failed")
    print(json.dumps(json_figures(stored), indent=2) if args.json else format_stored(stored))
    return 0 if passed else 1


def json_figures(stored: dict) -> dict:
    """verify --json: the `verification` figures (the gate's), with a quantized bundle's
    reference figures under `reference_comparison`."""
    extra = {"reference_comparison": stored["reference_comparison"]} if "reference_comparison" in stored else {}
    return {**stored["verification"], **extra}


def format_stored(stored: dict) -> str:
    """verify's figures as text: the reference comparison, then (quantized bundles) the quality
    gate's comparisons; the last gate line is the verdict."""
    from fusion_edge.runtime.fidelity import format_fp32_pipeline, format_reference
    if "reference_comparison" not in stored:
        return format_reference(stored["verification"])
    ref = {k: v for k, v in stored["reference_comparison"].items() if k not in ("passed", "gate")}
    quality = stored["verification"]
    parts = [format_reference(ref), format_fp32_pipeline(quality)]
    if "pytorch_reference" in quality:
        parts.append(format_fp32_pipeline(quality["pytorch_reference"]))
    return "\n".join(parts)


def verify_measure(bundle: str, model: str, precision: str, target: str, device: dict, steps: int,
                   eval_cases: int = 4, fp32_bundle: str | None = None) -> dict:
    """`verify`'s figures and gate for a bundle opened with the device keywords `device` →
    {manifest key: figures}: `verification` holds the gate's verdict (`passed`, `gate`). fp32
    and onnx / trt fp16 bundles: the reference comparison (export/verify.py `verify_gated`).
    Quantized bundles: `verification` = the quality gate (teacher-forced, `quality_gate`,
    `eval_cases` cases, with `fp32_bundle` when given), `reference_comparison` = the reference
    figures (whose own gate is only finite logits), both carrying the combined verdict."""
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.fidelity import quality_gated
    from fusion_edge.runtime.pipeline import Pipeline, bundle_context
    from fusion_edge.runtime.prompt import check_max_new_tokens

    from .checkpoint import open_checkpoint
    from .reference import FusionReference
    from .verify import quality_gate, verify_gated
    ot.check_int(steps, "--steps", 1)
    ot.check_int(eval_cases, "--eval-cases", 1)
    # the steps must fit the context: known from the manifest, before any model loads
    check_max_new_tokens(steps, *bundle_context(Bundle.open(bundle, check_hashes=False)), name="--steps",
                         option="--steps")
    pipe = Pipeline.open(bundle, **device)
    try:
        ref = FusionReference(open_checkpoint(model))
        figures = verify_gated(pipe, ref, precision, target, steps=steps)
        if not quality_gated(target, precision):
            return {"verification": figures}
        quality = quality_gate(pipe, ref, steps, eval_cases, fp32_bundle)
    finally:
        pipe.llm.close()
    return combined(quality, figures)


def combined(quality: dict, reference: dict) -> dict:
    """A quantized bundle's stored figures: its verdict is the quality gate's and the reference
    figures' (finite logits) together, carried by both."""
    reasons = quality["gate"] + [f"vs the PyTorch reference (free-running): {r}" for r in reference["gate"]]
    passed = quality["passed"] and reference["passed"]
    quality = {**quality, "passed": passed, "gate": reasons, "placement": reference["placement"]}
    return {"verification": quality, "reference_comparison": {**reference, "passed": passed, "gate": reasons}}
