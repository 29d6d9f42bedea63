"""Export the three graph families to ONNX, one graph at a time (bounded memory).

Each graph is traced from a meta-device FusionModel into which only that graph's
weights are loaded from the checkpoint, so peak RAM is one segment, not the model.
Every weight is stored once: the embedding table only in `embed.onnx`, each decoder
layer only in its segment, lm_head + final norm only in the last segment.
"""
from __future__ import annotations

import math
import tempfile
from collections import Counter
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint
from .onnx_graphs import AlignGraph, EmbedGraph, SegmentGraph, VisionGraph, segment_plan
from .ref_model import FusionModel, _module_name

OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30   # graphs above 1 GiB keep weights in <name>.onnx.data


def partial_model(ckpt: Checkpoint, prefixes: tuple[str, ...]) -> FusionModel:
    """A FusionModel whose parameters are on the meta device except those under `prefixes`."""
    with torch.device("meta"):
        model = FusionModel(ckpt.config)
    tensors = {}
    for e in ckpt.entries:
        if e.name.startswith(prefixes):
            tensors[_module_name(e.name)] = torch.from_numpy(np.ascontiguousarray(ckpt.canonical(e)))
    if "llm.lm_head." in prefixes and ckpt.config.llm.tie_word_embeddings:
        tensors["llm.lm_head.weight"] = torch.from_numpy(ckpt.canonical(
            next(e for e in ckpt.entries if e.name == "llm.embed.weight")))
    model.load_state_dict(tensors, strict=False, assign=True)
    return model.eval()


def graph_specs(ckpt: Checkpoint) -> list[dict]:
    """What to export: name, weight prefixes, how to build the module, I/O names and dummy inputs."""
    cfg = ckpt.config
    c, t = cfg.llm, cfg.tower
    H, hd, kv = c.hidden_size, c.head_dim, c.num_kv_heads
    S_img = t.image_size
    specs = [
        dict(name="vision", prefixes=("vision.", "mm_projector.", "aux_projector."),
             build=lambda m: VisionGraph(m),
             inputs={"pixels": ((1, 3, S_img, S_img), {0: "B"}),
                     "instruct_embeds": ((1, 5, H), {0: "B", 1: "T"}),
                     "instruct_keep": ((1, 5), {0: "B", 1: "T"}, torch.bool)},
             outputs={"image_tokens": {0: "B"}}),
        dict(name="embed", prefixes=("llm.embed.",), build=lambda m: EmbedGraph(m),
             inputs={"ids": ((1, 7), {1: "S"}, torch.int64)}, outputs={"embeds": {1: "S"}}),
    ]
    for k in range(len(cfg.interaction_layers)):
        w2 = cfg.window_size ** 2
        specs.append(dict(
            name=f"align_{k:02d}", prefixes=(f"align.{k}.",), build=(lambda m, k=k: AlignGraph(m, k)),
            inputs={"h_inst": ((1, H), {}), "latents": ((4, H), {0: "q"}),
                    "windows": ((4, w2, H), {0: "q", 1: "W"})},
            outputs={"new_latents": {0: "q"}}))
    for seg in segment_plan(cfg):
        a, b = seg["layers"]
        prefixes = tuple(f"llm.layers.{i}." for i in range(a, b))
        if seg["final"]:
            prefixes += ("llm.norm.", "llm.lm_head.")
        inputs = {"hidden": ((1, 3, H), {1: "S"}), "cos": ((3, hd), {0: "S"}), "sin": ((3, hd), {0: "S"})}
        outputs = {("logits" if seg["final"] else "hidden_out"): ({} if seg["final"] else {1: "S"})}
        for i in range(a, b):
            inputs[f"past_k_{i}"] = ((1, 2, kv, hd), {1: "P"})
            inputs[f"past_v_{i}"] = ((1, 2, kv, hd), {1: "P"})
        for i in range(a, b):
            outputs[f"new_k_{i}"] = {1: "S"}
            outputs[f"new_v_{i}"] = {1: "S"}
        specs.append(dict(name=seg["name"], prefixes=prefixes,
                          build=(lambda m, a=a, b=b, f=seg["final"]: SegmentGraph(m, a, b, f)),
                          inputs=inputs, outputs=outputs, segment=seg))
    return specs


def _dummy(spec_input) -> torch.Tensor:
    shape, _, *dtype = spec_input
    dtype = dtype[0] if dtype else torch.float32
    if dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if dtype == torch.int64:
        return torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape) % 5 + 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# Warnings of the tracing export that were reviewed and are harmless: (category name, message
# start, why). Every other warning is passed on — a TracerWarning can mean a shape baked
# into a graph that is run with other shapes.
REVIEWED_WARNINGS = (
    ("DeprecationWarning", "You are using the legacy TorchScript-based ONNX export",
     "chosen on purpose: 35x faster per graph than dynamo here (README, Development)"),
    ("DeprecationWarning", "The feature will be removed",
     "the same legacy-exporter notice, from torch's own helper"),
    ("TracerWarning", "Iterating over a tensor",
     "ref_vision: `q, k, v = qkv.permute(...)` unpacks the fixed size-3 axis, never a dynamic one"),
)


def traced_quietly(export):
    """Run `export()`, silencing only REVIEWED_WARNINGS and re-issuing every other warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export()
    for w in caught:
        if not _reviewed(w):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _reviewed(w) -> bool:
    return any(w.category.__name__ == cat and str(w.message).startswith(start) for cat, start, _ in REVIEWED_WARNINGS)


def export_graph(ckpt: Checkpoint, spec: dict, out_path: Path, precision: str = "fp32") -> dict:
    """Trace one graph to `out_path`; returns its component record (files, I/O names)."""
    module = spec["build"](partial_model(ckpt, spec["prefixes"]))
    args = tuple(_dummy(v) for v in spec["inputs"].values())
    dyn = {n: v[1] for n, v in spec["inputs"].items() if v[1]}
    dyn.update({n: d for n, d in spec["outputs"].items() if d})
    # Trace into a scratch folder: above 2 GB torch writes one external file per tensor.
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".trace-") as scratch:
        traced = Path(scratch) / out_path.name
        with torch.no_grad():
            traced_quietly(lambda: torch.onnx.export(
                module, args, str(traced), dynamo=False, opset_version=OPSET, input_names=list(spec["inputs"]),
                output_names=list(spec["outputs"]), dynamic_axes=dyn, do_constant_folding=True))
        module = None                       # free its weights before the graph is re-read
        files = _finalize(traced, out_path, precision)
    rec = {"name": spec["name"], "backend": "onnxruntime", "precision": precision, "files": files,
           "inputs": list(spec["inputs"]), "outputs": list(spec["outputs"])}
    if "segment" in spec:
        rec.update({k: spec["segment"][k] for k in ("layers", "final", "align_after")})
    return rec


def _finalize(traced: Path, path: Path, precision: str) -> list[str]:
    """Convert to fp16 if asked; write `path`, with one `<name>.data` beside it when the
    weights pass EXTERNAL_DATA_BYTES (protobuf cannot serialise a model over 2 GB)."""
    import onnx
    if precision == "fp32" and _has_external_data(traced):
        return _stream_external(traced, path)        # large fp32 graph: never all in RAM
    model = onnx.load(str(traced), load_external_data=True)
    traced.unlink()                 # in memory now: the graph is on disk once while it is written
    if precision == "fp16":
        from .fp16 import to_fp16
        model = to_fp16(model)
    if initializer_bytes(model) > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return [path.name, path.name + ".data"]
    onnx.save_model(model, str(path))
    return [path.name]


def _has_external_data(traced: Path) -> bool:
    return any(p.name != traced.name for p in traced.parent.iterdir())


def _stream_external(traced: Path, path: Path) -> list[str]:
    """Gather torch's per-tensor external files into one `<name>.data`, one tensor at a time."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    model = onnx.load(str(traced), load_external_data=False)
    data_name = path.name + ".data"
    offset = 0
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    uses = Counter(ExternalDataInfo(t).location for t in external)
    with open(path.parent / data_name, "wb") as out:
        for t in external:
            info = ExternalDataInfo(t)
            with open(traced.parent / info.location, "rb") as src:
                src.seek(info.offset or 0)
                blob = src.read(info.length) if info.length else src.read()
            uses[info.location] -= 1
            if not uses[info.location]:      # copied: the weights are on disk once, not twice, meanwhile
                (traced.parent / info.location).unlink()
            pad = -offset % 4096                      # page-aligned, as onnx's own writer does
            out.write(b"\0" * pad)
            offset += pad
            out.write(blob)
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += len(blob)
    onnx.save_model(model, str(path))
    return [path.name, data_name]


def initializer_bytes(model) -> int:
    import onnx.numpy_helper as nh
    return sum(len(t.raw_data) if t.raw_data else nh.to_array(t).nbytes for t in model.graph.initializer)
