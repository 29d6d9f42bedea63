"""`--plot OUT.png`: TTFT split (stacked) and decode tokens/s per backend, one PNG."""
from __future__ import annotations

from fusion_edge.runtime.errors import MissingExtraError

from .report import pct

# Stages of the time to first token on a fresh image, in pipeline order.
TTFT_PARTS = (("preprocess_s", "preprocess"), ("vision_global_s", "vision (4 global tiles)"),
              ("vision_main_s", "vision (main tile, guided)"), ("prefill_s", "LLM prefill"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("matplotlib", "bench", "writing the benchmark plot (--plot)") from None
    matplotlib.use("Agg")          # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def write_plot(result: dict, path: str) -> str:
    plt = _pyplot()
    ok = [b for b in result["backends"] if b["ok"]]
    names = [b["name"] for b in ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 2.4 + 0.6 * max(len(ok), 2)))
    left = [0.0] * len(ok)
    for key, label in TTFT_PARTS:
        vals = [(b["figures"][key]["median"] * 1e3 if b["figures"][key] else 0.0) for b in ok]
        ax1.barh(names, vals, left=left, label=label)
        left = [a + v for a, v in zip(left, vals)]
    follow = [(b["figures"]["followup_ttft_s"]["median"] * 1e3 if b["figures"]["followup_ttft_s"] else None)
              for b in ok]
    ys = [i for i, v in enumerate(follow) if v is not None]
    if ys:
        ax1.scatter([follow[i] for i in ys], ys, marker="D", color="black", zorder=3,
                    label="TTFT follow-up (cached scene)")
    ax1.set_xlabel("ms (medians)")
    ax1.set_title("time to first token, new image")
    ax1.invert_yaxis()
    below = -58 / (fig.get_figheight() * 72 * 0.7)      # legend ~58 pt under the axes, any height
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=3)
    rates = [(b["figures"]["decode_tokens_per_s"]["median"] if b["figures"]["decode_tokens_per_s"] else 0.0)
             for b in ok]
    ax2.barh(names, rates, color="tab:green", label="decode tok/s (median)")
    ax2.scatter([b["decode_bound_tokens_per_s"] for b in ok], range(len(ok)), marker="|", s=300,
                color="tab:red", zorder=3, label="bandwidth bound")
    for i, (r, b) in enumerate(zip(rates, ok)):
        frac = b["decode_fraction_of_bound"]
        ax2.text(r, i, f" {r:.1f}" + (f" ({pct(frac)} of bound)" if frac is not None else ""), va="center",
                 fontsize=8)
    bounds = [b["decode_bound_tokens_per_s"] for b in ok]
    if rates and max(rates) > 0 and max(bounds) > 5 * max(rates):
        ax2.set_xscale("log")      # the bound is far off: keep the measured bars readable
    ax2.set_xlabel("tokens/s")
    ax2.set_title(f"decode ({result['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s measured)")
    ax2.invert_yaxis()
    ax2.set_yticks(range(len(ok)), [""] * len(ok))
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=2)
    fig.suptitle(f"fusion-edge bench — {result['machine']['cpu']}, {result['threads']} threads, {result['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
