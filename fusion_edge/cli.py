"""Command line: `fusion-edge <command>` and `fusion-export` (= `fusion-edge export`).

Each command's work lives in its own module; this file only parses arguments. Every
FusionEdgeError is printed as "error: problem / fix" with exit code 2, no traceback. While a
command runs, the library's log lines (progress, notices) are printed (fusion_edge/logs.py).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from fusion_edge.logs import RUNTIME, printed
from fusion_edge.runtime import option_types as ot
from fusion_edge.runtime.arch import tiny_names
from fusion_edge.runtime.errors import FusionEdgeError, OptionError, missing_module_error

# Commands whose code lives in their own package: (name, help, the extra its imports need,
# loader → (add_args(parser), run(args)), imported on first use). calibrate runs from
# targets.py, which composes calibration with the fp32 export. A command whose module cannot
# be imported (its extra is not installed) stays listed and fails alone, with an error naming
# the extra; the other commands are unaffected.
class Command(NamedTuple):
    name: str
    help: str
    extra: str
    load: Callable[[], tuple[Callable, Callable]]


def _bench():
    from fusion_edge.bench.cli import add_args, run
    return add_args, run


def _calibrate():
    from fusion_edge.calibration.cli import add_args
    from fusion_edge.targets import run_calibrate
    return add_args, run_calibrate


def _build_engines():
    from fusion_edge.export.trt_engines import add_args, run_build_engines
    return add_args, run_build_engines


def _camera():
    from fusion_edge.apps.camera_qa.cli import add_args, run
    return add_args, run


def _ros2():
    from fusion_edge.apps.ros2.cli import add_args, run
    return add_args, run


def _serve():
    from fusion_edge.apps.serve.cli import add_args, run
    return add_args, run


PLUGIN_COMMANDS = [
    Command("bench", "benchmark every backend against the PyTorch reference", "bench", _bench),
    Command("calibrate", "record graph inputs over a calibration set", "export", _calibrate),
    Command("build-engines", "build a trt bundle's TensorRT engines on this GPU (resumable; --rebuild)", "trt",
            _build_engines),
    Command("camera", "live camera question answering in the browser", "camera", _camera),
    Command("ros2", "run the fusion_edge ROS 2 node (answers on ROS 2 topics)", "ros2", _ros2),
    Command("serve", "OpenAI-compatible chat-completions API for a bundle (--ray: Ray Serve replicas)", "serve",
            _serve),
]

# commands whose output is progress throughout: every log line on stdout, the runtime's too (a
# trt export builds its engines); the other commands print the runtime's lines (engines built
# while a bundle opens) on stderr, beside an answer on stdout
PROGRESS_COMMANDS = ("export", "calibrate")

EPILOGS = {
    "make-tiny": "example:\n  fusion-edge make-tiny tiny-phi3 --llm phi3 --tower so400m",
    "ask": ("examples:\n  fusion-edge ask --model tiny-phi3 --image photo.jpg --question 'What is on the table?'\n"
            "  fusion-edge ask --bundle b --image photo.jpg --question 'Any people?' --json"),
    "export": ("examples:\n  fusion-export tiny-phi3 --target onnx --precision fp32 -o b\n"
               "  fusion-export tiny-phi3 --target onnx --precision int8 -o q8        (built-in calibration set)\n"
               "  fusion-export tiny-phi3 --target onnx --precision int8 --calib my_images/ --for trt -o q8trt\n"
               "  fusion-export tiny-phi3 --target gguf --precision int4 -o g4\n"
               "  fusion-export tiny-phi3 --target trt --precision int8 -o t8     (engines: built here with TensorRT, "
               "else pending)\n"
               "  fusion-export starriver030515/FUSION-X-Phi3.5-3B --target onnx --precision fp16 -o b16"),
    "verify": "example:\n  fusion-edge verify b --model tiny-phi3",
    "build-engines": ("examples:\n  fusion-edge build-engines t8                 (on the Jetson / RTX machine)\n"
                      "  fusion-edge build-engines t8 --rebuild --model tiny-phi3"),
}


class OptionParser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing or unknown argument, a bad choice) are one
    OptionError, printed by main() as `error:` / `fix:` with exit code 2 like every other
    failure; the option types of runtime/option_types.py raise theirs while parsing."""

    def error(self, message: str):
        raise OptionError(f"{self.prog}: {message}.", f"see `{self.prog} --help` for its options")


def _parser() -> argparse.ArgumentParser:
    p = OptionParser(prog="fusion-edge", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help_):
        return sub.add_parser(name, help=help_, description=help_, epilog=EPILOGS.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    t = cmd("make-tiny", "write a tiny random FUSION checkpoint in the released on-disk format")
    t.add_argument("out", type=ot.output_dir_arg("OUT"), help="checkpoint folder (created with its parents)")
    t.add_argument("--llm", choices=tiny_names(), default="phi3")
    t.add_argument("--tower", choices=["so400m", "siglip2"], default="so400m")
    t.add_argument("--preset", choices=["tiny", "bench"], default="tiny")
    t.add_argument("--query-len", type=ot.query_lens_arg(), default="4,16,36,64,144",
                   help="comma list of trained latent counts (perfect squares)")
    t.add_argument("--seed", type=ot.int_arg("--seed", 0), default=0, help="weights' random seed (>= 0)")
    t.add_argument("--shards", type=ot.int_arg("--shards", 1, ot.SHARD_NAME_MAX), default=1,
                   help="write model-0000x-of-0000y.safetensors + index (1 to the tensor count)")
    t.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")

    a = cmd("ask", "answer a question about an image (PyTorch reference or a bundle)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint folder or hub id (runs the PyTorch reference)")
    src.add_argument("--bundle", help="exported bundle folder")
    a.add_argument("--image", required=True)
    a.add_argument("--question", required=True)
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    a.add_argument("--top-p", type=float, default=1.0)
    a.add_argument("--top-k", type=int, default=0)
    a.add_argument("--seed", type=int, default=None)
    a.add_argument("--query-len", type=int, default=None, help="latent count (one of the checkpoint's query_len)")
    a.add_argument("--image-tokens", type=int, choices=[144], default=None, help="144 = FUSION-L mode")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(a)
    a.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    a.add_argument("--strict", action="store_true",
                   help="refuse a bundle whose verification was skipped (--no-verify), forced or failed")
    a.add_argument("--logits-out", help="save the first generated step's logits (float32 .npy)")
    a.add_argument("--low-memory", action="store_true",
                   help="onnxruntime keeps the weights memory-mapped from the bundle, no prepacked copies: "
                        "for bundles larger than free RAM (decoding is slower)")

    from fusion_edge.export.cli_export import add_export_args, add_verify_args
    add_export_args(cmd("export", "export a checkpoint to a deployable, verified bundle"))
    add_verify_args(cmd("verify", "re-run a bundle's verification against the PyTorch reference"))
    for c in PLUGIN_COMMANDS:
        try:
            add_args, run = c.load()
        except ModuleNotFoundError as e:
            # its arguments are unknown: main() lets them through for this command only
            cmd(c.name, f"{c.help} (unavailable here: {_missing(e, c.name, c.extra).problem})").set_defaults(
                unavailable=_missing(e, c.name, c.extra))
        else:
            parser = cmd(c.name, c.help)
            add_args(parser)
            parser.set_defaults(run_command=run)
    return p


def _missing(e: ModuleNotFoundError, command: str, extra: str) -> FusionEdgeError:
    return missing_module_error(e, f"`fusion-edge {command}`", extra)


def main(argv=None) -> int:
    parser = _parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and getattr(args, "unavailable", None) is None:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        with printed(to_stderr=() if args.command in PROGRESS_COMMANDS else (RUNTIME,)):
            return _dispatch(args)
    except FusionEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def export_main(argv=None) -> int:
    return main(["export", *(sys.argv[1:] if argv is None else argv)])


def _dispatch(args) -> int:
    if getattr(args, "unavailable", None) is not None:
        raise args.unavailable
    if args.command == "make-tiny":
        from fusion_edge.export.tiny import make_tiny_checkpoint
        out = make_tiny_checkpoint(args.out, args.llm, args.tower, args.preset, args.query_len,
                                   args.seed, args.shards, args.dtype)
        print(f"wrote tiny FUSION checkpoint ({args.llm}, {args.tower}, {args.preset}) to {out}")
        return 0
    if args.command == "ask":
        from fusion_edge.ask import run_ask
        return run_ask(args)
    if args.command == "export":
        from fusion_edge.targets import run_export
        return run_export(args)
    if args.command == "verify":
        from fusion_edge.export.cli_export import run_verify
        return run_verify(args)
    return args.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
