"""One table from a GPU check (scripts/gpu_check.sh): every tests/gpu result with its skip
or failure reason, the short bench's backends with their device maps (a bundle whose
fidelity misses its precision's gate is a FAIL), and the llama.cpp
probe's variants (bench/llama_probe.py: a crash is a FAIL, a drift is information).

    python -m fusion_edge.bench.gpu_check --junit results.xml --bench bench.json --probe probe.json …
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET

from fusion_edge.runtime.fidelity import gate_reference

from .report import devices_text


def test_rows(junit_path: str) -> list[list[str]]:
    """[[test, PASS|FAIL|SKIP, detail]] from a pytest --junitxml file."""
    rows = []
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        state, detail = "PASS", ""
        for tag, word in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
            el = case.find(tag)
            if el is not None:
                state, detail = word, (el.get("message") or "").splitlines()[0][:110] if el.get("message") else ""
                break
        rows.append([name, state, detail])
    return rows


def bench_rows(bench_path: str) -> list[list[str]]:
    """[[bench <backend>, PASS|FAIL, devices, TTFT ms, decode tok/s, max|dlogit|]] from a bench
    --json file; a bundle whose fidelity misses the gate for its precision is a FAIL
    (`fidelity_verdict`)."""
    backends = json.loads(open(bench_path, encoding="utf-8").read())["backends"]
    ref = next((b for b in backends if b.get("kind") == "reference"), None)
    rows = []
    for b in backends:
        if not b["ok"]:
            rows.append([f"bench {b['name']}", "FAIL", str(b.get("error", ""))[:110]])
            continue
        f = b["figures"]
        ttft = (f.get("ttft_s") or {}).get("median")
        tok = (f.get("decode_tokens_per_s") or {}).get("median")
        gap = (b.get("fidelity") or {}).get("max_dlogit")
        detail = (f"devices {devices_text(b)}; TTFT {ttft * 1e3:.1f} ms; decode {tok:.1f} tok/s"
                  if ttft and tok else f"devices {devices_text(b)}")
        state, why = fidelity_verdict(b, ref)
        detail += (f"; max|dlogit| {gap:.2g}" if gap is not None else "") + (f"; {why}" if why else "")
        rows.append([f"bench {b['name']}", state, detail])
    return rows


def fidelity_verdict(b: dict, ref: dict | None) -> tuple[str, str]:
    """(PASS|FAIL|SKIP, why) of one bench backend's fidelity (bench/runner.py `fidelity`: first-step
    max |Δlogit| and top-1, greedy agreement, against the reference) under runtime/fidelity.py's
    reference gate for its target and precision (fp32: max |Δlogit| ≤ 1e-3 and every greedy token;
    onnx/trt fp16: top-1; quantized: finite logits, their quality gate being teacher-forced,
    which the bench does not run). The reference itself passes; a bundle without fidelity
    figures is a FAIL; one measured against a reference that is not fp32 is not judged: SKIP."""
    if b.get("kind") == "reference":
        return "PASS", ""
    if not b.get("fidelity"):
        return "FAIL", "no fidelity figures (the reference failed or returned no logits)"
    if ref is None or ref.get("precision", "fp32") != "fp32":
        return "SKIP", "fidelity not judged: the bench reference is not fp32 (--reference-dtype)"
    placement = {"devices": b.get("devices") or {}, "tf32_parts": b.get("tf32_parts") or []}
    passed, reasons = gate_reference(b["fidelity"], b["precision"], b["target"], placement)
    return ("PASS", "") if passed else ("FAIL", "fidelity below the gate: " + "; ".join(reasons))


def probe_rows(probe_path: str) -> list[list[str]]:
    """[[llama.cpp <bundle>: <variant>, PASS|FAIL, max|Δ| or the crash]] from a llama_probe --json file."""
    from .llama_probe import label
    data = json.loads(open(probe_path, encoding="utf-8").read())
    name = data["bundle"].rstrip("/").rsplit("/", 1)[-1]
    return [[f"llama.cpp {name}: {label(r['variant'])}", "PASS" if r["ok"] else "FAIL",
             f"max|dlogit| vs cpu/f32 {r['max_dlogit']:.2g}" if r["ok"] else r["error"][:110]]
            for r in data["rows"]]


def format_table(rows: list[list[str]]) -> str:
    header = ["check", "result", "detail"]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(2)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}",
             f"{'-' * widths[0]}  {'-' * widths[1]}  ------"]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    counts = {s: sum(r[1] == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--junit", required=True)
    p.add_argument("--bench", default=None)
    p.add_argument("--probe", nargs="*", default=[])
    args = p.parse_args(argv)
    rows = test_rows(args.junit) + (bench_rows(args.bench) if args.bench else [])
    rows += [row for path in args.probe for row in probe_rows(path)]
    print(format_table(rows))
    return 1 if any(r[1] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
