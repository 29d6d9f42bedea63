"""The real-size benchmark: FUSION-X-Phi3.5-3B dimensions, random weights, this machine.

    python -m fusion_edge.bench.real_size --work /data/real [--threads N] [--calib-samples 2]
        [--max-new-tokens 16] [--json OUT] [--keep-fp32]
        [--llm-layers N --vision-layers M] [--bundles B ...] [--vision-precision int8|int8-dynamic|int8-static|fp32]

A script, not a test: about two hours and ~60 GB of disk on a 2-core, 24 GiB machine.
The quick real-width check: `--llm-layers 4 --vision-layers 6` keeps every width
(hidden 3072, MLP 8192, vocab 32064; tower 1536 / 6144) and cuts the depth: the LLM to N
layers with the interaction layers every 3rd layer that has a layer after it (0, 3, ...; at
most 10; N = 4: layer 0 only), the tower to M running layers with its early/late split in the
released ratio (19 of 39, written as config.json `mm_vision_early_layers`; export/tiny.py), so
the reference and the bundles read the same schedule. Same steps, same JSON; without the two
options nothing changes (the full depth is the reference figure). `--bundles` builds and
benchmarks a subset; `--vision-precision` sets the ONNX bundles' tower (default int8, dynamic: the
note at BUNDLES; fp32 as the gguf bundles').
Each step is skipped when its output already exists, so an interrupted run resumes.
1. checkpoint: Phi-3.5-mini + SigLIP2 giant-opt dimensions (runtime/config.py presets),
   BF16, 8 shards, written tensor by tensor (export/tiny.py);
2. fp32 ONNX bundle (`--no-verify`: an fp32 reference of 5.8 G parameters needs 23 GB);
3. one calibration recording of it (`fusion-edge calibrate`; the fp32 weights do not fit in
   RAM prepacked, so its sessions run memory-mapped, runtime/memory.py);
4. ONNX int8 and int4 bundles from it with that recording, `--no-verify` (their gate
   compares against the fp32 pipeline and the fp32 reference, which do not fit), the vision
   tower dynamic int8 (the note at BUNDLES); one after the other (onnxruntime's quantizer
   writes `<graph>-inferred.onnx` beside the source graph);
5. the fp32 bundle is removed (21.6 GiB) unless --keep-fp32;
6. GGUF Q8_0 (`--precision int8`) and Q4_K_M (`--precision int4`) bundles, `--no-verify`;
7. `fusion-edge bench` on all four with the PyTorch reference in bfloat16 as the same-run
   anchor: time to first token split (preprocess, global tiles, main tile, prefill),
   follow-up TTFT, decode tok/s against the measured bandwidth bound, peak RSS, and first-step
   agreement with the bf16 reference.
Every export step's wall time and peak RSS (process tree, sampled) go into the JSON too.
The bundles are unverified by construction; the figures are speed and memory, and the
agreement columns compare quantized bundles with a bf16 model, not a gate.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .export_memory import GiB, run_sampled
from .weights import disk_bytes

LLM, TOWER = "phi3.5-mini", "siglip2"


def cli(*args: str | int | Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from fusion_edge.cli import main; sys.exit(main())", *map(str, args)]


def steps(work: Path, calib_samples: int, threads: int, llm_layers: int | None = None,
          vision_layers: int | None = None, bundles=None, vision: str = "fp32") -> list[tuple[str, Path, list[str]]]:
    """(name, output folder, command) in order; `bundles`: the subset of BUNDLES to build
    (the fp32 export and the calibration only where an ONNX bundle needs them)."""
    ckpt, fp32, rec = work / "ckpt", work / "onnx-fp32", work / "calib"
    make = [sys.executable, "-m", "fusion_edge.bench.real_size", "--make-checkpoint", str(ckpt)]
    make += [*(["--llm-layers", str(llm_layers)] if llm_layers else []),
             *(["--vision-layers", str(vision_layers)] if vision_layers else [])]
    vis = ("--vision-precision", vision)
    quiet = ("--no-verify", "--quiet")
    wanted = set(BUNDLES if bundles is None else bundles)
    onnx = any(b.startswith("onnx") for b in wanted)
    return [(n, o, c) for n, o, c in [
        ("checkpoint", ckpt, make),
        ("onnx-fp32", fp32, cli("export", ckpt, "--target", "onnx", "--precision", "fp32", *quiet, "-o", fp32)),
        ("calibrate", rec, cli("calibrate", fp32, "-o", rec, "--samples", calib_samples, "--holdout", 0,
                               "--threads", threads, "--quiet")),
        ("onnx-int8", work / "onnx-int8", cli("export", fp32, "--target", "onnx", "--precision", "int8",
                                               "--calib", rec, *vis, *quiet, "-o", work / "onnx-int8")),
        ("onnx-int4", work / "onnx-int4", cli("export", fp32, "--target", "onnx", "--precision", "int4",
                                               "--calib", rec, *vis, *quiet, "-o", work / "onnx-int4")),
        ("gguf-q8_0", work / "gguf-q8_0", cli("export", ckpt, "--target", "gguf", "--precision", "int8",
                                               *quiet, "-o", work / "gguf-q8_0")),
        ("gguf-q4_k_m", work / "gguf-q4_k_m", cli("export", ckpt, "--target", "gguf", "--precision", "int4",
                                                   "--gguf-quant", "Q4_K_M", *quiet, "-o", work / "gguf-q4_k_m")),
    ] if n == "checkpoint" or n in wanted or (onnx and n in ("onnx-fp32", "calibrate"))]


BUNDLES = ("onnx-int8", "onnx-int4", "gguf-q8_0", "gguf-q4_k_m")
# The ONNX bundles' vision tower is int8 by default: dynamic int8 (quantize/dynamic_int8.py,
# no calibration), which quantized the full-depth 4.5 GB tower at 13.0 GiB peak RSS in 170 s
# (docs/quantization.md, 2026-12-07). Until then it was kept fp32: onnxruntime's
# quantize_static was killed at 23.7 GB on a 24 GiB machine, by the live activations of its
# calibration session (fixed in static_int8.py: 13.6 GiB, `--vision-precision int8-static`).
# `--vision-precision fp32` keeps the tower fp32 as the gguf bundles do (the four then differ
# in their LLM only).


def run_step(name: str, out: Path, cmd: list[str], work: Path, report: dict) -> None:
    if out.is_dir():
        print(f"{name}: {out} exists, kept", flush=True)
        return
    print(f"{name} ...", flush=True)
    r = run_sampled(cmd, work / f"{name}.log", env=dict(os.environ, PYTHONUNBUFFERED="1"))
    report["steps"][name] = {k: v for k, v in r.items() if k != "rss_trace"} | {
        "bytes": disk_bytes(out) if out.is_dir() else None}
    print(f"{name}: exit {r['returncode']}, {r['wall_s']:.0f} s, peak RSS {r['peak_rss_tree_bytes'] / GiB:.2f} GiB"
          + (f", {disk_bytes(out) / GiB:.2f} GiB on disk" if out.is_dir() else ""), flush=True)
    if r["returncode"] != 0 or not out.is_dir():
        raise RuntimeError(f"step {name} failed:\n{r['output_tail']}")


def checkpoint_size(llm_layers: int | None = None, vision_layers: int | None = None):
    """The released widths; the depths cut where given (the quick check)."""
    from dataclasses import replace

    from fusion_edge.export.tiny import preset_size
    size = preset_size(LLM, TOWER)
    if llm_layers is not None:
        size = replace(size, layers=llm_layers)
    if vision_layers is not None:
        size = replace(size, tower_layers=vision_layers)
    return size


def make_checkpoint(folder: Path, llm_layers: int | None = None, vision_layers: int | None = None) -> None:
    from fusion_edge.export.tiny import make_tiny_checkpoint
    make_tiny_checkpoint(folder, "phi3", TOWER, dtype="BF16", shards=8,
                         size=checkpoint_size(llm_layers, vision_layers))


def check_depths(ckpt: Path, llm_layers: int | None, vision_layers: int | None) -> dict:
    """An existing checkpoint (a resumed run) must have the depths asked for; → its schedule."""
    from fusion_edge.runtime.config import load_fusion_config
    cfg = load_fusion_config(ckpt)
    want = checkpoint_size(llm_layers, vision_layers)
    got = (cfg.llm.num_layers, cfg.tower.num_layers)
    if got != (want.layers, want.tower_layers or cfg.tower.num_layers) or (
            vision_layers is None and cfg.tower.early_override is not None):
        raise SystemExit(f"{ckpt} has {got[0]} LLM / {got[1]} tower layers, not what the options ask for: "
                         "use another --work folder")
    return {"llm_layers": cfg.llm.num_layers, "vision_layers": cfg.tower.num_layers,
            "interaction_layers": list(cfg.interaction_layers), "early_layers": cfg.tower.early_layers}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_edge.bench.real_size", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="folder for the checkpoint, the bundles and the logs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--calib-samples", type=int, default=2, help="calibration pairs (each a full fp32 prefill)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--questions-per-image", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", dest="json_out", type=Path)
    p.add_argument("--keep-fp32", action="store_true", help="keep the 21.6 GiB fp32 bundle")
    p.add_argument("--llm-layers", type=int, help="quick check: LLM layers (real widths; default: all 32)")
    p.add_argument("--vision-layers", type=int, help="quick check: tower layers that run (default: all 39)")
    p.add_argument("--bundles", nargs="+", choices=BUNDLES, help="build and benchmark only these (default: all)")
    from fusion_edge.runtime.precisions import VISION_PRECISIONS
    p.add_argument("--vision-precision", choices=list(VISION_PRECISIONS), default="int8",
                   help="the ONNX bundles' tower (default int8: dynamic int8; fp32 as the gguf bundles')")
    p.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)    # internal: the maker process
    args = p.parse_args(argv)
    for name in ("llm_layers", "vision_layers"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            p.error(f"--{name.replace('_', '-')} is too small")
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint, args.llm_layers, args.vision_layers)
        return 0
    if args.work is None:
        p.error("--work is required")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bundles = [b for b in BUNDLES if b in (args.bundles or BUNDLES)]
    report = {"llm": LLM, "tower": TOWER, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "threads": args.threads, "argv": sys.argv[1:] if argv is None else list(argv),
              "load_avg_before": os.getloadavg(), "bundles": bundles,
              "onnx_vision_precision": args.vision_precision, "steps": {}}
    t0 = time.monotonic()
    for name, out, cmd in steps(work, args.calib_samples, args.threads, args.llm_layers, args.vision_layers,
                                bundles, args.vision_precision):
        if name.startswith("gguf") and not args.keep_fp32:
            shutil.rmtree(work / "onnx-fp32", ignore_errors=True)      # disk: 21.6 GiB
        run_step(name, out, cmd, work, report)
        if name == "checkpoint":
            report["depths"] = check_depths(out, args.llm_layers, args.vision_layers)
    report["bench"] = bench(work, args, bundles)
    report["summary"] = summary(report["bench"])
    report["wall_s"] = time.monotonic() - t0
    report["load_avg_after"] = os.getloadavg()
    out = args.json_out or work / "real_size.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")
    return 0 if all(b["ok"] for b in report["bench"]["backends"]) else 1


def bench(work: Path, args, bundles=BUNDLES) -> dict:
    from fusion_edge.logs import printed

    from .report import format_report
    from .runner import Settings, run_bench
    s = Settings(model=str(work / "ckpt"), bundles=[str(work / b) for b in bundles], cases=1,
                 questions_per_image=args.questions_per_image, max_new_tokens=args.max_new_tokens, repeats=1,
                 warmup=args.warmup, threads=args.threads, reference_dtype="bf16", timeout_s=3 * 3600)
    with printed():                     # the passes' progress lines, as `fusion-edge bench` shows them
        result = run_bench(s, workdir=work / "bench-run")
    print(format_report(result), flush=True)
    for b in result["backends"]:
        b.pop("first_logits", None)
    return result


def summary(result: dict) -> list[dict]:
    """Per backend, the headline figures at the top level of the JSON (all of them are also in
    `bench.backends[i]`: `figures`, `ratios`, `ratios_best`, `decode_fraction_of_bound`):
    TTFT new image, follow-up TTFT, decode tok/s (medians), fraction of the bandwidth bound,
    peak RSS, and the ratios to the reference of this run (bf16; time ratios < 1 = faster,
    decode ratio > 1 = faster)."""
    out = []
    for b in result["backends"]:
        row = {"name": b["name"], "kind": b.get("kind"), "ok": b["ok"]}
        if b["ok"]:
            med = {k: (b["figures"].get(k) or {}).get("median")
                   for k in ("ttft_s", "followup_ttft_s", "decode_tokens_per_s")}
            r = b.get("ratios") or {}
            row |= med | {"decode_fraction_of_bound": b.get("decode_fraction_of_bound"),
                          "decode_bound_tokens_per_s": b.get("decode_bound_tokens_per_s"),
                          "decode_fraction_of_read_bound": b.get("decode_fraction_of_read_bound"),
                          "decode_read_bound_tokens_per_s": b.get("decode_read_bound_tokens_per_s"),
                          "peak_rss_bytes": b.get("peak_rss_bytes"),
                          "ratios": {"ttft_new_image": r.get("ttft_s"), "ttft_followup": r.get("followup_ttft_s"),
                                     "decode_tokens_per_s": r.get("decode_tokens_per_s"),
                                     "peak_rss": r.get("peak_rss_bytes")}}
        else:
            row["error"] = b.get("error")
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
