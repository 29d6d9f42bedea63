"""Which llama.cpp settings crash or move the logits on this machine: the issue-11 diagnostic
that scripts/gpu_check.sh runs on a gguf bundle where llama.cpp has GPU offload.

Each variant answers one built-in question in its own child process (export/isolated.py), so
a crash is a row, not the end of the run. A variant sets, before the context exists:
  place      cpu (n_gpu_layers 0) | cuda (every layer offloaded)
  offload    ggml's op_offload: weight ops of ≥ 32 rows sent to the GPU even from host memory
  kv         f32 + flash attention off (fusion-edge's fp32 mode) | f16 + flash attention auto
  align      FUSION's alignment in llama.cpp's eval callback on | off
and reports max |Δ first logits| against the first variant (cpu, no offload, f32 KV, align on)
with the same alignment setting, or the crash with its signal and frames.

    python -m fusion_edge.bench.llama_probe BUNDLE [--cpu-only] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys

import numpy as np

log = logging.getLogger(__name__)

QUESTION = "What is on the table?"


def variants(cpu_only: bool) -> list[dict]:
    places = [("cpu", False), ("cpu", True)] + ([] if cpu_only else [("cuda", True)])
    return [{"place": p, "offload": o, "kv": kv, "align": a}
            for (p, o), kv, a in itertools.product(places, ("f32", "f16"), (True, False))]


def first_logits(bundle: str, v: dict) -> list[float]:
    """One greedy step of the built-in question under variant `v` → the first logits (V,)."""
    from fusion_edge.export.verify import builtin_images
    from fusion_edge.runtime.backends.llamacpp_llm import LlamaCppLLM
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(bundle, device="cpu", llm_device=v["place"], threads=2)
    llm = pipe.llm
    if not isinstance(llm, LlamaCppLLM):
        raise TypeError(f"{bundle} is not a gguf bundle (llama.cpp backend)")
    llm.op_offload = v["offload"]          # read when reserve() creates the context
    llm.parity = v["kv"] == "f32"
    pipe.interactions_enabled = v["align"]
    pipe.ask(pipe.look(builtin_images()[0]), QUESTION, max_new_tokens=1)    # raises if the alignment did not run
    log.info(f"{label(v)}: llm on {pipe.devices['llm']}, {llm.n_gpu_layers} layers offloaded")
    result = pipe.last_result
    assert result is not None                   # set by the ask above
    return result.first_logits.astype(float).tolist()


def label(v: dict) -> str:
    return (f"{v['place']}, offload {'on' if v['offload'] else 'off'}, kv {v['kv']}, "
            f"align {'on' if v['align'] else 'off'}")


def probe(bundle: str, cpu_only: bool = False, only: list[dict] | None = None) -> list[dict]:
    """[{variant, ok, max_dlogit | error}] for every variant (or `only` these), each in a child process."""
    from fusion_edge.bench import llama_probe    # by name: run as `python -m`, this file is __main__,
    from fusion_edge.export.isolated import run_isolated   # whose functions the child cannot import
    from fusion_edge.runtime.errors import FusionEdgeError
    rows: list[dict] = []
    base: dict[bool, np.ndarray] = {}
    for v in only or variants(cpu_only):
        try:
            logits = np.asarray(run_isolated(llama_probe.first_logits, bundle, v, what=label(v)))
        except FusionEdgeError as e:
            rows.append({"variant": v, "ok": False, "error": e.problem})
            continue
        ref = base.setdefault(v["align"], logits)
        rows.append({"variant": v, "ok": True, "max_dlogit": float(np.abs(logits - ref).max())})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["llama.cpp probe (max |Δ first logits| against cpu, offload off, kv f32, same align):"]
    for r in rows:
        what = f"max |Δ| {r['max_dlogit']:.3g}" if r["ok"] else f"FAILED: {r['error']}"
        lines.append(f"  {label(r['variant']):<44} {what}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--cpu-only", action="store_true", help="only the cpu placements (no GPU needed)")
    p.add_argument("--json", default=None, help="also write the rows here (bench/gpu_check.py reads them)")
    args = p.parse_args(argv)
    from fusion_edge.logs import PACKAGE, printed
    with printed(to_stderr=(PACKAGE,)):          # the variants' lines on stderr, the table on stdout
        rows = probe(args.bundle, args.cpu_only)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"bundle": args.bundle, "rows": rows}, fh, indent=2)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
