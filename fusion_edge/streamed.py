"""Quantized ONNX export streamed from the checkpoint (issue 29): no fp32 bundle on disk.

Today's quantized export from a checkpoint writes a whole fp32 bundle first (36 GB at 8B),
then quantizes it graph by graph. This one goes graph by graph from the checkpoint:

    for each graph (vision, embed, align_*, segment_*; today's order, sorted by name):
        export it fp32 into `scratch` (export/onnx_export.py export_graph: only its weights loaded)
        → quantize it at once into the bundle being written (quantize/bundle_quant.py
          quantize_graph: today's per-component code, plan and options)
        → delete its fp32 files
    → the rest as the bundle quantizer does it (bundle_quant.finish_quantized: the decode graph
      chained from the quantized segments, weights shared; the manifest; the decode twin gate)
    + the tokenizer from the checkpoint, in the one export sequence (runtime/bundle.py write_bundle).

So at most one graph's fp32 files exist at any time: disk = the bundle + one fp32 graph (+ the
calibration recording); memory = one graph's export or quantization, as before.

Calibration: the align graphs (static int8 Q/DQ in every int4 plan; the vision tower too for
--for cuda) are calibrated on recorded graph inputs, which only a run of the fp32 pipeline
produces. This export therefore takes a complete recording (--calib DIR, from `fusion-edge
calibrate`); without one fusion_edge/targets.py keeps today's path (docs/quantization.md).

The gate: the fp32 pipeline it would be compared with is never whole, so the bundle is gated
against the PyTorch reference alone (quantize/agreement.py gate_folder with no fp32 bundle),
with the same bounds GATES["fp32_pipeline"][precision] and the recording's held-out cases.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from fusion_edge.runtime.bundle import BundleWriter, write_bundle

log = logging.getLogger(__name__)

SCRATCH = "fp32-graph"      # in the export's work folder: the one fp32 graph that exists


def export_streamed(model, out, work: Path, target: str = "onnx", precision: str = "int4",
                    query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                    verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True, *,
                    calib, calib_samples=None, calib_questions=None, flavour: str = "cpu", sm=None,
                    block_size: int = 32, accuracy_level: int | None = 4, keep_float=(), eval_cases: int = 4,
                    thresholds: dict | None = None, threads: int | None = None, reference=None,
                    vision_precision: str | None = None, on_graph: Callable[[Path], None] | None = None,
                    **extra) -> Path:
    """Checkpoint `model` + complete recording `calib` → quantized, gated ONNX bundle at `out`,
    graph by graph through `work`/fp32-graph. The options are export_quantized_bundle's
    (quantize/onnx_quant.py; calib_samples / calib_questions unused: the recording is made);
    reference: the PyTorch reference's side of the gate (targets.py reference_answer), None
    with verify=False. on_graph(scratch): called with each fp32 graph in the scratch folder,
    before it is quantized (tests measure what is on disk there)."""
    from fusion_edge.export.bundle_export import export_options
    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.quantize.bundle_quant import QuantOptions
    from fusion_edge.quantize.onnx_quant import checked_plan, gate_folder, recorded_calibration
    from fusion_edge.runtime.option_types import check_int
    the_plan = checked_plan(target, precision, flavour, sm, vision_precision, extra)
    ckpt = open_checkpoint(model)
    if verify:              # greedy steps of the gate: they must fit the model's context (as bundle_export)
        check_int(steps, "--verify-steps", 1, ckpt.config.llm.max_position_embeddings)
    rec, cases = recorded_calibration(calib, eval_cases)
    rec.check_source(ckpt.fingerprint())
    options = export_options(ckpt, query_len, image_tokens)
    opts = QuantOptions(block_size, accuracy_level, tuple(keep_float or ()))
    scratch = Path(work) / SCRATCH

    def fill(writer: BundleWriter) -> dict:
        return {**streamed_fields(ckpt, model, options, writer, scratch, the_plan, rec, opts, progress, force,
                                  verify, on_graph), "target": target}

    def gate(folder: Path) -> dict:         # no fp32 bundle: the PyTorch reference alone
        return gate_folder(folder, None, the_plan.precision, cases, steps, thresholds, force, threads, progress,
                           reference)
    log.info(f"streamed {precision} export of {model}: one fp32 graph at a time in {scratch}, no fp32 bundle")
    return write_bundle(out, fill, gate if verify else None, overwrite)


def streamed_fields(ckpt, model, options: tuple[int, int], writer: BundleWriter, scratch: Path, the_plan, rec,
                    opts, progress: bool, force: bool, gate_twin: bool, on_graph=None) -> dict:
    """Every graph streamed into `writer`, the tokenizer, then finish_quantized → the manifest
    fields (as write_quantized's from the fp32 bundle: the same base fields, the same components)."""
    from fusion_edge.export.bundle_export import manifest_for
    from fusion_edge.quantize.bundle_quant import finish_quantized
    components, sizes = stream_graphs(ckpt, writer, scratch, the_plan, rec, opts, progress, on_graph)
    tokenizer = ckpt.tokenizer()
    tokenizer.save(writer.path("tokenizer"))
    # the fp32 bundle's manifest fields today (its components and verification are replaced / dropped)
    base = manifest_for(ckpt, model, "onnx", "fp32", *options, {}, tokenizer)
    return finish_quantized(writer, base, components, sizes, the_plan, rec, opts, decode=True, force=force,
                            gate_twin=gate_twin)


def stream_graphs(ckpt, writer: BundleWriter, scratch: Path, the_plan, rec, opts, progress: bool,
                  on_graph=None) -> tuple[dict, dict]:
    """Each graph of the checkpoint exported fp32 into `scratch`, quantized into `writer`, its fp32
    files deleted → (component records, weight bytes) by name, in the fp32 bundle's order."""
    from tqdm import tqdm

    from fusion_edge.export.onnx_export import export_graph, graph_specs
    from fusion_edge.quantize.bundle_quant import GraphFolder, quantize_graph
    shutil.rmtree(scratch, ignore_errors=True)       # an interrupted run's graph: not reused
    scratch.mkdir(parents=True)
    source = GraphFolder(scratch, ckpt.config)
    components, sizes = {}, {}
    specs = sorted(graph_specs(ckpt), key=lambda s: s["name"])
    for spec in tqdm(specs, desc=f"export + quantize {the_plan.precision}", unit="graph", disable=not progress,
                     leave=False):
        name = spec["name"]
        comp = export_graph(ckpt, spec, scratch / f"{name}.onnx", "fp32")
        if on_graph is not None:
            on_graph(scratch)
        components[name], sizes[name] = quantize_graph(source, writer, name, comp, the_plan, rec, opts)
        for f in comp["files"]:
            (scratch / f).unlink()
    scratch.rmdir()
    return components, sizes
