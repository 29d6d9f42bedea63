"""Measure int8 vision towers against the fp32 one: inputs, quantizing (time, peak RSS), outputs and times.

    python -m fusion_edge.bench.vision_tower record FP32_BUNDLE INPUTS [--images 3] [--threads 2]
    python -m fusion_edge.bench.vision_tower quantize dynamic|static SRC.onnx DST.onnx [--calib RECORDING]
    python -m fusion_edge.bench.vision_tower compare INPUTS FP32.onnx Q.onnx [Q2.onnx ...] [--rounds 2]
        [--threads 2] [--json OUT]

`record` runs the fp32 pipeline (memory-mapped weights) on the first N built-in eval images and
saves each vision call's inputs as float32 npz (the 4 global tiles and the text-guided main tile).
`quantize` runs the exporter's quantizer for the vision graph (quantize/dynamic_int8.py or
static_int8.py with the recording's vision inputs) and prints its wall time and peak RSS (this
process's peak resident memory, bench/worker.py peak_rss_bytes). `compare` opens every graph with the runtime's
session options (runtime/backends/ort_session.py), runs each input on every graph in turn
(one warm-up round, then `--rounds` measured ones, graphs interleaved so that the machine's load
falls on all of them alike), and reports per input and graph the wall and process CPU time and,
against the first graph, max |Δ|, relative error ‖q − f‖/‖f‖, cosine and the lowest per-token
cosine; with date, CPU model, load and onnxruntime version. A benchmark tool, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .runner import machine_info
from .worker import peak_rss_bytes

VISION_INPUTS = ["pixels", "instruct_embeds", "instruct_keep"]


def record(bundle: Path, out: Path, images: int, threads: int) -> None:
    import numpy as np

    from fusion_edge.calibration.builtin import builtin_pairs
    from fusion_edge.runtime.pipeline import Pipeline
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.open(bundle, device="cpu", low_memory=True, threads=threads)
    calls: list[tuple[str, dict]] = []
    pipe.recorder = lambda name, inputs: calls.append((name, {k: np.array(v) for k, v in inputs.items()}))
    for key, image, question in builtin_pairs("eval", images)[:images]:
        pipe.ask(pipe.look(image), question, max_new_tokens=1)
        for name, feeds in calls:
            if name.startswith("vision"):
                np.savez(out / f"{key.replace(':', '_')}_{name}.npz", **feeds)
                print(key, name, {k: v.shape for k, v in feeds.items()}, flush=True)
        calls.clear()


def quantize(method: str, src: Path, dst: Path, calib: Path | None) -> dict:
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if method == "dynamic":
        from fusion_edge.quantize.dynamic_int8 import quantize_dynamic_int8
        report = quantize_dynamic_int8(src, dst, "vision")
    else:
        from fusion_edge.calibration.reader import GraphFeeds
        from fusion_edge.calibration.record import Recordings

        from fusion_edge.quantize.static_int8 import Int8Scheme, quantize_int8
        if calib is None:
            raise SystemExit("quantize static needs --calib RECORDING (fusion-edge calibrate)")
        report = quantize_int8(src, dst, GraphFeeds(Recordings.open(calib), "vision", VISION_INPUTS), "vision",
                               Int8Scheme.for_flavour("cpu"))
    return {"method": method, "src": str(src), "dst": str(dst), "wall_s": time.perf_counter() - t0,
            "peak_rss_bytes": peak_rss_bytes(), "quantized_weights": report["quantized_weights"],
            "calibration_samples": report["calibration_samples"], "files": report["files"]}


def compare(inputs: Path, graphs: list[Path], rounds: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime

    from fusion_edge.runtime.backends.ort_session import make_session
    feeds = [(p.stem, dict(np.load(p))) for p in sorted(inputs.glob("*.npz"))]
    if not feeds:
        raise SystemExit(f"no .npz inputs in {inputs} (`record` writes them)")
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": machine_info()["cpu"],
              "cores": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
              "load_avg_before": os.getloadavg(), "graphs": [str(g) for g in graphs], "rounds": rounds,
              "argv": sys.argv[1:], "sessions": {}, "inputs": {}}
    sessions = {}
    for g in graphs:
        t0 = time.perf_counter()
        sessions[g] = make_session(g, ["CPUExecutionProvider"], threads)
        result["sessions"][str(g)] = {"open_s": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes()}
    outputs: dict = {g: {} for g in graphs}
    times: dict = {g: {name: [] for name, _ in feeds} for g in graphs}
    for r in range(rounds + 1):                       # round 0 warms up
        for name, f in feeds:
            for g in graphs:
                c0, t0 = time.process_time(), time.perf_counter()
                outputs[g][name] = sessions[g].run(None, f)[0]
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if r:
                    times[g][name].append({"wall_s": wall, "cpu_s": cpu})
                print(f"round {r} {name} {g}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    ref = graphs[0]
    for name, _ in feeds:
        b = outputs[ref][name].astype(np.float64)
        row = {}
        for g in graphs:
            a = outputs[g][name].astype(np.float64)
            token_cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            row[str(g)] = {"times": times[g][name], "max_abs": float(np.abs(a - b).max()),
                           "ref_max_abs": float(np.abs(b).max()),
                           "rel_error": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
                           "cosine": float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))),
                           "cosine_min_token": float(token_cos.min())}
        result["inputs"][name] = row
    result["load_avg_after"] = os.getloadavg()
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def format_compare(result: dict) -> str:
    rows = [f"{result['date']}, {result['cpu']}, {result['threads']} threads, onnxruntime {result['onnxruntime']}, "
            f"load {result['load_avg_before'][0]:.1f} → {result['load_avg_after'][0]:.1f}; best of "
            f"{result['rounds']} rounds"]
    for name, row in result["inputs"].items():
        for g, d in row.items():
            wall, cpu = min(t["wall_s"] for t in d["times"]), min(t["cpu_s"] for t in d["times"])
            rows.append(f"{name:30s} {g:40s} {wall:7.2f} s wall {cpu:7.2f} s CPU  max|Δ| {d['max_abs']:.4g} "
                        f"(of {d['ref_max_abs']:.4g})  rel {d['rel_error']:.4f}  cos {d['cosine']:.6f}  "
                        f"min token cos {d['cosine_min_token']:.6f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_edge.bench.vision_tower",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="the fp32 pipeline's vision inputs for built-in eval images")
    r.add_argument("bundle", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--images", type=int, default=3)
    r.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("quantize", help="quantize one vision graph as the exporter does; time and peak RSS")
    q.add_argument("method", choices=["dynamic", "static"])
    q.add_argument("src", type=Path)
    q.add_argument("dst", type=Path)
    q.add_argument("--calib", type=Path, help="static: a recording (fusion-edge calibrate)")
    c = sub.add_parser("compare", help="outputs and times of the graphs against the first, on recorded inputs")
    c.add_argument("inputs", type=Path)
    c.add_argument("graphs", type=Path, nargs="+")
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--json", dest="json_out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "record":
        record(args.bundle, args.out, args.images, args.threads)
    elif args.cmd == "quantize":
        print(json.dumps(quantize(args.method, args.src, args.dst, args.calib)))
    else:
        result = compare(args.inputs, args.graphs, args.rounds, args.threads)
        print(format_compare(result))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
