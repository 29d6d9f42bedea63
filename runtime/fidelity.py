"""Fidelity: the figures, gates, measurements, formatting and recording of every bundle comparison.

Two comparisons share them:
* `reference`: a bundle's pipeline against the PyTorch reference (export/verify.py):
  max |Δ| per graph, max |Δlogit| over every teacher-forced step (and the first step's),
  top-1 and greedy-token agreement;
* `fp32_pipeline`: a quantized bundle, teacher-forced, against the fp32 pipeline it came from
  and against the PyTorch reference (`measure`, `compare`: the quality gate, which the export
  runs through quantize/agreement.py and `fusion-edge verify` runs directly): per-graph cosine /
  relative error, logit cosine, top-1 agreement.
`GATES[comparison][precision]` says what a bundle must reach to be written without --force;
`gate_*` compare figures with them, `format_*` print them. Numpy and the runtime's Pipeline
only: export, quantize and the CLI use it.
"""
from __future__ import annotations

import numpy as np

from .errors import BundleError
from .prompt import build_prompt

# Gates: bound per figure; a `max_*` figure must stay at or below it, every other at or above.
# fp32_pipeline, measured (docs/quantization.md): int8 top-1 97–100 %, cosine ≥ 0.9997; int4
# 83–89 %, cosine ≈ 0.997 (tiny and bench checkpoints); weight scales forced 8× wrong: far
# below both. Top-1 over few tokens is coarse, so the smooth cosine carries the tighter bound
# (token-weighted over all compared steps of all cases).
GATES = {
    "reference": {
        # measured on CPU, tiny and bench presets: onnx ≤ 2.7e-5, gguf ≤ 3.6e-5; CUDA EP with
        # TF32 off 2.9e-5 (with TF32 on 1.9e-2: TF32 is an opt-in that fails this gate); llama.cpp's
        # CUDA backend is TF32 on sm ≥ 8.0 with no way out: same bound, and the reasons say so
        # max_dlogit: over every teacher-forced step of every case (export/verify.py), not the
        # first step's alone: measured 3.8e-5 tiny phi3 (first step 2.3e-5), 2.7e-5 tiny llama3,
        # 4.6e-5 bench-preset phi3 (CPU, 2 cases × 16 steps): the same bound holds
        "fp32": {"max_dlogit": 1e-3, "greedy_agreement": 1.0},
        "fp16": {"top1_agreement": 0.66},
    },
    "fp32_pipeline": {
        "int8": {"top1_agreement": 0.90, "logit_cosine_mean": 0.995},
        "int4": {"top1_agreement": 0.80, "logit_cosine_mean": 0.99},
        # gguf, by llm.gguf type (docs/gguf.md); the same figures against the PyTorch reference
        # agree with these to < 1e-5. Measured, tiny phi3, 4 cases × 16 steps: F16 top-1 98.4 %,
        # cosine 0.999999; Q8_0 96.9 %, 0.99994; Q4_0 78.1 %, 0.99313 (min 0.98571); Q4_K_M
        # (width 64: every tensor fell back to Q5_0/Q8_0) 90.6 %, 0.99853. The 4-bit bounds
        # leave room for the 12-step subsets of the tests and for llama3; a negated output
        # weight (tests/test_gguf.py) gives top-1 0 and cosine < 0.
        "F16": {"top1_agreement": 0.95, "logit_cosine_mean": 0.9999},
        "Q8_0": {"top1_agreement": 0.90, "logit_cosine_mean": 0.999},
        "Q4_0": {"top1_agreement": 0.60, "logit_cosine_mean": 0.98},
        "Q4_K_M": {"top1_agreement": 0.70, "logit_cosine_mean": 0.99},
    },
}


# Per-graph bound beside GATES["reference"]: max |Δ| of each graph's output (vision, alignment
# layers, segments' hidden states, the last segment's logits) for the inputs the pipeline fed
# it, against the same PyTorch module. Measured on CPU, 2 cases × 16 steps: tiny phi3 ≤ 1.9e-5
# (segment_10, the logits; every other graph ≤ 4.1e-6), tiny llama3 ≤ 1.5e-5, bench-preset
# phi3 ≤ 2.5e-5 (hidden-state segments ≤ 3.8e-6). 1e-3, as for the logits, is 40× the largest:
# room for the larger hidden states of real models, while a weight error or TF32 (~1e-2) fails.
PER_GRAPH_MAX_ABS = {"fp32": 1e-3}


# ---- figures ----------------------------------------------------------------------------------
def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na and nb else float(na == nb)


def rel_error(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    n = np.linalg.norm(ref)
    return float(np.linalg.norm(got - ref) / n) if n else float(np.linalg.norm(got))


def greedy_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token sequences."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    return p


# ---- the teacher-forced comparison (the quality gate of quantized bundles) --------------------
# On held-out (image, question) cases:
# * end to end, teacher-forced: the fp32 side (fp32 pipeline or PyTorch reference) answers
#   greedily (up to `steps` tokens); the quantized pipeline is fed the same prompt and then the
#   fp32 tokens, one per step, and each step's logits are compared — top-1 agreement, cosine of
#   the logit vectors, max |Δlogit| of the first step. Greedy-token match follows exactly: the
#   quantized greedy answer equals the fp32 one up to the first teacher-forced disagreement.
# * per graph (fp32 pipeline only): every graph's output for the inputs the fp32 pipeline fed
#   it, fp32 graph vs quantized graph: minimum cosine and maximum relative error; the embedding
#   table over the whole vocabulary.
EMBED_CHUNK = 4096
FP32_PIPELINE = "fp32 ONNX pipeline"
PYTORCH = "PyTorch reference"


def prefill_logits(pipe, scene, layout, extra: int) -> np.ndarray:
    """The pipeline's own prefill (room for `extra` + 1 more tokens) → first-step logits (V,)."""
    return np.array(pipe.prefill(scene, layout, extra + 1), dtype=np.float32)


def prompt_layout(pipe, question: str):
    return build_prompt(pipe.tokenizer, pipe.cfg.template, question, pipe.image_tokens, pipe.default_query_len,
                        pipe.cfg.tokenizer_model_max_length)


def fp32_answer(pipe, image, question: str, steps: int, record=None):
    """Greedy run of an (fp32) pipeline → (layout, tokens, logits per step); tokens[t] =
    argmax(logits[t]), the last token a stop token or the `steps`-th."""
    pipe.recorder = record
    try:
        scene = pipe.look(image)
        layout = prompt_layout(pipe, question)
        logits = [prefill_logits(pipe, scene, layout, steps)]
    finally:
        pipe.recorder = None
    tokens = []
    while True:
        tokens.append(int(np.argmax(logits[-1])))
        if tokens[-1] in pipe.stop_ids or len(tokens) >= steps:
            return layout, tokens, logits
        logits.append(np.array(pipe.llm.decode(tokens[-1]), dtype=np.float32))


def teacher_forced(pipe, image, layout, tokens: list[int]) -> list[np.ndarray]:
    """Logits (V,) of the prefill and of each step fed tokens[:-1] → len(tokens) vectors."""
    scene = pipe.look(image)
    out = [prefill_logits(pipe, scene, layout, len(tokens))]
    for tok in tokens[:-1]:
        out.append(np.array(pipe.llm.decode(tok), dtype=np.float32))
    return out


def _per_graph(ref, q, calls: list[tuple[str, dict]], out: dict) -> None:
    for name, feeds in calls:
        if not q.has_graph(name):
            continue        # llama.cpp runs the LLM as a whole: its segments have no graph of their own
        a, b = ref.run_graph(name, feeds), q.run_graph(name, feeds)
        d = out.setdefault(name, {"cosine_min": 1.0, "rel_error_max": 0.0})
        d["cosine_min"] = min(d["cosine_min"], cosine(a, b))
        d["rel_error_max"] = max(d["rel_error_max"], rel_error(a, b))


def embed_figures(ref, q) -> dict:
    """The two embedding graphs over the whole vocabulary (chunked)."""
    V = ref.cfg.llm.vocab_size
    cos, rel = 1.0, 0.0
    for start in range(0, V, EMBED_CHUNK):
        ids = np.arange(start, min(V, start + EMBED_CHUNK))
        a, b = ref.llm.embed(ids), q.llm.embed(ids)
        cos, rel = min(cos, cosine(a, b)), max(rel, rel_error(a, b))
    return {"cosine_min": cos, "rel_error_max": rel}


def measure(ref, q, cases, steps: int = 16, per_graph_cases: int = 2, progress: bool = True, answer=None,
            reference: str = FP32_PIPELINE) -> dict:
    """Agreement figures of pipeline `q` with the fp32 pipeline `ref` on `cases`. `answer`
    (image, question, steps, record) → (layout, tokens, logits per step) replaces the fp32
    pipeline's greedy run, e.g. by the PyTorch reference's (`ref` None: no per-graph figures)."""
    from tqdm import tqdm
    if answer is None:
        def answer(image, question, n, record):
            return fp32_answer(ref, image, question, n, record)
    per_graph: dict[str, dict] = {"embed": embed_figures(ref, q)} if ref is not None else {}
    agree, cos, dfirst, prefix, full = [], [], [], [], []
    for n, (image, question) in enumerate(tqdm(cases, desc=f"gate: {reference} vs quantized", unit="case",
                                               disable=not progress, leave=False)):
        calls = Recorder() if ref is not None and n < per_graph_cases else None
        layout, tokens, ref_logits = answer(image, question, steps, calls)
        q_logits = teacher_forced(q, image, layout, tokens)
        hits = [int(np.argmax(lq)) == t or (int(np.argmax(lq)) in q.stop_ids and t in q.stop_ids)
                for lq, t in zip(q_logits, tokens)]
        agree += hits
        cos += [cosine(a, b) for a, b in zip(ref_logits, q_logits)]
        dfirst.append(float(np.max(np.abs(ref_logits[0] - q_logits[0]))))
        p = hits.index(False) if False in hits else len(hits)
        prefix.append(p / len(tokens))
        full.append(p == len(tokens))
        if calls is not None:
            _per_graph(ref, q, calls.items, per_graph)
    return {"cases": len(cases), "steps": steps, "tokens_compared": len(agree),
            "top1_agreement": float(np.mean(agree)), "logit_cosine_mean": float(np.mean(cos)),
            "logit_cosine_min": float(np.min(cos)), "max_dlogit_first": float(np.max(dfirst)),
            "greedy_token_match": float(np.mean(prefix)), "greedy_exact": float(np.mean(full)),
            "per_graph": per_graph, "reference": f"{reference} (teacher-forced)"}


def compare(q, cases, steps: int, kind: str, *, fp32=None, reference=None, thresholds: dict | None = None,
            progress: bool = True) -> dict:
    """The quality gate of quantized pipeline `q`: teacher-forced agreement with the fp32
    pipeline `fp32` (an open Pipeline) and/or the PyTorch reference (`reference`: (pipe, image,
    question, steps) → (layout, tokens, logits per step)), each gated by
    GATES["fp32_pipeline"][kind] (+ thresholds). → figures with passed, gate (reasons) and
    thresholds: the fp32 comparison's at the top and the reference's under `pytorch_reference`
    (its reasons at the top prefixed "vs the PyTorch reference: "); without `fp32`, the
    reference's at the top."""
    if fp32 is None and reference is None:
        raise ValueError("compare needs the fp32 pipeline, the PyTorch reference or both")
    figures: dict | None = None
    if fp32 is not None:
        figures = measure(fp32, q, cases, steps=steps, progress=progress)
        _gate_into(figures, kind, thresholds)
    if reference is not None:
        ref_figures = measure(None, q, cases, steps=steps, progress=progress, reference=PYTORCH,
                              answer=lambda image, question, n, _: reference(q, image, question, n))
        _gate_into(ref_figures, kind, thresholds)
        if figures is None:
            return ref_figures
        figures["pytorch_reference"] = ref_figures
        figures["passed"] = figures["passed"] and ref_figures["passed"]
        figures["gate"] = figures["gate"] + [f"vs the {PYTORCH}: {r}" for r in ref_figures["gate"]]
    return figures  # type: ignore[return-value]  # None only without fp32 and reference, refused above


def _gate_into(figures: dict, kind: str, thresholds: dict | None) -> None:
    passed, reasons, bounds = gate_fp32_pipeline(figures, kind, thresholds)
    figures.update(passed=passed, gate=reasons, thresholds=bounds)

# ---- gates ------------------------------------------------------------------------------------
def check(figures: dict, bounds: dict) -> list[str]:
    """Why `figures` miss `bounds` (empty: they pass)."""
    reasons = []
    for key, bound in bounds.items():
        value = figures[key]
        ok = value <= bound if key.startswith("max_") else value >= bound
        if not ok:
            reasons.append(f"{key} = {value:.4g} (needs {'≤' if key.startswith('max_') else '≥'} {bound})")
    return reasons


def gate_reference(figures: dict, precision: str, target: str = "onnx", placement: dict | None = None
                   ) -> tuple[bool, list[str]]:
    """(passed, reasons) of a comparison with the PyTorch reference (export/verify.py figures, or
    the bench's first-step ones).

    fp32 bundles of every target and onnx / trt fp16 bundles (the same fp16 graphs) are held to
    GATES["reference"], fp32 also per graph (PER_GRAPH_MAX_ABS, where the figures have
    `per_graph_max_abs`); other quantized bundles (onnx / trt int8/int4, gguf F16/Q8_0/Q4_*)
    only need finite logits here: their gate is the teacher-forced one (`compare`,
    GATES["fp32_pipeline"][quality_kind(…)]), which the export and `fusion-edge verify` run beside
    this. placement (Placement.describe()): where the figures were measured; a bound missed with
    parts in TF32 says so (the bound stays).
    """
    gated = not quality_gated(target, precision)
    reasons = check(figures, GATES["reference"].get(precision, {}) if gated else {})
    if gated and precision in PER_GRAPH_MAX_ABS:
        reasons += per_graph_reasons(figures.get("per_graph_max_abs", {}), PER_GRAPH_MAX_ABS[precision])
    if reasons and precision == "fp32":
        reasons += tf32_reasons(placement)
    if not np.isfinite(figures["max_dlogit"]):
        reasons.append("logits are not finite")
    return not reasons, reasons


def per_graph_reasons(per_graph: dict[str, float], bound: float) -> list[str]:
    """Why graphs' max |Δ| miss `bound` (a NaN misses it too)."""
    return [f"{name} max |Δ| = {d:.4g} (needs ≤ {bound})" for name, d in sorted(per_graph.items())
            if not d <= bound]


def quality_gated(target: str, precision: str) -> bool:
    """Whether a bundle's gate is the teacher-forced quality gate (`compare`): onnx / trt
    int8|int4 and gguf fp16/int8/int4; fp32 of every target and onnx / trt fp16 are gated
    against the PyTorch reference alone (GATES["reference"])."""
    return not (precision == "fp32" or (target in ("onnx", "trt") and precision == "fp16"))


def quality_kind(target: str, precision: str, quant: str | None = None) -> str:
    """The GATES["fp32_pipeline"] key of a quality-gated bundle, as its export picks it: onnx /
    trt the precision (int8, int4); gguf the llm.gguf type `quant` (F16, Q8_0, Q4_0, Q4_K_M)."""
    kind = quant if target == "gguf" else precision
    if kind not in GATES["fp32_pipeline"]:
        raise BundleError(f"a {target} bundle of precision {precision}" + (f" and llm.gguf type {quant}" if quant
                          else "") + " has no quality gate.",
                          "check the bundle's fusion_bundle.json (components.llm.quant), or re-export it")
    return kind


def tf32_reasons(placement: dict | None) -> list[str]:
    """Why fp32 figures measured with parts in TF32 miss the fp32 bound, and the way back to fp32."""
    p = placement or {}
    out = []
    for part, why in (p.get("forced_tf32") or {}).items():
        out.append(f"the {part} part ran in TF32: {why}; fp32 parity: --{part}-device cpu, or an onnx bundle "
                   "on the CUDA EP (TF32 off by default)")
    opt_in = [c for c in p.get("tf32_parts", []) if c not in (p.get("forced_tf32") or {})]
    if opt_in:
        out.append(f"TF32 was turned on (--tf32) for {', '.join(opt_in)}; without it the CUDA EP computes in fp32")
    return out


def gate_fp32_pipeline(figures: dict, precision: str, thresholds: dict | None = None
                       ) -> tuple[bool, list[str], dict]:
    """(passed, reasons, thresholds used) of a quantized bundle against its fp32 pipeline."""
    bounds = {**GATES["fp32_pipeline"].get(precision, {}), **(thresholds or {})}
    reasons = check(figures, bounds)
    return not reasons, reasons, bounds


def figures_key(target: str, precision: str) -> str:
    """Where `fusion-edge verify` stores its reference figures in the manifest: for quantized
    bundles (onnx / trt int8/int4, gguf fp16/int8/int4) `verification` holds the quality gate's
    figures (teacher-forced, `compare`), so the reference figures go beside them."""
    return "reference_comparison" if quality_gated(target, precision) else "verification"


# ---- formatting -------------------------------------------------------------------------------
def _gate_line(f: dict) -> list[str]:
    if "passed" not in f:
        return []
    line = "  gate: " + ("passed" if f["passed"] else "FAILED: " + "; ".join(f["gate"]))
    return [line] + placement_lines(f.get("placement"))


def placement_lines(p: dict | None) -> list[str]:
    """Which device the figures (and so the gate) hold for; a CPU-only result says where to re-check."""
    if not p:
        return []
    d = p["devices"]
    where = ", ".join(f"{part} {d[part]}" for part in ("vision", "align", "llm"))
    forced = ", ".join(p.get("forced_tf32") or {})
    lines = [f"  measured on: {where}" + (" (TF32 on)" if p.get("tf32") else "")
             + (f" (TF32 forced by its backend: {forced})" if forced else "")]
    if not {"cuda", "tensorrt"} & set(d.values()):
        lines.append("  holds for the CPU; on a GPU re-check: fusion-edge verify BUNDLE --model CKPT --device cuda")
    return lines


def format_reference(f: dict) -> str:
    lines = [f"verification on {f['cases']} built-in cases, {f['steps']} greedy steps:"]
    for name, d in sorted(f["per_graph_max_abs"].items()):
        lines.append(f"  {name:<14} max |Δ| {d:.3g}")
    first = f" (first step {f['max_dlogit_first']:.3g})" if "max_dlogit_first" in f else ""
    lines.append(f"  end to end: max |Δlogit| {f['max_dlogit']:.3g} over every step{first}, top-1 agreement "
                 f"{f['top1_agreement']:.0%}, greedy agreement {f['greedy_agreement']:.0%} (shortest identical "
                 f"prefix {f['greedy_prefix_min']})")
    return "\n".join(lines + _gate_line(f))


def format_fp32_pipeline(f: dict) -> str:
    against = "PyTorch reference" if "PyTorch" in f.get("reference", "") else "fp32 pipeline"
    lines = [f"agreement with the {against} on {f['cases']} held-out cases ({f['tokens_compared']} "
             f"teacher-forced steps):"]
    for name, d in sorted(f["per_graph"].items()):
        lines.append(f"  {name:<14} cosine ≥ {d['cosine_min']:.5f}   rel. error ≤ {d['rel_error_max']:.2%}")
    lines.append(f"  end to end: top-1 agreement {f['top1_agreement']:.1%}, logit cosine mean "
                 f"{f['logit_cosine_mean']:.5f} (min {f['logit_cosine_min']:.5f}), first-step max |Δlogit| "
                 f"{f['max_dlogit_first']:.3g}, greedy-token match {f['greedy_token_match']:.1%} "
                 f"(identical answers {f['greedy_exact']:.0%})")
    return "\n".join(lines + _gate_line(f))


# ---- recording --------------------------------------------------------------------------------
class Recorder:
    """A `Pipeline.recorder`: keeps every (graph name, inputs) call in order."""

    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name: str, inputs: dict) -> None:
        self.items.append((name, inputs))
