"""One benchmark run: the reference and every bundle, each in its own worker process,
on the same images and questions, plus this machine's memory bandwidth; then the
derived figures (summaries, ratios to the reference, fraction of the decode bound,
fidelity against the reference).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion_edge import __version__
from fusion_edge.runtime.errors import BundleError, FusionEdgeError, OptionError
from fusion_edge.runtime.option_types import check_float, check_int, check_threads

from .bandwidth import measure_bandwidth
from .cases import MAX_CASES, write_images
from .stats import summarize
from .worker import IMAGE_FIGURES, QUESTION_FIGURES

log = logging.getLogger(__name__)

FIGURES = IMAGE_FIGURES + QUESTION_FIGURES
SCALARS = ("load_s", "peak_rss_bytes", "disk_bytes", "llm_bytes_per_token")


class BenchError(FusionEdgeError):
    """The benchmark cannot run with the given settings."""


@dataclass
class Settings:
    model: str
    bundles: list[str]
    native: list[str] = field(default_factory=list)     # gguf bundles run by the native runtime
    cases: int = 2
    questions_per_image: int = 2
    max_new_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    threads: int = os.cpu_count() or 1
    device: str = "cpu"
    vision_device: str | None = None
    align_device: str | None = None
    llm_device: str | None = None
    tf32: bool = False
    query_len: int | None = None
    bandwidth_bytes: int = 256 << 20
    timeout_s: float = 3600.0
    reference_dtype: str = "fp32"        # bf16 where an fp32 reference does not fit (real-size runs)

    def check(self) -> None:
        """The settings' ranges (the command line's types check the same, bench/cli.py): BenchError.
        The counts have no upper bound but --cases (its images are written first): a large one
        only runs long. Checked against the bundles and the machine: _check_inputs."""
        for name, low, high in (("cases", 1, MAX_CASES), ("questions_per_image", 1, None), ("repeats", 1, None),
                                ("max_new_tokens", 2, None), ("warmup", 0, None)):
            option = f"--{name.replace('_', '-')}"
            try:
                check_int(getattr(self, name), option, low, high)
            except OptionError as e:
                raise BenchError(e.problem, e.fix) from None
        try:
            check_threads(self.threads, "--threads")
            check_float(self.timeout_s, "--timeout", 0, low_open=True)
            check_int(self.bandwidth_bytes, "bandwidth_bytes", 1 << 20, fix="pass --bandwidth-mib 1 or more")
        except OptionError as e:
            raise BenchError(e.problem, e.fix) from None


def run_bench(s: Settings, workdir: str | os.PathLike | None = None) -> dict:
    """→ the full result (the `--json` document)."""
    s.check()
    fingerprint = _check_inputs(s)
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as tmp:
        work = Path(workdir or tmp)
        images = [str(p) for p in write_images(work / "images", s.cases)]
        log.info(f"memory bandwidth probes ({s.bandwidth_bytes >> 20} MiB copy and read, {s.threads} threads) ...")
        bw = measure_bandwidth(s.bandwidth_bytes, repeats=5, threads=s.threads)
        bw_read = measure_bandwidth(s.bandwidth_bytes, repeats=5, threads=s.threads, mode="read")
        specs = [("--reference", s.model)] + [("--bundle", b) for b in s.bundles] + [("--native", b) for b in s.native]
        runs: list[list[dict]] = [[] for _ in specs]
        for rep in range(s.repeats):    # round robin: load from other work hits every backend alike
            for i, spec in enumerate(specs):
                if runs[i] and not runs[i][-1].get("ok"):
                    continue            # failed once: reported, not retried
                log.info(f"pass {rep + 1}/{s.repeats}, backend {i + 1}/{len(specs)}: {spec[1]} ...")
                runs[i].append(run_worker(spec, images, s, work / f"backend_{i:02d}_pass_{rep}"))
    backends = [derive(merge_passes(r), bw["bytes_per_s"], bw_read["bytes_per_s"]) for r in runs]
    _name_uniquely(backends)
    add_comparisons(backends)
    return {"fusion_edge": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {**machine_info(), "load_avg_1min_before": load_before}, "threads": s.threads,
            "settings": {k: v for k, v in vars(s).items() if k not in ("model", "bundles", "native")},
            "model": s.model, "source_fingerprint": fingerprint, "bandwidth": bw, "bandwidth_read": bw_read,
            "backends": backends}


def _check_inputs(s: Settings) -> str | None:
    """Fail fast on a missing bundle or one built from another checkpoint."""
    from fusion_edge.runtime.bundle import Bundle
    if not s.bundles:
        raise BundleError("no bundle to benchmark.", "pass --bundles B1 [B2 ...] (folders made by fusion-export)")
    from fusion_edge.runtime.memory import available_bytes
    from fusion_edge.runtime.pipeline import bundle_context
    from fusion_edge.runtime.prompt import check_max_new_tokens
    free = available_bytes()
    if free is not None and 2 * s.bandwidth_bytes > free * 0.8:      # two arrays: source and destination
        raise BenchError(f"--bandwidth-mib {s.bandwidth_bytes >> 20} needs {2 * s.bandwidth_bytes >> 20} MiB, more "
                         f"than this machine's {free >> 20} MiB available.",
                         f"pass --bandwidth-mib {max(1, int(free * 0.4) >> 20)} or less (256, the default, is "
                         "plenty to pass the caches)")
    ckpt = None
    if Path(s.model).is_dir():
        from fusion_edge.export.checkpoint import open_checkpoint
        ckpt = open_checkpoint(s.model)
        if s.query_len is not None:
            ckpt.config.check_query_len(s.query_len)
    for b in s.bundles + s.native:
        bundle = Bundle.open(b, check_hashes=False)     # the worker checks hashes (timed as load)
        if ckpt is not None:
            bundle.check_source(ckpt.fingerprint)
        if s.query_len is not None:
            bundle.config.check_query_len(s.query_len)
        check_max_new_tokens(s.max_new_tokens, *bundle_context(bundle))
    return ckpt.fingerprint() if ckpt is not None else None


def device_argv(s: Settings) -> list[str]:
    from fusion_edge.runtime.device_args import device_argv as argv
    return argv(s)


def run_worker(spec: tuple[str, str], images: list[str], s: Settings, out: Path) -> dict:
    """Run one pass of one backend in a fresh worker process (warm-up + every image once);
    → its result.json (with `error` on failure)."""
    cmd = [sys.executable, "-m", "fusion_edge.bench.worker", spec[0], spec[1], "--out", str(out),
           "--images", *images, "--questions-per-image", str(s.questions_per_image),
           "--max-new-tokens", str(s.max_new_tokens), "--repeats", "1", "--warmup", str(s.warmup),
           "--threads", str(s.threads), *device_argv(s)]
    if spec[0] == "--reference":
        cmd += ["--reference-dtype", s.reference_dtype]
    if s.query_len:
        cmd += ["--query-len", str(s.query_len)]
    env = dict(os.environ, OMP_NUM_THREADS=str(s.threads), PYTHONUNBUFFERED="1")
    out.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=s.timeout_s)
        tail = (proc.stderr or "")[-2000:]
    except subprocess.TimeoutExpired:
        return _failed(spec, "Timeout", f"the worker ran longer than {s.timeout_s:.0f} s")
    res_path = out / "result.json"
    if not res_path.is_file():
        return _failed(spec, "WorkerCrashed", f"exit code {proc.returncode}; stderr: {tail}")
    result = json.loads(res_path.read_text())
    result["spec"] = list(spec)
    logits = out / "first_logits.npy"
    if result.get("ok") and logits.is_file():
        result["first_logits"] = np.load(logits)
    return result


def _failed(spec, kind: str, message: str) -> dict:
    return {"ok": False, "spec": list(spec), "error": {"type": kind, "message": message}}


def merge_passes(passes: list[dict]) -> dict:
    """One backend's passes (one worker process each) → one raw record: samples pooled,
    answers and logits of the first pass, the highest peak RSS, the median load time."""
    failed = [p for p in passes if not p.get("ok")]
    if failed:
        return failed[0]
    out = dict(passes[0])
    out["samples"] = {k: [v for p in passes for v in p["samples"][k]] for k in passes[0]["samples"]}
    for k in ("prompt_tokens", "new_tokens"):
        out[k] = [v for p in passes for v in p[k]]
    for k in ("peak_rss_bytes", "rss_after_load_bytes"):
        out[k] = max(p[k] for p in passes)
    out["load_s_samples"] = [p["load_s"] for p in passes]
    out["load_s"] = float(np.median(out["load_s_samples"]))
    out["passes"] = len(passes)
    return out


def derive(raw: dict, bandwidth: float, read_bandwidth: float | None = None) -> dict:
    """A worker's raw samples → the reported per-backend record. Two decode bounds: the copy
    probe's (read + write counted, the figure reported since the start) and the read-only
    probe's (decode only reads its weights: the tighter one)."""
    info = raw.get("backend") or {"kind": "reference" if raw["spec"][0] == "--reference" else "bundle",
                                  "name": Path(raw["spec"][1]).name, "path": raw["spec"][1]}
    rec = {**info, "ok": bool(raw.get("ok")), "threads": raw.get("threads")}
    if not rec["ok"]:
        err = raw.get("error", {})
        rec["error"] = f"{err.get('type', 'Error')}: {err.get('message', '')}".strip()
        return rec
    rec.update({k: raw[k] for k in ("load_s", "peak_rss_bytes", "rss_after_load_bytes")})
    rec["load_s_samples"] = raw.get("load_s_samples", [raw["load_s"]])
    rec["passes"] = raw.get("passes", 1)
    rec["figures"] = {k: summarize(raw["samples"][k]) for k in FIGURES}
    rec["prompt_tokens"] = int(np.median(raw["prompt_tokens"]))
    rec["new_tokens_mean"] = float(np.mean(raw["new_tokens"]))
    rec["answers"] = raw["answers"]
    rec["_first_logits"] = raw.get("first_logits")
    bound = bandwidth / rec["llm_bytes_per_token"]
    rec["decode_bound_tokens_per_s"] = bound
    dec = rec["figures"]["decode_tokens_per_s"]
    rec["decode_fraction_of_bound"] = dec["median"] / bound if dec else None
    rec["decode_fraction_of_bound_best"] = dec["max"] / bound if dec else None
    if read_bandwidth:
        read_bound = read_bandwidth / rec["llm_bytes_per_token"]
        rec["decode_read_bound_tokens_per_s"] = read_bound
        rec["decode_fraction_of_read_bound"] = dec["median"] / read_bound if dec else None
    return rec


def _name_uniquely(backends: list[dict]) -> None:
    seen: dict[str, int] = {}
    for b in backends:
        seen[b["name"]] = seen.get(b["name"], 0) + 1
    for b in backends:
        if seen[b["name"]] > 1 and b["kind"] == "bundle":
            b["name"] = f"{b['name']} ({Path(b['path']).name})"


def add_comparisons(backends: list[dict]) -> None:
    """Ratios backend/reference of every figure and scalar — of the medians (`ratios`) and of
    the best samples (`ratios_best`: other load on the machine only ever adds time, so
    the best samples are the steadier comparison on a shared machine) — and fidelity."""
    ref = backends[0]
    for b in backends:
        if not (b["ok"] and ref["ok"]):
            b["ratios"] = b["ratios_best"] = b["fidelity"] = None
            continue
        ratios, best = {}, {}
        for k in FIGURES:
            mine, theirs = b["figures"][k], ref["figures"][k]
            pick = best_of(k)
            ratios[k] = mine["median"] / theirs["median"] if mine and theirs else None
            best[k] = mine[pick] / theirs[pick] if mine and theirs else None
        for k in SCALARS:
            ratios[k] = best[k] = b[k] / ref[k] if ref.get(k) else None
        b["ratios"], b["ratios_best"] = ratios, best
        b["fidelity"] = fidelity(b, ref)
    for b in backends:
        b.pop("_first_logits", None)


def best_of(figure: str) -> str:
    """The summary key of a figure's best sample: the fastest time, the highest rate."""
    return "max" if figure.endswith("_per_s") else "min"


def fidelity(b: dict, ref: dict) -> dict | None:
    """First-step max |Δlogit|, top-1 agreement and greedy-token agreement vs the reference
    (the definitions of `fusion-edge verify`), over every question of the first repeat."""
    got, want = b.get("_first_logits"), ref.get("_first_logits")
    if got is None or want is None or got.shape != want.shape:
        return None
    agree, prefix = [], []
    for a_, r_ in zip(b["answers"], ref["answers"]):
        a, r = a_["token_ids"], r_["token_ids"]
        n = max(len(a), len(r), 1)
        agree.append(sum(x == y for x, y in zip(a, r)) / n if len(a) == len(r) else 0.0)
        p = 0
        while p < min(len(a), len(r)) and a[p] == r[p]:
            p += 1
        prefix.append(p)
    return {"max_dlogit": float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))),
            "top1_agreement": float(np.mean(np.argmax(got, -1) == np.argmax(want, -1))),
            "greedy_agreement": float(np.mean(agree)), "greedy_prefix_min": int(min(prefix)),
            "questions": len(agree)}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_1min": _load()}


def _load() -> float | None:
    """Other work on the machine skews every figure: record the load around the run."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
