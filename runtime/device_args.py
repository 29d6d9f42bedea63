"""The device flags every command that opens a bundle shares: --device, per-part overrides, --tf32."""
from __future__ import annotations

PARTS = ("vision", "align", "llm")


def add_device_args(p, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"bundle device for every part: auto | cpu | cuda "
                                                     f"(default {default}; auto = fastest installed per part)")
    for part in PARTS:
        p.add_argument(f"--{part}-device", default=None, choices=["auto", "cpu", "cuda"],
                       help=f"device of the {part} part only (overrides --device)")
    p.add_argument("--tf32", action="store_true",
                   help="let onnxruntime's CUDA EP run fp32 MatMuls in TF32 (faster; logits move ~1e-2)")


def device_kwargs(args) -> dict:
    """The Pipeline.open keywords of parsed device flags."""
    return {"device": args.device, "tf32": bool(args.tf32),
            **{f"{part}_device": getattr(args, f"{part}_device") for part in PARTS}}


def device_argv(args) -> list[str]:
    """The same flags as a command line (for worker processes)."""
    argv = ["--device", args.device] + (["--tf32"] if args.tf32 else [])
    for part in PARTS:
        if getattr(args, f"{part}_device"):
            argv += [f"--{part}-device", getattr(args, f"{part}_device")]
    return argv
