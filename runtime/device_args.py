"""The device flags every command that opens a bundle shares: --device, per-part overrides, --tf32."""
from __future__ import annotations

from .devices import COMPONENTS as PARTS
from .devices import DEVICES


def add_device_args(p, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"bundle device for every part: {' | '.join(DEVICES)} "
                                                     f"(default {default}; auto = fastest installed per part, "
                                                     "TensorRT for trt bundles)")
    for part in PARTS:
        p.add_argument(f"--{part}-device", default=None, choices=DEVICES,
                       help=f"device of the {part} part only (overrides --device)")
    p.add_argument("--tf32", action="store_true",
                   help="let onnxruntime's CUDA EP run fp32 MatMuls in TF32 (faster; logits move ~1e-2)")
    p.add_argument("--no-build", action="store_true",
                   help="trt bundles: refuse to build pending TensorRT engines now (fusion-edge build-engines does)")


def device_kwargs(args) -> dict:
    """The Pipeline.open keywords of parsed device flags."""
    return {"device": args.device, "tf32": bool(args.tf32), "no_build": bool(getattr(args, "no_build", False)),
            **{f"{part}_device": getattr(args, f"{part}_device") for part in PARTS}}


def device_argv(args) -> list[str]:
    """The same flags as a command line (for worker processes)."""
    argv = ["--device", args.device] + (["--tf32"] if args.tf32 else []) + \
        (["--no-build"] if getattr(args, "no_build", False) else [])
    for part in PARTS:
        if getattr(args, f"{part}_device"):
            argv += [f"--{part}-device", getattr(args, f"{part}_device")]
    return argv
