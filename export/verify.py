"""Verification: a bundle's pipeline against the PyTorch reference on the same checkpoint.

Per graph: max |Δ| of each graph's output when fed the inputs the pipeline actually
produced (vision global/main, every alignment layer, every LLM segment's prefill).
End to end: max |Δlogit| over every step, teacher-forced on the reference's greedy tokens
(and of the first step alone), top-1 agreement of the first step and greedy-token agreement
over `steps` tokens. `verify_gated` adds the gate (runtime/fidelity.py `gate_reference`) and
where the figures hold (device, placement, versions); they go into the bundle manifest.
Quantized bundles are gated by their export's quality gate (`quality_gate`: runtime/fidelity.py
`compare`, teacher-forced agreement with the reference and optionally an fp32 bundle).
"""
from __future__ import annotations

from typing import cast

import numpy as np
import torch
from PIL import Image, ImageDraw

from fusion_edge.runtime import versions
from fusion_edge.runtime.bundle import Bundle, Component, check_verified
from fusion_edge.runtime.errors import BundleError, BundleMismatchError
from fusion_edge.runtime.fidelity import (Recorder, compare, gate_reference, greedy_prefix, max_abs, quality_kind,
                                          teacher_forced)
from fusion_edge.runtime.pipeline import Pipeline

from .ref_align import AlignmentLayer
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
    """n (image, question) pairs: image i with question i for the first 3, then the other
    questions of each image (9 distinct pairs; a larger n gives those 9, none repeated)."""
    imgs = builtin_images()
    n = min(n, len(imgs) * len(QUESTIONS))
    return [(imgs[i % len(imgs)], QUESTIONS[(i + i // len(imgs)) % len(QUESTIONS)]) for i in range(n)]


@torch.no_grad()
def _reference_graph(ref: FusionReference, name: str, feeds: dict) -> np.ndarray:
    m = ref.model
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    if name.startswith("vision"):
        states = m.aux_projector(t["instruct_embeds"])
        return m.mm_projector(m.vision(t["pixels"], states, t["instruct_keep"])).numpy()
    if name.startswith("align_"):
        k = int(name.split("_")[1])
        layer = cast(AlignmentLayer, m.align[k])        # nn.ModuleList's items are typed nn.Module
        return layer.forward_windows(t["h_inst"][0], t["latents"], t["windows"]).numpy()
    raise KeyError(name)


@torch.no_grad()
def _reference_segment(ref: FusionReference, comp: Component, feeds: dict) -> np.ndarray:
    llm = ref.model.llm
    a, b = comp.layers
    cache = llm.empty_cache()
    x = llm.run_layers(torch.from_numpy(feeds["hidden"]), a, b, 0, cache)
    return (llm.logits(x[:, -1]) if comp.final else x).numpy()


def verify(pipe: Pipeline, ref: FusionReference, cases=None, steps: int = 16) -> dict:
    """The pipeline against the reference on `cases` (default: 2 built-in ones): per-graph max |Δ|
    for the feeds the pipeline produced; free-running greedy answers (top-1 of the first step,
    greedy agreement, shortest identical prefix); and, teacher-forced on the reference's greedy
    tokens (runtime/fidelity.py `teacher_forced`, as the quality gate does), max |Δlogit| over
    every step (`max_dlogit`) and of the first (`max_dlogit_first`)."""
    cases = cases or builtin_cases()
    per_graph: dict[str, float] = {}
    dlogit, dfirst, top1, agree, prefix = [], [], [], [], []
    for image, question in cases:
        got = _free_running(pipe, image, question, steps, per_graph, ref)
        layout, tokens, want = ref.greedy_logits(image, question, steps, pipe.default_query_len, pipe.image_tokens)
        forced = teacher_forced(pipe, image, layout, tokens)       # one (V,) vector per reference step
        dlogit.append(max(max_abs(a, b) for a, b in zip(forced, want)))
        dfirst.append(max_abs(got.first_logits, want[0]))
        top1.append(int(np.argmax(got.first_logits)) == int(np.argmax(want[0])))
        a, b = got.token_ids, answer_ids(tokens, pipe.stop_ids)
        n = max(len(a), len(b), 1)
        same = sum(x == y for x, y in zip(a, b)) if len(a) == len(b) else 0
        agree.append(same / n)
        prefix.append(greedy_prefix(a, b))
    return {"cases": len(cases), "steps": steps, "per_graph_max_abs": per_graph,
            "max_dlogit": max(dlogit + dfirst), "max_dlogit_first": max(dfirst),
            "top1_agreement": float(np.mean(top1)), "greedy_agreement": float(np.mean(agree)),
            "greedy_prefix_min": int(min(prefix))}


def answer_ids(tokens: list[int], stop_ids) -> list[int]:
    """A greedy run's tokens (the last one a stop token or the `steps`-th) → the answer's token
    ids as `ask` returns them (without the stop token)."""
    return tokens[:-1] if tokens and tokens[-1] in stop_ids else list(tokens)


def _free_running(pipe: Pipeline, image, question: str, steps: int, per_graph: dict, ref: FusionReference):
    """`ask` as users run it, recording every graph's feeds; each graph the engines expose is
    compared with its reference module (max |Δ| into `per_graph`) → the AskResult."""
    rec = Recorder()
    pipe.recorder = rec
    try:
        pipe.ask(pipe.look(image), question, max_new_tokens=steps)
    finally:
        pipe.recorder = None
    for name, feeds in rec.items:
        if not pipe.has_graph(name):
            continue   # an engine without per-graph access (llama.cpp): end-to-end figures only
        if name.startswith("segment_"):
            expect = _reference_segment(ref, pipe.bundle.component(name), feeds)
        else:
            expect = _reference_graph(ref, name, feeds)
        d = max_abs(pipe.run_graph(name, feeds), expect)
        per_graph[name] = max(per_graph.get(name, 0.0), d)
    return pipe.last_result


def verify_gated(pipe: Pipeline, ref: FusionReference, precision: str, target: str, steps: int = 16) -> dict:
    """`verify` figures with the gate for `precision`/`target` applied on the pipeline's placement:
    + passed, gate (reasons), device, placement, versions."""
    figures = verify(pipe, ref, steps=steps)
    placement = pipe.placement.describe()
    passed, reasons = gate_reference(figures, precision, target, placement)
    figures.update({"passed": passed, "gate": reasons, "device": pipe.device, "placement": placement,
                    "versions": versions.installed()})
    return figures


def reference_answer(ref: FusionReference):
    """The PyTorch reference's side of the quality gate: (pipe, image, question, steps) →
    (layout, tokens, logits per step) for pipe's query length and image tokens."""
    def answer(pipe: Pipeline, image, question: str, steps: int):
        return ref.greedy_logits(image, question, steps, pipe.default_query_len, pipe.image_tokens)
    return answer


def quality_gate(pipe: Pipeline, ref: FusionReference, steps: int, cases: int = 4, fp32_bundle=None,
                 progress: bool = True) -> dict:
    """The quality gate a quantized bundle's export ran, re-run on `pipe`: teacher-forced
    agreement on `cases` built-in cases with the PyTorch reference `ref` and, given
    `fp32_bundle`, with that verified fp32 ONNX bundle of the same checkpoint (opened on the CPU,
    as the export does), gated by GATES["fp32_pipeline"][kind] (kind: the precision, or the
    llm.gguf type of a gguf bundle) → figures (runtime/fidelity.py `compare`) + kind, device,
    forced (False)."""
    b = pipe.bundle
    kind = quality_kind(b.target, b.precision, b.components["llm"].get("quant") if "llm" in b.components else None)
    fp32 = open_fp32(fp32_bundle, b) if fp32_bundle else None
    try:
        figures = compare(pipe, builtin_cases(cases), steps, kind, fp32=fp32, reference=reference_answer(ref),
                          progress=progress)
    finally:
        if fp32 is not None:
            fp32.llm.close()
    figures.update({"kind": kind, "device": pipe.device, "forced": False, "versions": versions.installed()})
    return figures


def open_fp32(path, quantized: Bundle) -> Pipeline:
    """The fp32 side of a quality gate: a verified fp32 ONNX bundle of the quantized bundle's
    checkpoint (as the export's), opened on the CPU."""
    fp32 = Bundle.open(path)
    if fp32.target != "onnx" or fp32.precision != "fp32":
        raise BundleError(f"{path} is a {fp32.target}/{fp32.precision} bundle; the quality gate compares with an "
                          "fp32 ONNX bundle.", "pass --fp32-bundle an fp32 ONNX bundle of the same checkpoint, or "
                          "leave it out")
    if fp32.manifest["source"]["fingerprint"] != quantized.manifest["source"]["fingerprint"]:
        raise BundleMismatchError(f"the fp32 bundle {path} was exported from another checkpoint than "
                                  f"{quantized.path}.", "pass an fp32 bundle of the same checkpoint, or leave "
                                  "--fp32-bundle out")
    check_verified(fp32, "the quality gate compares only with a verified fp32 pipeline")
    return Pipeline.open(path, device="cpu", check_hashes=False)
