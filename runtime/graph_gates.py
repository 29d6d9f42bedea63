"""Gates of shipped graphs that the end-to-end verification does not run.

* `decode_twin`: `decode_concat.onnx`, the decode graph's Concat-attention twin that decodes on
  CUDA and TensorRT (export/decode_graph.py). The CPU decodes through `decode.onnx`, so the
  twin is compared with it here: the same prefill (the segments), then teacher-forced decode
  steps through both graphs on onnxruntime's CPU EP (the twin has no contrib op) → max
  |Δlogit| per step and top-1 agreement.
* `vision_gguf`: `vision.gguf`, the native runtime's tower, projectors and alignment layers,
  against the checkpoint's (export/vision_gguf_gate.py: needs torch, so it lives in export/).

`GRAPH_GATES[gate][precision or type]` holds the bounds (`max_*` at or below, others at or
above, runtime/fidelity.py `check`), with the measured values they were set from. Pure numpy
and onnxruntime: export and quantize both call it.
"""
from __future__ import annotations

import logging

import numpy as np

from .bundle import Bundle, new_manifest
from .layout import DECODE, DECODE_CONCAT
from .errors import ExportError
from .fidelity import check, cosine, max_abs

log = logging.getLogger(__name__)

GRAPH_GATES = {
    # twin vs decode graph, same weights; 2 cases × 8 teacher-forced steps, tiny phi3/so400m and
    # llama3/siglip2. Measured: fp32 max |Δlogit| 2.3e-5 on both (summation order of the two
    # attentions), top-1 100 %; fp16 graphs 1.9e-2 / 1.2e-2, top-1 100 %; int8 W8A8 (cpu
    # flavour) exactly 0; int4 (MatMulNBits, accuracy_level 4: activations quantized per block
    # at run time, so a 1e-6 difference can move one int8 step) max |Δlogit| 0.16 / 1.1e-3,
    # logit cosine ≥ 0.9999959 (1 − cos 4.1e-6). So the quantized bounds are on the cosine
    # (scale-free). A decode_concat.onnx with one weight of its last layer × 1.5 (phi3 fp32):
    # max |Δlogit| 1.7, cosine 0.99953 (1 − cos 4.7e-4), top-1 94 %; × 1.05: 0.17, 0.9999952.
    "decode_twin": {
        "fp32": {"max_dlogit": 1e-4, "top1_agreement": 1.0},
        "fp16": {"max_dlogit": 6e-2, "top1_agreement": 0.9},
        "int8": {"logit_cosine_min": 0.99995, "top1_agreement": 0.9},
        "int4": {"logit_cosine_min": 0.99995, "top1_agreement": 0.9},
    },
    # vision.gguf vs the checkpoint's tower, per graph (vision global/main, align_k): the worst
    # cosine and relative error over 2 built-in cases (export/vision_gguf_gate.py). Measured,
    # tiny phi3/so400m and llama3/siglip2: F32 cosine 1, rel. error 0 (the same bytes); F16
    # (phi3) cosine ≥ 0.9999999, rel. error ≤ 4.6e-4; Q8_0 cosine ≥ 0.99994, rel. error ≤
    # 1.14e-2 / 1.08e-2 (vision graphs; align ≤ 7.5e-3). One tower weight (layer 0 fc1) negated,
    # F32 or Q8_0: cosine 0.94, rel. error 0.34.
    "vision_gguf": {
        "F32": {"cosine_min": 0.999999, "max_rel_error": 1e-5},
        "F16": {"cosine_min": 0.99999, "max_rel_error": 2e-3},
        "Q8_0": {"cosine_min": 0.9995, "max_rel_error": 4e-2},
    },
}

TWIN_KEY = "decode_twin"             # the twin's component record keeps its gated figures here
VISION_KEY = "vision_gguf"           # ... and vision.gguf's (component `native_vision`)
TWIN_CASES = ((12, 3), (37, 5))      # (prompt length, seed) of the teacher-forced cases
TWIN_STEPS = 8
TWIN_FIX = ("report this with the figures above: the twin is what decodes on CUDA / TensorRT; "
            "--force keeps the bundle anyway")


def twin_view(bundle: Bundle) -> Bundle:
    """The bundle with its `decode` record replaced by the twin's: OnnxLLM then decodes through
    decode_concat.onnx over the row-major cache, on any device (the CPU included)."""
    comps = {n: c.to_dict() for n, c in bundle.components.items()}
    comps[DECODE] = {**comps[DECODE_CONCAT], "name": DECODE}
    return Bundle(bundle.path, bundle.manifest.updated(components=comps))


def decode_twin_figures(bundle: Bundle, steps: int = TWIN_STEPS) -> dict:
    """Teacher-forced decode through decode.onnx and decode_concat.onnx on the CPU → figures:
    max_dlogit (worst step of any case), top1_agreement, per_step_max_dlogit (worst per step)."""
    from .backends.onnx_llm import OnnxLLM
    graph, twin = OnnxLLM(bundle, "cpu"), OnnxLLM(twin_view(bundle), "cpu")
    assert graph.head_major and not twin.head_major, "the two engines must decode through different graphs"
    per_step, agree, cosines = np.zeros(steps), [], []
    for rows, seed in TWIN_CASES:
        diffs, same, cos = _teacher_forced(graph, twin, rows, seed, steps)
        per_step = np.maximum(per_step, diffs)
        agree += same
        cosines += cos
    return {"against": DECODE, "device": "cpu", "cases": len(TWIN_CASES), "steps": steps,
            "max_dlogit": float(per_step.max()), "top1_agreement": float(np.mean(agree)),
            "logit_cosine_min": float(min(cosines)), "per_step_max_dlogit": [float(d) for d in per_step]}


def _teacher_forced(graph, twin, rows: int, seed: int, steps: int) -> tuple[np.ndarray, list[bool], list[float]]:
    """One case: prefill `rows` embedded token ids (seeded) in both engines, then feed both the
    decode graph's greedy tokens → per step: max |Δlogit|, top-1 equal, logit cosine."""
    ids = np.random.default_rng(seed).integers(3, graph.cfg.llm.vocab_size, rows)
    embeds = graph.embed(ids)
    for engine in (graph, twin):
        engine.reserve(rows + steps + 1)
    tok = int(np.argmax(graph.prefill(embeds)))
    twin.prefill(embeds)
    diffs, same, cos = [], [], []
    for _ in range(steps):
        a, b = graph.decode(tok), twin.decode(tok)
        diffs.append(max_abs(a, b))
        same.append(int(np.argmax(a)) == int(np.argmax(b)))
        cos.append(cosine(a, b))
        tok = int(np.argmax(a))
    return np.array(diffs), same, cos


def gate_figures(figures: dict, bounds: dict) -> dict:
    """figures + the bounds, `passed` and the reasons (`gate`) they miss them."""
    reasons = check(figures, bounds)
    if not all(np.isfinite(v) for k, v in figures.items() if k in bounds):
        reasons.append("figures are not finite")
    return {**figures, "bounds": bounds, "passed": not reasons, "gate": reasons}


def gate_decode_twin(bundle: Bundle, force: bool = False) -> dict:
    """The twin gate of a bundle that ships decode_concat.onnx → its gated figures; an
    ExportError when they miss the bounds of the bundle's precision, unless `force`."""
    figures = gate_figures(decode_twin_figures(bundle), GRAPH_GATES["decode_twin"][bundle.precision])
    log.info(format_decode_twin(figures))
    if not figures["passed"] and not force:
        raise ExportError(f"{DECODE_CONCAT}.onnx (the CUDA / TensorRT decode graph) does not decode like "
                          f"{DECODE}.onnx: " + "; ".join(figures["gate"]), TWIN_FIX)
    return figures


def gate_decode_twin_fields(folder, fields: dict, force: bool = False) -> dict | None:
    """The twin gate during an export's `fill`, before the manifest is written: `fields` (the
    manifest fields, components included) describe the files in `folder` → gated figures, also
    stored in the twin's component record (`decode_twin`), or None when it ships no twin."""
    comps = fields["components"]
    if DECODE_CONCAT not in comps:
        return None
    figures = gate_decode_twin(Bundle(folder, new_manifest(fields, {})), force)
    comps[DECODE_CONCAT][TWIN_KEY] = figures
    return figures


def recorded_gate(folder, component: str, key: str) -> dict | None:
    """The gated figures a component record of the bundle in `folder` keeps under `key`."""
    comps = Bundle.open(folder, check_hashes=False).components
    return comps[component].get(key) if component in comps else None


def fold_into(verification: dict, gate: dict | None, what: str) -> dict:
    """A forced graph gate's failure carried into the bundle's verification figures (so its
    verification_status reads "forced", not "passed")."""
    if gate is None or gate["passed"]:
        return verification
    return {**verification, "passed": False, "gate": [*verification.get("gate", []),
                                                      *(f"{what}: {r}" for r in gate["gate"])]}


def format_decode_twin(f: dict) -> str:
    line = (f"{DECODE_CONCAT} vs {DECODE} on the CPU, {f['cases']} cases × {f['steps']} teacher-forced steps: "
            f"max |Δlogit| {f['max_dlogit']:.3g}, top-1 agreement {f['top1_agreement']:.0%}")
    return line + "\n  gate: " + ("passed" if f["passed"] else "FAILED: " + "; ".join(f["gate"]))
