"""The quality gate of the export: a quantized bundle's agreement with the fp32 pipeline it
came from and with the PyTorch reference.

The teacher-forced comparison itself (`measure`, `compare`: end to end top-1 agreement, logit
cosine, first-step max |Δlogit|, greedy-token match; per graph minimum cosine and maximum
relative error, the embedding table over the whole vocabulary) lives in runtime/fidelity.py,
so that `fusion-edge verify` (export/) runs the same code; this module opens the pipelines of
an export's folder, logs the figures and refuses a bundle below the gate unless forced. The
names below are runtime/fidelity.py's (`gate`, `format_figures` name its fp32-pipeline ones);
see docs/quantization.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fusion_edge.runtime import versions
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.fidelity import FP32_PIPELINE, PYTORCH, compare, cosine, embed_figures, fp32_answer, \
    measure, rel_error, teacher_forced
from fusion_edge.runtime.fidelity import GATES as ALL_GATES
from fusion_edge.runtime.fidelity import format_fp32_pipeline as format_figures
from fusion_edge.runtime.fidelity import gate_fp32_pipeline as gate
from fusion_edge.runtime.fidelity import prefill_logits as _prefill
from fusion_edge.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)

# the gate of this comparison (runtime/fidelity.py), by precision
GATES = ALL_GATES["fp32_pipeline"]
__all__ = ["FP32_PIPELINE", "GATES", "PYTORCH", "compare", "cosine", "embed_figures", "format_figures",
           "fp32_answer", "gate", "gate_folder", "measure", "rel_error", "teacher_forced", "_prefill"]


def gate_folder(folder: Path, fp32_path: Path | None, kind: str, cases: list[tuple], steps: int,
                thresholds: dict | None, force: bool, threads: int | None, progress: bool, reference=None,
                fix: str = "") -> dict:
    """Measure the quantized folder against the fp32 bundle and (`reference`: (pipe, image,
    question, steps) → (layout, tokens, logits)) the PyTorch reference, both gated by
    GATES[kind] (+ thresholds); raise ExportError below either unless forced. → the figures
    (runtime/fidelity.py `compare`: the fp32 ones at the top, the reference ones under
    `pytorch_reference`). fp32_path None (the streamed export keeps no fp32 bundle): the
    reference's figures alone, at the top."""
    ref = None if fp32_path is None else Pipeline.open(fp32_path, device="cpu", threads=threads, check_hashes=False)
    q = Pipeline.open(folder, device="cpu", threads=threads)
    try:
        figures = compare(q, cases, steps, kind, fp32=ref, reference=reference, thresholds=thresholds,
                          progress=progress)
    finally:
        q.llm.close()
    passed, reasons = figures["passed"], figures["gate"]
    figures.update({"device": "cpu", "forced": False, "versions": versions.installed()})
    log.info(format_figures(figures))
    if "pytorch_reference" in figures:
        log.info(format_figures(figures["pytorch_reference"]))
    if not passed:
        if not force:
            against = "the PyTorch reference" if ref is None else "the fp32 pipeline and the PyTorch reference"
            raise ExportError(f"the {kind} bundle does not agree with {against} closely enough: "
                              + "; ".join(reasons), fix)
        figures["forced"] = True
        log.warning("warning: --force: keeping a bundle below the quality gate")
    return figures
