"""Arguments and handlers of `fusion-edge export` / `fusion-export` and `fusion-edge verify`."""
from __future__ import annotations

import json


def add_export_args(p) -> None:
    p.add_argument("model", help="checkpoint folder or hub id (e.g. starriver030515/FUSION-X-Phi3.5-3B)")
    p.add_argument("--target", default="onnx", choices=["onnx", "gguf", "trt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "int4"])
    p.add_argument("-o", "--out", required=True, help="bundle folder to create")
    p.add_argument("--query-len", type=int, default=None, help="default latent count of the bundle")
    p.add_argument("--image-tokens", type=int, choices=[144], default=None, help="144 = FUSION-L mode")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the PyTorch reference")
    p.add_argument("--force", action="store_true", help="keep a bundle that fails the verification gate")
    p.add_argument("--verify-steps", type=int, default=16, help="greedy steps compared end to end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_verify_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument("--model", required=True, help="the checkpoint the bundle was exported from")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run_export(args) -> int:
    from .bundle_export import export_bundle
    out = export_bundle(args.model, args.out, args.target, args.precision, args.query_len, args.image_tokens,
                        overwrite=args.overwrite, verify=not args.no_verify, force=args.force,
                        steps=args.verify_steps, progress=not args.quiet)
    print(f"bundle written to {out}")
    return 0


def run_verify(args) -> int:
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.pipeline import Pipeline

    from .bundle_export import format_figures
    from .checkpoint import open_checkpoint
    from .reference import FusionReference
    from .verify import gate, verify
    bundle = Bundle.open(args.bundle)
    ckpt = open_checkpoint(args.model)
    bundle.check_source(ckpt.fingerprint())
    figures = verify(Pipeline.open(args.bundle, device="cpu"), FusionReference(ckpt), steps=args.steps)
    passed, reasons = gate(figures, bundle.precision)
    figures.update({"passed": passed, "gate": reasons, "device": "cpu"})
    bundle.update_manifest(verification=figures)
    print(json.dumps(figures, indent=2) if args.json else format_figures(figures))
    return 0 if passed else 1
