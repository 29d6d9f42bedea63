"""Verification: a bundle's pipeline against the PyTorch reference on the same checkpoint.

Per graph: max |Δ| of each graph's output when fed the inputs the pipeline actually
produced (vision global/main, every alignment layer, every LLM segment's prefill).
End to end: max |Δlogit| of the first generated step and greedy-token agreement over
`steps` tokens. `verify_gated` adds the gate (runtime/fidelity.py `gate_reference`) and where
the figures hold (device, placement, versions); they go into the bundle manifest.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from fusion_edge.runtime import versions
from fusion_edge.runtime.bundle import Component
from fusion_edge.runtime.fidelity import Recorder, gate_reference, greedy_prefix, max_abs
from fusion_edge.runtime.pipeline import FUSION_L_TOKENS, Pipeline

from .reference import FusionReference

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
def _reference_segment(ref: FusionReference, comp: Component, feeds: dict) -> np.ndarray:
    llm = ref.model.llm
    a, b = comp.layers
    cache = llm.empty_cache()
    x = llm.run_layers(torch.from_numpy(feeds["hidden"]), a, b, 0, cache)
    return (llm.logits(x[:, -1]) if comp.final else x).numpy()


def verify(pipe: Pipeline, ref: FusionReference, cases=None, steps: int = 16) -> dict:
    cases = cases or builtin_cases()
    per_graph: dict[str, float] = {}
    dlogit, top1, agree, prefix = [], [], [], []
    fusion_l = pipe.image_tokens == FUSION_L_TOKENS
    for image, question in cases:
        rec = Recorder()
        pipe.recorder = rec
        scene = pipe.look(image)
        pipe.ask(scene, question, max_new_tokens=steps)
        pipe.recorder = None
        got = pipe.last_result
        want = ref.answer(image, question, max_new_tokens=steps, query_len=pipe.default_query_len,
                          image_tokens=FUSION_L_TOKENS if fusion_l else None)
        for name, feeds in rec.items:
            if not pipe.has_graph(name):
                continue   # an engine without per-graph access (llama.cpp): end-to-end figures only
            if name.startswith("segment_"):
                expect = _reference_segment(ref, pipe.bundle.component(name), feeds)
            else:
                expect = _reference_graph(ref, name, feeds)
            d = max_abs(pipe.run_graph(name, feeds), expect)
            per_graph[name] = max(per_graph.get(name, 0.0), d)
        dlogit.append(max_abs(got.first_logits, want.first_logits))
        top1.append(int(np.argmax(got.first_logits)) == int(np.argmax(want.first_logits)))
        a, b = got.token_ids, want.token_ids
        n = max(len(a), len(b), 1)
        same = sum(x == y for x, y in zip(a, b)) if len(a) == len(b) else 0
        agree.append(same / n)
        prefix.append(greedy_prefix(a, b))
    return {"cases": len(cases), "steps": steps, "per_graph_max_abs": per_graph,
            "max_dlogit": max(dlogit), "top1_agreement": float(np.mean(top1)),
            "greedy_agreement": float(np.mean(agree)), "greedy_prefix_min": int(min(prefix))}


def verify_gated(pipe: Pipeline, ref: FusionReference, precision: str, target: str, steps: int = 16) -> dict:
    """`verify` figures with the gate for `precision`/`target` applied on the pipeline's placement:
    + passed, gate (reasons), device, placement, versions."""
    figures = verify(pipe, ref, steps=steps)
    placement = pipe.placement.describe()
    passed, reasons = gate_reference(figures, precision, target, placement)
    figures.update({"passed": passed, "gate": reasons, "device": pipe.device, "placement": placement,
                    "versions": versions.installed()})
    return figures
