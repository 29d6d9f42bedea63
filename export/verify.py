"""Verification: a bundle's pipeline against the PyTorch reference on the same checkpoint.

Per graph: max |Δ| of each graph's output when fed the inputs the pipeline actually
produced (vision global/main, every alignment layer, every LLM segment's prefill).
End to end: max |Δlogit| of the first generated step and greedy-token agreement over
`steps` tokens. Figures go into the bundle manifest; `gate` decides pass/fail.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from fusion_edge.runtime.pipeline import FUSION_L_TOKENS, Pipeline

from .reference import FusionReference

# Gates by precision: what a bundle must reach to be written without --force.
GATES = {
    "fp32": {"max_dlogit": 1e-2, "greedy_agreement": 1.0},
    "fp16": {"top1_agreement": 0.66},
}
QUESTIONS = ("What is on the table?", "How many red objects are there?",
             "Describe the scene in one sentence.")


def builtin_images() -> list[Image.Image]:
    """Generated scenes at awkward sizes (no files, no network)."""
    out = []
    for n, (w, h) in enumerate(((640, 480), (300, 500), (1024, 256))):
        img = Image.new("RGB", (w, h), (20 + 60 * n, 90, 160 - 40 * n))
        d = ImageDraw.Draw(img)
        d.rectangle((w // 8, h // 6, w // 2, h // 2), fill=(240, 200, 10))
        d.ellipse((w // 2, h // 3, w - w // 10, h - h // 10), fill=(210, 30, 30))
        d.line((0, h - 1, w - 1, 0), fill=(255, 255, 255), width=5)
        out.append(img)
    return out


def builtin_cases(n: int = 2) -> list[tuple[Image.Image, str]]:
    imgs = builtin_images()
    return [(imgs[i % len(imgs)], QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


class _Recorder:
    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name, inputs):
        self.items.append((name, inputs))


@torch.no_grad()
def _reference_graph(ref: FusionReference, name: str, feeds: dict) -> np.ndarray:
    m = ref.model
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    if name.startswith("vision"):
        states = m.aux_projector(t["instruct_embeds"])
        return m.mm_projector(m.vision(t["pixels"], states, t["instruct_keep"])).numpy()
    if name.startswith("align_"):
        k = int(name.split("_")[1])
        return m.align[k].forward_windows(t["h_inst"][0], t["latents"], t["windows"]).numpy()
    raise KeyError(name)


@torch.no_grad()
def _reference_segment(ref: FusionReference, comp: dict, feeds: dict) -> np.ndarray:
    llm = ref.model.llm
    a, b = comp["layers"]
    cache = llm.empty_cache()
    x = llm.run_layers(torch.from_numpy(feeds["hidden"]), a, b, 0, cache)
    return (llm.logits(x[:, -1]) if comp["final"] else x).numpy()


def verify(pipe: Pipeline, ref: FusionReference, cases=None, steps: int = 16) -> dict:
    cases = cases or builtin_cases()
    per_graph: dict[str, float] = {}
    dlogit, top1, agree, prefix = [], [], [], []
    fusion_l = pipe.image_tokens == FUSION_L_TOKENS
    for image, question in cases:
        rec = _Recorder()
        pipe.recorder = rec
        scene = pipe.look(image)
        pipe.ask(scene, question, max_new_tokens=steps)
        pipe.recorder = None
        got = pipe.last_result
        want = ref.answer(image, question, max_new_tokens=steps, query_len=pipe.default_query_len,
                          image_tokens=FUSION_L_TOKENS if fusion_l else None)
        for name, feeds in rec.items:
            if name.startswith("segment_") and not hasattr(pipe.llm, "session"):
                continue   # an LLM that is not ONNX segments (llama.cpp): end-to-end figures only
            if name.startswith("segment_"):
                comp = pipe.bundle.components[name]
                expect = _reference_segment(ref, comp, feeds)
            else:
                expect = _reference_graph(ref, name, feeds)
            d = _max_abs(pipe.run_graph(name, feeds), expect)
            per_graph[name] = max(per_graph.get(name, 0.0), d)
        dlogit.append(_max_abs(got.first_logits, want.first_logits))
        top1.append(int(np.argmax(got.first_logits)) == int(np.argmax(want.first_logits)))
        a, b = got.token_ids, want.token_ids
        n = max(len(a), len(b), 1)
        same = sum(x == y for x, y in zip(a, b)) if len(a) == len(b) else 0
        agree.append(same / n)
        p = 0
        while p < min(len(a), len(b)) and a[p] == b[p]:
            p += 1
        prefix.append(p)
    return {"cases": len(cases), "steps": steps, "per_graph_max_abs": per_graph,
            "max_dlogit": max(dlogit), "top1_agreement": float(np.mean(top1)),
            "greedy_agreement": float(np.mean(agree)), "greedy_prefix_min": int(min(prefix))}


def gate(figures: dict, precision: str, target: str = "onnx") -> tuple[bool, list[str]]:
    """(passed, reasons) of a comparison with the PyTorch reference.

    fp32 bundles of every target and onnx fp16 bundles are held to GATES; other quantized
    bundles (onnx int8/int4: gated against the fp32 pipeline in quantize/agreement.py;
    gguf f16/q8_0/q4_k_m) only need finite logits here.
    """
    reasons = []
    gated = precision == "fp32" or (target == "onnx" and precision == "fp16")
    for key, bound in (GATES.get(precision, {}) if gated else {}).items():
        value = figures[key]
        ok = value <= bound if key.startswith("max_") else value >= bound
        if not ok:
            reasons.append(f"{key} = {value:.4g} (needs {'≤' if key.startswith('max_') else '≥'} {bound})")
    if not np.isfinite(figures["max_dlogit"]):
        reasons.append("logits are not finite")
    return not reasons, reasons


def figures_key(target: str, precision: str) -> str:
    """Where `fusion-edge verify` stores reference figures in the manifest: quantized onnx
    bundles keep their export-time agreement with the fp32 pipeline under `verification`."""
    return "reference_comparison" if target == "onnx" and precision in ("int8", "int4") else "verification"
