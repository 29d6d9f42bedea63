"""One weight matrix of FUSION-X's LLM through every onnxruntime CPU form the bundles can use:
fp32 MatMul, DynamicQuantizeMatMul with int8 weights (U8S8, the int8 bundles' kernels), and
MatMulNBits (int4, and 8-bit as the lm_head) at each block size and accuracy level, timed
at prefill rows and at one row (decode). Not a test: figures for issue 25's item 3.

    python -m fusion_edge.bench.kernels [--shape mlp|lm_head|K,N] [--rows 640] [--threads 1]
        [--block-sizes 32 64 128] [--accuracy-levels 0 4] [--repeats 5] [--json OUT]

Shapes (Phi-3.5-mini, FUSION-X-3B): mlp = the up projection 3072 x 8192, lm_head = 3072 x
32064. Weights are random (N(0, 0.02)); `rel_err` is max |y - y_fp32| / max |y_fp32| on the
prefill rows: the quantization error of that form on these weights. Each form is written by
the bundles' own quantizers (quantize/) and runs in its own session with the options every
bundle graph gets on the CPU (ort_session.make_session); the forms alternate within each
repeat so a change of load hits all of them alike; times are medians over the repeats.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from .serve_bench import provenance

SHAPES = {"mlp": (3072, 8192), "lm_head": (3072, 32064)}
DECODE_CALLS = 10       # one-row runs per timing: a single one is too short to time


def fp32_graph(w: np.ndarray, path: Path) -> Path:
    """One MatMul x (M, K) · W (K, N) → y, as the bundles' graphs store every projection."""
    from onnx import TensorProto, helper, numpy_helper

    from fusion_edge.quantize import graph_io
    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "kernel",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                          [numpy_helper.from_array(w, "W")])
    graph_io.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def forms(src: Path, block_sizes: list[int], levels: list[int]) -> dict[str, Callable[[Path], object]]:
    """name → writer of that form of the fp32 graph `src` to a path, by the bundles' own quantizers
    (quantize/): dynamic int8 (the int8 vision tower's form), int4 MatMulNBits (weight_int4, the
    int4 segments) and 8-bit MatMulNBits (weight_int8, the lm_head of int8 and int4 bundles)."""
    from fusion_edge.quantize import graph_io
    from fusion_edge.quantize.dynamic_int8 import quantize_dynamic_int8
    from fusion_edge.quantize.weight_int4 import quantize_int4
    from fusion_edge.quantize.weight_int8 import weight_only_int8

    def int8_only(dst: Path, bs: int, acc: int) -> None:
        graph_io.save(weight_only_int8(graph_io.load(src), ["matmul"], "cpu", bs, acc or None), dst)
    out: dict[str, Callable[[Path], object]] = {"fp32": lambda dst: shutil.copy(src, dst),
                                                "int8 dynamic U8S8": partial(quantize_dynamic_int8, src,
                                                                             component="kernel")}
    for bs in block_sizes:
        for acc in levels:
            out[f"MatMulNBits 4-bit block {bs} acc {acc}"] = partial(
                lambda dst, bs, acc: quantize_int4(src, dst, "cpu", bs, acc or None), bs=bs, acc=acc)
    for bs in block_sizes:
        for acc in levels:
            out[f"MatMulNBits 8-bit block {bs} acc {acc}"] = partial(int8_only, bs=bs, acc=acc)
    return out


def session(path: Path, threads: int):
    """The session options every bundle graph gets on the CPU (runtime/backends/ort_session.py)."""
    from fusion_edge.runtime.backends.ort_session import make_session
    return make_session(path, ["CPUExecutionProvider"], threads)


def measure(shape: tuple[int, int], rows: int, threads: int, block_sizes: list[int], levels: list[int],
            repeats: int) -> list[dict]:
    """One row per form: medians of prefill (rows x K) and one-row times, GOP/s, rel_err."""
    k, n = shape
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x1 = x[:1].copy()
    ref = x @ w
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="fusion-kernels-") as tmp:
        src = fp32_graph(w, Path(tmp) / "fp32.onnx")
        for i, (name, write) in enumerate(forms(src, block_sizes, levels).items()):
            write(Path(tmp) / f"form{i}.onnx")
            sessions[name] = session(Path(tmp) / f"form{i}.onnx", threads)
    times: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "row": []} for name in sessions}
    errors = {name: float(np.abs(s.run(None, {"x": x})[0] - ref).max() / np.abs(ref).max())
              for name, s in sessions.items()}                 # also the warm-up run
    for _ in range(repeats):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[name]["prefill"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(DECODE_CALLS):
                s.run(None, {"x": x1})
            times[name]["row"].append((time.perf_counter() - t) / DECODE_CALLS)
    return [{"form": name, "prefill_ms": 1e3 * statistics.median(t["prefill"]),
             "gop_per_s": 2 * rows * k * n / statistics.median(t["prefill"]) / 1e9,
             "row_ms": 1e3 * statistics.median(t["row"]), "rel_err": errors[name]}
            for name, t in times.items()]


def format_table(rows: list[dict], n_rows: int) -> str:
    lines = [f"| form | {n_rows} rows, ms | GOP/s | 1 row, ms | rel. error |", "|---|---|---|---|---|"]
    lines += [f"| {r['form']} | {r['prefill_ms']:.1f} | {r['gop_per_s']:.0f} | {r['row_ms']:.2f} | {r['rel_err']:.4f} |"
              for r in rows]
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int]:
    if text in SHAPES:
        return SHAPES[text]
    try:
        k, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: one of {', '.join(SHAPES)} or K,N") from None
    if k < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: K and N must be positive")
    return k, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=parse_shape, default=SHAPES["mlp"], help="mlp, lm_head or K,N")
    p.add_argument("--rows", type=int, default=640, help="prefill rows (default 640)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--accuracy-levels", type=int, nargs="+", default=[0, 4], choices=[0, 1, 2, 3, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.rows < 1 or args.threads < 1 or args.repeats < 1:
        p.error("--rows, --threads and --repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    source = provenance(argv, "fusion_edge.bench.kernels")
    rows = measure(args.shape, args.rows, args.threads, args.block_sizes, args.accuracy_levels, args.repeats)
    print(f"{source['started_utc']}  commit {source['commit']}  {source['cpu']}  threads {args.threads}  "
          f"load before {source['loadavg_before'][0]:.2f}  K x N = {args.shape[0]} x {args.shape[1]}\n"
          f"{source['command']}")
    print(format_table(rows, args.rows))
    if args.json:
        report = {"shape": list(args.shape), "rows": args.rows, "threads": args.threads, "repeats": args.repeats,
                  "forms": rows, "provenance": source, "loadavg_after": os.getloadavg()}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
