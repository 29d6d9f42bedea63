"""One weight matrix of FUSION-X's LLM through every onnxruntime CPU form the bundles can use:
fp32 MatMul, DynamicQuantizeMatMul with int8 weights (U8S8, the int8 bundles' kernels), and
MatMulNBits (int4, and 8-bit as the lm_head) at each block size and accuracy level, timed
at prefill rows and at one row (decode). Not a test: figures for issue 25's item 3.

    python -m fusion_edge.bench.kernels [--shape mlp|lm_head|K,N] [--rows 640] [--threads 1]
        [--block-sizes 32 64 128] [--accuracy-levels 0 4] [--repeats 5] [--json OUT]

Shapes (Phi-3.5-mini, FUSION-X-3B): mlp = the up projection 3072 x 8192, lm_head = 3072 x
32064. Weights are random (N(0, 0.02)); `rel_err` is max |y - y_fp32| / max |y_fp32| on the
prefill rows: the quantization error of that form on these weights. Every form runs in its
own session (spinning off, as the bundles' sessions), and the forms alternate within each
repeat so a change of load hits all of them alike; times are medians over the repeats.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .serve_bench import provenance

SHAPES = {"mlp": (3072, 8192), "lm_head": (3072, 32064)}
DECODE_CALLS = 10       # one-row runs per timing: a single one is too short to time


def _graph(nodes: list, inits: list, k: int, n: int):
    from onnx import TensorProto, helper
    g = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], inits)
    ops = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(g, opset_imports=ops, ir_version=10)


def fp32_model(w: np.ndarray):
    from onnx import helper, numpy_helper
    return _graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [numpy_helper.from_array(w, "W")], *w.shape)


def dynamic_u8s8_model(w: np.ndarray):
    """int8 weights, one scale per output column; activations quantized per run (uint8)."""
    from onnx import helper, numpy_helper
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)                 # (N,)
    wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "Wq", "ws", "wz"], ["y"], domain="com.microsoft")
    inits = [numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros_like(scale, np.int8), "wz")]
    return _graph([node], inits, *w.shape)


def nbits_model(w: np.ndarray, bits: int, block_size: int, accuracy_level: int):
    """onnxruntime's own weight-only quantizer, as quantize/weight_int4.py and weight_int8.py use it."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from fusion_edge.quantize import graph_io
    with graph_io.quiet_ort_logging():
        q = MatMulNBitsQuantizer(fp32_model(w), bits=bits, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level or None, quant_format=QuantFormat.QOperator)
        q.process()
    return q.model.model


def forms(w: np.ndarray, block_sizes: list[int], levels: list[int]) -> dict[str, Callable[[], Any]]:
    """name → model builder, in the order the table lists them."""
    out: dict[str, Callable[[], Any]] = {"fp32": lambda: fp32_model(w),
                                         "int8 dynamic U8S8": lambda: dynamic_u8s8_model(w)}
    for bits in (4, 8):
        for bs in block_sizes:
            for acc in levels:
                out[f"MatMulNBits {bits}-bit block {bs} acc {acc}"] = partial(nbits_model, w, bits, bs, acc)
    return out


def session(model, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure(shape: tuple[int, int], rows: int, threads: int, block_sizes: list[int], levels: list[int],
            repeats: int) -> list[dict]:
    """One row per form: medians of prefill (rows x K) and one-row times, GOP/s, rel_err."""
    k, n = shape
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x1 = x[:1].copy()
    ref = x @ w
    sessions = {name: session(build(), threads) for name, build in forms(w, block_sizes, levels).items()}
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
