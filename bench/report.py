"""The benchmark result as plain-text tables: times, decode and memory, ratios."""
from __future__ import annotations

from .worker import IMAGE_FIGURES, QUESTION_FIGURES

MiB = 1 << 20
FIGURE_KEYS = IMAGE_FIGURES + QUESTION_FIGURES
TIME_COLUMNS = (("preprocess_s", "preproc"), ("vision_global_s", "vis global"), ("vision_main_s", "vis main"),
                ("prefill_s", "prefill"), ("ttft_s", "TTFT new img"), ("followup_ttft_s", "TTFT follow-up"))
RATIO_COLUMNS = TIME_COLUMNS + (("decode_tokens_per_s", "decode tok/s"), ("peak_rss_bytes", "peak RSS"),
                                ("disk_bytes", "disk"), ("llm_bytes_per_token", "LLM B/token"))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _ms(fig: dict | None) -> str:
    return "-" if not fig else f"{fig['median'] * 1e3:.1f} ({fig['min'] * 1e3:.1f})"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ratio(b: dict, key: str) -> str:
    med, best = (b.get("ratios") or {}).get(key), (b.get("ratios_best") or {}).get(key)
    if med is None:
        return "-"
    return f"{med:.2f}" if best is None or key not in FIGURE_KEYS else f"{med:.2f} ({best:.2f})"


def pct(v) -> str:
    """A fraction as a percentage with enough digits to be non-zero."""
    if v is None:
        return "-"
    return f"{v:.0%}" if v >= 0.1 else f"{v * 100:.2g}%"


def devices_text(b: dict) -> str:
    """vision/align/llm devices, e.g. cpu/cpu/cuda; "+tf32" where a part ran TF32 (the CUDA EP's
    opt-in, or llama.cpp's CUDA backend on compute capability ≥ 8.0)."""
    d = b.get("devices") or {}
    tf32 = b.get("tf32") or b.get("tf32_parts")
    return "/".join(d.get(p, "?") for p in ("vision", "align", "llm")) + ("+tf32" if tf32 else "")


def _read_text(bw_read: dict | None) -> str:
    return "" if not bw_read else f", {bw_read['bytes_per_s'] / 1e9:.1f} GB/s read-only"


def format_report(result: dict) -> str:
    bw = result["bandwidth"]
    s = result["settings"]
    load = result["machine"]
    out = [f"fusion-edge bench {result['date']}  |  {result['machine']['cpu']}, {result['machine']['cores']} cores  |  "
           f"threads {result['threads']}  |  memory bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s (copy, best of "
           f"{bw['repeats']})" + _read_text(result.get("bandwidth_read")),
           f"{s['cases']} image(s) x {s['questions_per_image']} question(s), {s['max_new_tokens']} new tokens max, "
           f"{s['repeats']} pass(es) round robin, {s['warmup']} warm-up question(s) each  |  load average before/after "
           f"{_num(load.get('load_avg_1min_before'), '.1f')}/{_num(load.get('load_avg_1min'), '.1f')}"
           f" (before > 0.5: other work shared the cores)", ""]
    ok = [b for b in result["backends"] if b["ok"]]
    out.append("times in ms: median (min)")
    out.append(_table(["backend", "devices v/a/l"] + [c for _, c in TIME_COLUMNS],
                      [[b["name"], devices_text(b)] + [_ms(b["figures"][k]) for k, _ in TIME_COLUMNS] for b in ok]))
    out += ["", "decode, memory, fidelity (decode: median (best); bound = bandwidth / LLM weight bytes per token; "
                "copy bound, and the read-only bound where measured)"]
    rows = []
    for b in ok:
        d = b["figures"]["decode_tokens_per_s"]
        f = b.get("fidelity") or {}
        rows.append([b["name"], "-" if not d else f"{d['median']:.1f} ({d['max']:.1f})",
                     f"{b['decode_bound_tokens_per_s']:.1f}", pct(b["decode_fraction_of_bound"]),
                     pct(b.get("decode_fraction_of_read_bound")),
                     f"{b['llm_bytes_per_token'] / MiB:.1f}", f"{b['peak_rss_bytes'] / MiB:.0f}",
                     f"{b['disk_bytes'] / MiB:.1f}", f"{b['load_s']:.2f}", _num(f.get("max_dlogit"), ".2g"),
                     _num(f.get("greedy_agreement"), ".0%")])
    out.append(_table(["backend", "tok/s", "bound tok/s", "of bound", "of read bound", "LLM MiB/tok", "peak RSS MiB",
                       "disk MiB", "load s", "max|dlogit|", "greedy agree"], rows))
    out += ["", "ratio to the reference in this run, backend / reference: medians (best samples); "
                "< 1 = less time or memory, > 1 tok/s = faster"]
    out.append(_table(["backend"] + [c for _, c in RATIO_COLUMNS],
                      [[b["name"]] + [_ratio(b, k) for k, _ in RATIO_COLUMNS] for b in ok]))
    unverified = [b for b in ok if b.get("verification_warning")]
    if unverified:
        out += ["", "UNVERIFIED (figures of a bundle that did not pass its verification):"]
        out += [f"  {b['name']}: {b['verification_warning']}" for b in unverified]
    bad = [b for b in result["backends"] if not b["ok"]]
    if bad:
        out += ["", "FAILED:"] + [f"  {b['name']} ({b.get('path')}): {b['error']}" for b in bad]
    ref = result["backends"][0]
    if ref["ok"]:
        odd = [b["name"] for b in ok if b["prompt_tokens"] != ref["prompt_tokens"]]
        if odd:
            out.append(f"note: prompt length differs from the reference for {', '.join(odd)} "
                       "(another query_len / FUSION-L bundle): compare those ratios with care")
    return "\n".join(out)
