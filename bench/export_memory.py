"""Peak memory, wall time and bundle size of `fusion-export` at the REAL model size.

    python -m fusion_edge.bench.export_memory --work /tmp/expmem [--llm phi3.5-mini] [--tower siglip2]
        [--precision fp32|fp16|auto] [--json OUT] [--keep]

1. writes a random-weight checkpoint with the real dimensions (runtime/config.py presets;
   default Phi-3.5-mini + SigLIP2 giant-opt = FUSION-X-Phi3.5-3B) in BF16, tensor by tensor;
2. runs `fusion-export CKPT --target onnx --precision P --no-verify` in a subprocess and
   samples the resident memory of it and all its children (psutil) until it ends;
3. reports peak RSS (sampled sum over the process tree, and the kernel's per-process
   maximum), wall time, bundle size and its largest files, or the exporter's error;
4. deletes the multi-GB checkpoint and bundle unless --keep.
`--precision auto` exports fp32 when the free disk holds it (plus a margin), else fp16.
A script, not a test: it takes 10-30 minutes and tens of GB of disk.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from fusion_edge.runtime.errors import MissingExtraError

from .weights import disk_bytes

GiB = 1 << 30
LLM_FLAVOR = {"phi3.5-mini": "phi3", "llama3.1-8b": "llama3"}


def _psutil():
    try:
        import psutil
    except ImportError:
        raise MissingExtraError("psutil", "bench", "sampling the exporter's memory") from None
    return psutil


class TreeSampler:
    """Samples the summed RSS of a process and its descendants every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.25):
        psutil = _psutil()
        self.proc, self.period = psutil.Process(pid), period
        self.peak, self.peak_anon, self._stop = 0, 0, threading.Event()
        self.trace: list[tuple[float, int, int]] = []       # (seconds, RSS, anonymous RSS)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        """(RSS, anonymous RSS) summed over the tree. RSS also counts file pages mapped
        and touched (the exporter memory-maps the safetensors): those are clean and the
        kernel drops them under pressure; the anonymous part (RSS - shared) is not."""
        psutil = _psutil()
        rss = anon = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return 0, 0
        for p in procs:
            try:
                m = p.memory_info()
            except psutil.Error:
                continue
            rss += m.rss
            anon += m.rss - getattr(m, "shared", 0)
        return rss, anon

    def _run(self) -> None:
        last = -1e9
        while not self._stop.is_set():
            rss, anon = self._sample()
            self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            now = time.perf_counter() - self._t0
            if now - last >= 5.0:        # a coarse trace for the report: every 5 s
                self.trace.append((round(now, 1), rss, anon))
                last = now
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_sampled(cmd: list[str], log_path: Path, env=None) -> dict:
    """Run `cmd` to completion while sampling its memory; → figures and the output tail."""
    t0 = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)      # this child's own rusage (ru_maxrss)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        sampler.stop()
    wall = time.perf_counter() - t0
    tail = log_path.read_text(errors="replace")[-4000:]
    return {"cmd": cmd, "returncode": rc, "wall_s": wall, "peak_rss_tree_bytes": sampler.peak,
            "peak_anon_rss_tree_bytes": sampler.peak_anon,
            "maxrss_process_bytes": usage.ru_maxrss * 1024, "rss_trace": sampler.trace, "output_tail": tail}


def make_checkpoint(folder: Path, llm: str, tower: str) -> None:
    """Runs in its own process (see --make-checkpoint) so its memory is sampled alone."""
    from fusion_edge.export.tiny import make_tiny_checkpoint, preset_size
    size = preset_size(llm, tower)
    make_tiny_checkpoint(folder, LLM_FLAVOR[llm], tower, dtype="BF16", shards=8, size=size)


def choose_precision(asked: str, ckpt_bytes: int, free: int) -> str:
    """fp32 needs ~2x the BF16 checkpoint on disk, fp16 ~1x; keep 10% + 4 GiB spare."""
    if asked != "auto":
        return asked
    return "fp32" if free > 2.2 * ckpt_bytes + 4 * GiB else "fp16"


def largest_files(folder: Path, n: int = 6) -> list[tuple[str, int]]:
    files = [(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file()]
    return sorted(files, key=lambda f: -f[1])[:n]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_edge.bench.export_memory", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the checkpoint and the bundle")
    p.add_argument("--llm", default="phi3.5-mini", choices=sorted(LLM_FLAVOR))
    p.add_argument("--tower", default="siglip2", choices=["so400m", "siglip2"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"])
    p.add_argument("--json", dest="json_out", type=Path, help="write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle (tens of GB)")
    p.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)   # internal: the maker process
    args = p.parse_args(argv)
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint, args.llm, args.tower)
        return 0
    _psutil()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = work / "checkpoint", work / "bundle"
    report = {"llm": args.llm, "tower": args.tower, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cores": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
              "free_disk_before_bytes": shutil.disk_usage(work).free}
    try:
        print(f"writing a random {args.llm} + {args.tower} checkpoint (BF16) to {ckpt} ...", flush=True)
        make = run_sampled([sys.executable, "-m", "fusion_edge.bench.export_memory", "--work", str(work),
                            "--llm", args.llm, "--tower", args.tower, "--make-checkpoint", str(ckpt)],
                           work / "make.log")
        report["make_checkpoint"] = {k: v for k, v in make.items() if k != "rss_trace"}
        if make["returncode"] != 0:
            raise RuntimeError("writing the checkpoint failed:\n" + make["output_tail"])
        report["checkpoint_bytes"] = disk_bytes(ckpt)
        free = shutil.disk_usage(work).free
        precision = choose_precision(args.precision, report["checkpoint_bytes"], free)
        report.update({"precision": precision, "free_disk_after_checkpoint_bytes": free})
        print(f"checkpoint {report['checkpoint_bytes'] / GiB:.1f} GiB in {make['wall_s']:.0f} s "
              f"(peak RSS {make['peak_rss_tree_bytes'] / GiB:.2f} GiB); exporting onnx/{precision} ...", flush=True)
        exe = shutil.which("fusion-export")
        cmd = ([exe] if exe else [sys.executable, "-c", "import sys; from fusion_edge.cli import export_main; "
                                                         "sys.exit(export_main())"])
        cmd += [str(ckpt), "--target", "onnx", "--precision", precision, "--no-verify", "--quiet", "--overwrite",
                "-o", str(bundle)]
        exp = run_sampled(cmd, work / "export.log")
        report["export"] = exp
        if exp["returncode"] == 0 and bundle.is_dir():
            report["bundle_bytes"] = disk_bytes(bundle)
            report["bundle_files"] = len([f for f in bundle.rglob("*") if f.is_file()])
            report["largest_files"] = largest_files(bundle)
    finally:
        if not args.keep:
            for folder in (ckpt, bundle):
                shutil.rmtree(folder, ignore_errors=True)
            for stale in work.glob(".bundle.*"):          # an export killed half-way
                shutil.rmtree(stale, ignore_errors=True)
    print(format_report(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    return 0 if report.get("export", {}).get("returncode") == 0 else 1


def format_report(r: dict) -> str:
    lines = [f"export memory at real size: {r['llm']} + {r['tower']}, {r['cores']} cores, "
             f"{r['memory_bytes'] / GiB:.0f} GiB RAM, {r['date']}"]
    if "make_checkpoint" in r:
        m = r["make_checkpoint"]
        lines.append(f"  checkpoint (BF16): {r.get('checkpoint_bytes', 0) / GiB:.2f} GiB written in "
                     f"{m['wall_s']:.0f} s, "
                     f"peak RSS {m['peak_rss_tree_bytes'] / GiB:.2f} GiB")
    e = r.get("export")
    if e:
        lines.append(f"  fusion-export onnx/{r['precision']} --no-verify: exit {e['returncode']}, "
                     f"wall {e['wall_s']:.0f} s, "
                     f"peak RSS {e['peak_rss_tree_bytes'] / GiB:.2f} GiB (tree, sampled; anonymous "
                     f"{e.get('peak_anon_rss_tree_bytes', 0) / GiB:.2f} GiB), "
                     f"{e['maxrss_process_bytes'] / GiB:.2f} GiB (the process, kernel ru_maxrss)")
        if e["returncode"] == 0:
            lines.append(f"  bundle: {r['bundle_bytes'] / GiB:.2f} GiB in {r['bundle_files']} files; largest: "
                         + ", ".join(f"{n} {b / GiB:.2f} GiB" for n, b in r["largest_files"]))
        else:
            lines.append("  export FAILED; output tail:\n" + e["output_tail"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
