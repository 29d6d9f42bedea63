"""`fusion-edge bench`: the reference and every given bundle, in one run, on this machine.

Prints the tables; `--json` writes everything (raw samples included), `--plot` a PNG.
Exit code 0 when every backend ran, 1 when one failed (its error is in the report).
"""
from __future__ import annotations

import json
import os

from fusion_edge.runtime import option_types as ot

EPILOG = """examples:
  fusion-edge make-tiny bench-ckpt --preset bench
  fusion-export bench-ckpt --target onnx --precision fp32 -o b32
  fusion-export bench-ckpt --target onnx --precision fp16 -o b16
  fusion-edge bench --model bench-ckpt --bundles b32 b16 --json bench.json --plot bench.png

how to read the numbers: bench/README.md"""


def add_args(p) -> None:
    p.epilog = EPILOG
    p.add_argument("--model", required=True, help="the checkpoint the bundles were exported from "
                                                   "(runs the PyTorch reference, eager fp32)")
    p.add_argument("--reference-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="the reference's weights: bf16 where fp32 does not fit in memory (real size on a "
                        "24 GiB machine); its fidelity figures then compare against a bf16 model")
    p.add_argument("--bundles", nargs="+", required=True, metavar="B", help="bundle folders to measure")
    p.add_argument("--native", nargs="+", default=[], metavar="B",
                   help="gguf bundles to measure through the native runtime too (docs/native.md; "
                        "build/libfusion_edge.so or $FUSION_NATIVE_LIB)")
    from .cases import MAX_CASES
    p.add_argument("--cases", type=ot.int_arg("--cases", 1, MAX_CASES), default=2,
                   help=f"images (default 2, at most {MAX_CASES})")
    p.add_argument("--questions-per-image", type=ot.int_arg("--questions-per-image", 1), default=2,
                   help="questions per image; all but the first are follow-ups on the cached scene (default 2)")
    p.add_argument("--max-new-tokens", type=ot.int_arg("--max-new-tokens", 2), default=32,
                   help="greedy tokens per answer (default 32; 2 to the model's context)")
    p.add_argument("--repeats", type=ot.int_arg("--repeats", 1), default=3,
                   help="measured passes over all cases, round robin over the backends, each pass in a fresh "
                        "worker process (default 3)")
    p.add_argument("--warmup", type=ot.int_arg("--warmup", 0), default=1,
                   help="unmeasured warm-up questions at the start of each pass (default 1)")
    p.add_argument("--threads", type=ot.threads_arg(), default=os.cpu_count() or 1,
                   help=f"threads for every backend and the bandwidth probe (default: all cores; at most "
                        f"{ot.MAX_THREADS})")
    from fusion_edge.runtime.device_args import add_device_args
    add_device_args(p, default="cpu")
    p.add_argument("--query-len", type=int, default=None, help="latent count (default: each backend's)")
    p.add_argument("--bandwidth-mib", type=ot.int_arg("--bandwidth-mib", 1), default=256,
                   help="size of the bandwidth probe's array (at least 1; twice it must fit in free memory)")
    p.add_argument("--timeout", type=ot.float_arg("--timeout", 0, low_open=True), default=3600.0,
                   help="seconds per backend before it is abandoned (a finite number above 0)")
    p.add_argument("--json", dest="json_out", metavar="OUT", type=ot.output_file_arg("--json"),
                   help="write the full result as JSON")
    p.add_argument("--plot", metavar="OUT.png", type=ot.output_file_arg("--plot", ".png"),
                   help="write a PNG: TTFT split and decode tok/s per backend")


def run(args) -> int:
    from .report import format_report
    from .runner import Settings, run_bench
    if args.plot:
        from .plot import _pyplot
        _pyplot()          # a missing matplotlib fails before minutes of measuring
    s = Settings(model=args.model, bundles=list(args.bundles), native=list(args.native), cases=args.cases,
                 questions_per_image=args.questions_per_image, max_new_tokens=args.max_new_tokens,
                 repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device,
                 vision_device=args.vision_device, align_device=args.align_device, llm_device=args.llm_device,
                 tf32=args.tf32,
                 query_len=args.query_len, bandwidth_bytes=args.bandwidth_mib << 20, timeout_s=args.timeout,
                 reference_dtype=args.reference_dtype)
    result = run_bench(s)
    print(format_report(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
        print(f"wrote {args.json_out}")
    if args.plot:
        from .plot import write_plot
        print(f"wrote {write_plot(result, args.plot)}")
    return 0 if all(b["ok"] for b in result["backends"]) else 1
