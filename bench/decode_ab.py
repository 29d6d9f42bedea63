"""In-process A/B of the LLM decode step: ms per token at a given number of cached positions,
for several bundles in one process, in alternating blocks (so load changes hit every entry
alike). Not a test: figures for bench/README.md.

  python bench/decode_ab.py --positions 800 b32 b32:segments bgfp32

An entry is BUNDLE or BUNDLE:segments (an ONNX bundle decoding through its segments, as
bundles did before the decode graph). Each block prefills `--positions` random embedding
rows (timed separately: the prefill column), then times `--steps` greedy decode steps (the ONNX decode graph's in-graph
argmax where the bundle has one; the argmax of the logits otherwise).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
from fusion_edge.runtime.pipeline import Pipeline


def open_engine(entry: str, threads: int):
    path, _, mode = entry.partition(":")
    llm = Pipeline.open(path, device="cpu", threads=threads).llm
    if mode == "segments":
        if not isinstance(llm, OnnxLLM):
            raise SystemExit(f"{path} is not an ONNX bundle: :segments is for ONNX bundles")
        llm.decode_sess = None
    elif mode:
        raise SystemExit(f"unknown mode {mode!r} in {entry!r} (only :segments)")
    return llm


def step_fn(llm):
    greedy = getattr(llm, "decode_greedy", None)
    return greedy if greedy is not None else (lambda tok: int(np.argmax(llm.decode(tok))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entries", nargs="+")
    ap.add_argument("--positions", type=int, default=800)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engines = {e: open_engine(e, args.threads) for e in args.entries}
    hidden = next(iter(engines.values())).cfg.llm.hidden_size
    x = np.random.default_rng(0).standard_normal((args.positions, hidden)).astype(np.float32)
    times: dict[str, list[float]] = {e: [] for e in engines}
    prefill: dict[str, list[float]] = {e: [] for e in engines}
    for _ in range(args.blocks):
        for entry, llm in engines.items():
            llm.reserve(args.positions + args.steps + 1)
            t = time.perf_counter()
            llm.prefill(x)
            prefill[entry].append((time.perf_counter() - t) * 1e3)
            step, tok = step_fn(llm), 7
            t = time.perf_counter()
            for _ in range(args.steps):
                tok = step(tok)
            times[entry].append((time.perf_counter() - t) / args.steps * 1e3)
    print(f"| entry | ms/token median (best) | tok/s | prefill of {args.positions} ms median |")
    print("|---|---|---|---|")
    for entry, ts in times.items():
        med = statistics.median(ts)
        print(f"| {entry} | {med:.1f} ({min(ts):.1f}) | {1e3 / med:.1f} | {statistics.median(prefill[entry]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
