"""The quality gate: a quantized bundle's agreement with the fp32 pipeline it came from.

On held-out (image, question) cases, never seen in calibration:
* end to end, teacher-forced: the fp32 pipeline answers greedily (up to `steps` tokens);
  the quantized pipeline is fed the same prompt and then the fp32 tokens, one per step,
  and each step's logits are compared — top-1 agreement (argmax = the fp32 token),
  cosine of the logit vectors, max |Δlogit| of the first step. Greedy-token match follows
  exactly: the quantized pipeline's own greedy answer equals the fp32 answer up to the
  first teacher-forced disagreement (both pipelines are deterministic).
* per graph: every graph's output for the inputs the fp32 pipeline fed it (vision global
  and main, each alignment layer, each segment's prefill), fp32 graph vs quantized graph:
  minimum cosine and maximum relative error ‖q − f‖ / ‖f‖; the embedding table over the
  whole vocabulary.
Figures, gate and formatting are runtime/fidelity.py's (`gate`, `format_figures` here name
its fp32-pipeline ones); see docs/quantization.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fusion_edge.runtime import versions
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.fidelity import GATES as ALL_GATES
from fusion_edge.runtime.fidelity import Recorder, cosine, rel_error
from fusion_edge.runtime.fidelity import format_fp32_pipeline as format_figures
from fusion_edge.runtime.fidelity import gate_fp32_pipeline as gate
from fusion_edge.runtime.pipeline import Pipeline
from fusion_edge.runtime.prompt import build_prompt

# the gate of this comparison (runtime/fidelity.py), by precision
GATES = ALL_GATES["fp32_pipeline"]
__all__ = ["GATES", "cosine", "embed_figures", "format_figures", "gate", "gate_folder", "measure", "rel_error"]
EMBED_CHUNK = 4096
FP32_PIPELINE = "fp32 ONNX pipeline"
PYTORCH = "PyTorch reference"


def _prefill(pipe: Pipeline, scene, layout, extra: int) -> np.ndarray:
    """The pipeline's own prefill (room for `extra` + 1 more tokens) → first-step logits (V,)."""
    return np.array(pipe.prefill(scene, layout, extra + 1), dtype=np.float32)


def _layout(pipe: Pipeline, question: str):
    return build_prompt(pipe.tokenizer, pipe.cfg.template, question, pipe.image_tokens, pipe.default_query_len,
                        pipe.cfg.tokenizer_model_max_length)


def fp32_answer(pipe: Pipeline, image, question: str, steps: int, record=None):
    """Greedy fp32 run → (layout, tokens, logits per step); tokens[t] = argmax(logits[t]),
    the last token a stop token or the `steps`-th."""
    pipe.recorder = record
    try:
        scene = pipe.look(image)
        layout = _layout(pipe, question)
        logits = [_prefill(pipe, scene, layout, steps)]
    finally:
        pipe.recorder = None
    tokens = []
    while True:
        tokens.append(int(np.argmax(logits[-1])))
        if tokens[-1] in pipe.stop_ids or len(tokens) >= steps:
            return layout, tokens, logits
        logits.append(np.array(pipe.llm.decode(tokens[-1]), dtype=np.float32))


def teacher_forced(pipe: Pipeline, image, layout, tokens: list[int]) -> list[np.ndarray]:
    """Logits of the prefill and of each step fed tokens[:-1] → len(tokens) vectors."""
    scene = pipe.look(image)
    out = [_prefill(pipe, scene, layout, len(tokens))]
    for tok in tokens[:-1]:
        out.append(np.array(pipe.llm.decode(tok), dtype=np.float32))
    return out


def _per_graph(ref: Pipeline, q: Pipeline, calls: list[tuple[str, dict]], out: dict) -> None:
    for name, feeds in calls:
        if not q.has_graph(name):
            continue        # llama.cpp runs the LLM as a whole: its segments have no graph of their own
        a, b = ref.run_graph(name, feeds), q.run_graph(name, feeds)
        d = out.setdefault(name, {"cosine_min": 1.0, "rel_error_max": 0.0})
        d["cosine_min"] = min(d["cosine_min"], cosine(a, b))
        d["rel_error_max"] = max(d["rel_error_max"], rel_error(a, b))


def embed_figures(ref: Pipeline, q: Pipeline) -> dict:
    """The two embedding graphs over the whole vocabulary (chunked)."""
    V = ref.cfg.llm.vocab_size
    cos, rel = 1.0, 0.0
    for start in range(0, V, EMBED_CHUNK):
        ids = np.arange(start, min(V, start + EMBED_CHUNK))
        a, b = ref.llm.embed(ids), q.llm.embed(ids)
        cos, rel = min(cos, cosine(a, b)), max(rel, rel_error(a, b))
    return {"cosine_min": cos, "rel_error_max": rel}


def measure(ref: Pipeline | None, q: Pipeline, cases, steps: int = 16, per_graph_cases: int = 2,
            progress: bool = True, answer=None, reference: str = FP32_PIPELINE) -> dict:
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


def gate_folder(folder: Path, fp32_path: Path, kind: str, cases: list[tuple], steps: int, thresholds: dict | None,
                force: bool, threads: int | None, progress: bool, log, reference=None, fix: str = "") -> dict:
    """Measure the quantized folder against the fp32 bundle and (`reference`: (pipe, image,
    question, steps) → (layout, tokens, logits)) the PyTorch reference, both gated by
    GATES[kind] (+ thresholds); raise ExportError below either unless forced. → the figures
    (the fp32 ones at the top, the reference ones under `pytorch_reference`)."""
    ref = Pipeline.open(fp32_path, device="cpu", threads=threads, check_hashes=False)
    q = Pipeline.open(folder, device="cpu", threads=threads)
    try:
        figures = measure(ref, q, cases, steps=steps, progress=progress)
        passed, reasons, bounds = gate(figures, kind, thresholds)
        if reference is not None:
            ref_figures = measure(None, q, cases, steps=steps, progress=progress, reference=PYTORCH,
                                  answer=lambda image, question, n, _: reference(q, image, question, n))
            ok, why, _ = gate(ref_figures, kind, thresholds)
            ref_figures.update(passed=ok, gate=why, thresholds=bounds)
            figures["pytorch_reference"] = ref_figures
            passed, reasons = passed and ok, reasons + [f"vs the {PYTORCH}: {r}" for r in why]
    finally:
        q.llm.close()
    figures.update({"passed": passed, "gate": reasons, "thresholds": bounds, "device": "cpu", "forced": False,
                    "versions": versions.installed()})
    log(format_figures(figures))
    if "pytorch_reference" in figures:
        log(format_figures(figures["pytorch_reference"]))
    if not passed:
        if not force:
            raise ExportError(f"the {kind} bundle does not agree with the fp32 pipeline and the PyTorch reference "
                              "closely enough: " + "; ".join(reasons), fix)
        figures["forced"] = True
        log("warning: --force: keeping a bundle below the quality gate")
    return figures
