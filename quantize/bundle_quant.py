"""Quantize every graph of an fp32 ONNX bundle into a BundleWriter, following a Plan.

vision: int8 dynamic (dynamic_int8; the CPU flavour) or W8A8 Q/DQ; align_*: int8 W8A8 Q/DQ
(static_int8) calibrated on their recordings; embed: int8
rows (embed_int8) or copied for TensorRT; segment_*: int8 W8A8 or int4 weight-only, the
lm_head int8 weight-only (weight_int8). The TensorRT flavour's graphs are checked with
qdq_check before anything is written. Returns the manifest (without files/hashes) with
per-component reports and weight bytes.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion_edge import __version__
from fusion_edge.calibration.reader import GraphFeeds
from fusion_edge.export.decode_graph import DECODE, DECODE_GRAPHS, build_shared
from fusion_edge.calibration.record import Recordings
from fusion_edge.runtime.backends.ort_session import EXACT_QDQ_KEY
from fusion_edge.runtime.bundle import Bundle, BundleWriter
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.graph_gates import gate_decode_twin_fields

from . import graph_io, qdq_check
from .dynamic_int8 import quantize_dynamic_int8
from .embed_int8 import quantize_embed
from .planner import Plan
from .static_int8 import Int8Scheme, keep_float_nodes, quantize_int8
from .weight_int4 import quantize_int4
from .weight_int8 import lm_head_nodes, weight_only_int8

log = logging.getLogger(__name__)

LM_HEAD_REASON = ("lm_head: kept out of the main scheme and stored int8 weight-only (its input does not fit a "
                  "per-tensor int8 scale; 4-bit error lands on the logits)")
DROPPED_FIELDS = ("format", "format_version", "created", "files", "verification")


@dataclass(frozen=True)
class QuantOptions:
    block_size: int = 32                    # int4 (and lm_head int8) blocks along K
    accuracy_level: int | None = 4          # MatMulNBits: 4 = int8 compute on CPU
    keep_float: tuple[str, ...] = field(default_factory=tuple)   # node-name regexes left float


def component_kind(name: str) -> str:
    if name in ("vision", "embed"):
        return name
    return "align" if name.startswith("align_") else "llm"


def write_quantized(src: Bundle, writer: BundleWriter, the_plan: Plan, rec: Recordings, opts: QuantOptions,
                    progress: bool = True, force: bool = False, gate_twin: bool = True) -> dict:
    """Quantize every component of `src` into the writer's folder → the manifest (no files list).
    A bundle that ships decode_concat.onnx (cpu flavour) has it gated against the quantized
    decode graph (runtime/graph_gates.py; gate_twin False: --no-verify): an ExportError when it
    misses, unless `force`."""
    from tqdm import tqdm
    components, sizes = {}, {}
    graphs = [n for n in sorted(src.components) if n not in DECODE_GRAPHS]
    for name in tqdm(graphs, desc=f"quantize {the_plan.precision}", unit="graph", disable=not progress, leave=False):
        components[name], sizes[name] = quantize_graph(src, writer, name, src.components[name], the_plan, rec, opts)
    shutil.copytree(src.file("tokenizer"), writer.path("tokenizer"))
    return finish_quantized(writer, src.manifest, components, sizes, the_plan, rec, opts,
                            decode=DECODE in src.components, force=force, gate_twin=gate_twin)


class GraphFolder:
    """Where fp32 graphs are read from: a Bundle, or this (a folder of freshly exported graphs
    and the model's config: the streamed export, fusion_edge/streamed.py). Both give
    file(name) → Path and config.llm.vocab_size, all _quantize_component reads of a source."""

    def __init__(self, folder: Path, config):
        self.folder, self.config = Path(folder), config

    def file(self, name: str) -> Path:
        return self.folder / name


def quantize_graph(src: Bundle | GraphFolder, writer, name: str, comp: Mapping[str, Any], the_plan: Plan,
                   rec: Recordings, opts: QuantOptions) -> tuple[dict, dict]:
    """One fp32 component of `src` (its record `comp`) → (its quantized component record, its
    weight bytes fp32 → quantized), the graph written into the writer's folder."""
    report = _quantize_component(src, writer, name, comp, the_plan, rec, opts)
    record = {**comp, "precision": report.pop("precision"), "files": report.pop("files"),
              EXACT_QDQ_KEY: report.pop(EXACT_QDQ_KEY, False), "quantization": report}
    return record, _sizes(src.file(comp["files"][0]), writer.path(record["files"][0]))


def finish_quantized(writer, base: Mapping[str, Any], components: dict, sizes: dict, the_plan: Plan, rec: Recordings,
                     opts: QuantOptions, decode: bool = True, force: bool = False, gate_twin: bool = True) -> dict:
    """After every graph is quantized: the decode graph(s) chained from the quantized segments
    (`decode`: the fp32 source had one), the TensorRT flavour's Q/DQ check, the manifest from
    the fp32 one (`base`: its fields; files, hashes and verification dropped) → the manifest."""
    if decode:       # chained again from the quantized segments, weights shared
        # GroupQueryAttention only for the CPU flavour: onnxruntime has no float32 CUDA kernel
        components.update(build_shared(writer.tmp, components, gqa=the_plan.flavour == "cpu"))
    if the_plan.flavour == "trt":
        _check_trt(writer, components)
    manifest = {k: v for k, v in base.items() if k not in DROPPED_FIELDS}
    manifest.update(precision=the_plan.precision, components=components)
    manifest["build"] = {**base.get("build", {}), "fusion_edge": __version__,
                         "onnxruntime_quantization": _ort_version()}
    manifest["quantization"] = {"plan": the_plan.to_dict(), "flavour": the_plan.flavour,
                                "options": {"block_size": opts.block_size, "accuracy_level": opts.accuracy_level,
                                            "keep_float": list(opts.keep_float)},
                                "calibration": _calib_summary(rec), "weight_bytes": sizes,
                                "weight_bytes_total": totals(sizes)}
    log.info(size_report(sizes))
    if gate_twin:
        gate_decode_twin_fields(writer.tmp, manifest, force)     # figures into the twin's record
    return manifest


def _quantize_component(src: Bundle | GraphFolder, writer, name: str, comp: Mapping[str, Any], the_plan: Plan,
                        rec: Recordings, opts: QuantOptions) -> dict:
    kind = component_kind(name)
    precision = the_plan.components[kind].precision
    s, d = src.file(comp["files"][0]), writer.path(comp["files"][0])
    if kind == "llm":
        return _quantize_segment(s, d, name, comp, precision, the_plan.flavour, rec, src.config.llm.vocab_size, opts)
    if precision == "int8" and the_plan.components[kind].method == "dynamic":
        return quantize_dynamic_int8(s, d, name, opts.keep_float)
    if precision == "int8":
        return quantize_int8(s, d, GraphFeeds(rec, name, comp["inputs"]), name,
                             Int8Scheme.for_flavour(the_plan.flavour), keep_float=opts.keep_float)
    if precision == "int8-weight":
        return quantize_embed(s, d)
    for f in comp["files"]:
        shutil.copy2(src.file(f), writer.path(f))
    return {"precision": comp["precision"], "scheme": "unchanged fp32", "files": list(comp["files"]),
            "quantized_weights": 0, "excluded": []}


def _quantize_segment(s: Path, d: Path, name: str, comp: Mapping[str, Any], precision: str, flavour: str,
                      rec: Recordings, vocab: int, opts: QuantOptions) -> dict:
    """int8 W8A8 or int4 weight-only, with the lm_head (final segment) int8 weight-only."""
    head = lm_head_nodes(graph_io.load(s), vocab) if comp.get("final") else []
    keep = {h: LM_HEAD_REASON for h in head}
    if precision == "int8":
        report = quantize_int8(s, d, GraphFeeds(rec, name, comp["inputs"]), name, Int8Scheme.for_flavour(flavour),
                               keep, opts.keep_float)
    else:
        keep.update(keep_float_nodes(graph_io.load(s), opts.keep_float))
        report = quantize_int4(s, d, flavour, opts.block_size, opts.accuracy_level, keep)
    if head:
        model = weight_only_int8(graph_io.load(d), head, flavour, opts.block_size, opts.accuracy_level)
        report.update(files=graph_io.save(model, d), quantized_weights=graph_io.quantized_weight_count(model),
                      weight_only_int8=head)
    return report


def _check_trt(writer, components: dict) -> None:
    for name, comp in components.items():
        if comp["precision"] in ("int8", "int4"):
            bad = qdq_check.problems(graph_io.load(writer.path(comp["files"][0])))
            if bad:
                raise ExportError(f"{name}: the TensorRT-flavoured graph is not plain Q/DQ: " + "; ".join(bad[:3]),
                                  "report this; --for cpu writes the onnxruntime flavour")


# ---- sizes -------------------------------------------------------------------------------------
def _sizes(src_file: Path, dst_file: Path) -> dict:
    """Weight bytes from the initializers' shapes: read without the weights (4.5 GB for a real tower)."""
    a, b = graph_io.weight_bytes(graph_io.load_structure(src_file)), graph_io.weight_bytes(
        graph_io.load_structure(dst_file))
    return {"fp32": sum(a.values()), "quantized": sum(b.values()), "by_type": b}


def totals(sizes: dict) -> dict:
    """Weight bytes per component group (vision, align, embed, llm)."""
    groups: dict[str, list[str]] = {}
    for name in sizes:
        groups.setdefault(component_kind(name), []).append(name)
    return {g: {"fp32": sum(sizes[n]["fp32"] for n in names), "quantized": sum(sizes[n]["quantized"] for n in names)}
            for g, names in groups.items()}


def size_report(sizes: dict) -> str:
    rows = ["weight bytes, fp32 → quantized:"]
    for g, t in totals(sizes).items():
        rows.append(f"  {g:<7} {t['fp32'] / 1e6:9.2f} MB → {t['quantized'] / 1e6:8.2f} MB "
                    f"({t['fp32'] / max(t['quantized'], 1):.2f}×)")
    return "\n".join(rows)


def _calib_summary(rec: Recordings) -> dict:
    m = rec.manifest
    return {k: m.get(k) for k in ("samples", "images", "bytes", "dtype", "dataset", "options")}


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__
