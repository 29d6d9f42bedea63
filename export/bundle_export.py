"""`fusion-export`: checkpoint → complete, verified bundle (written atomically).

Steps: open and validate the checkpoint → export every graph (progress bar) → the merged
decode graph, its weights shared with the segments (export/decode_graph.py) → tokenizer
→ the decode graph's CUDA twin gated against it (runtime/graph_gates.py) → manifest
(facts, components, hashes, build info) → verify against the PyTorch reference → gate
→ rename into place. A failure at any step leaves no bundle folder.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

from fusion_edge import __version__
from fusion_edge.runtime import versions
from fusion_edge.runtime.bundle import BundleWriter, write_bundle
from .decode_graph import DECODE_CONCAT, build_shared
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.fidelity import format_reference
from fusion_edge.runtime.graph_gates import TWIN_KEY, fold_into, gate_decode_twin_fields, recorded_gate
from fusion_edge.runtime.option_types import check_int
from fusion_edge.runtime.pipeline import FUSION_L_TOKENS, Pipeline
from fusion_edge.runtime.prompt import stop_token_ids

from .checkpoint import Checkpoint, open_checkpoint
from .onnx_export import OPSET, export_graph, graph_specs

log = logging.getLogger(__name__)


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, unit="graph", leave=False)


def build_info() -> dict:
    """fusion-edge, the numerics-relevant library versions (runtime/versions.py), opset, platform."""
    return {"fusion_edge": __version__, **versions.installed(), "opset": OPSET,
            "python": platform.python_version(), "machine": platform.machine()}


def manifest_for(ckpt: Checkpoint, model: str, target: str, precision: str, query_len: int,
                 image_tokens: int, components: dict, tokenizer, llm_backend: str = "onnxruntime") -> dict:
    cfg = ckpt.config
    return {
        "target": target, "precision": precision, "llm_backend": llm_backend,
        "source": {"model": str(model), "fingerprint": ckpt.fingerprint(), "fingerprint_kind": "weights",
                   "model_type": cfg.llm.model_type, "mm_vision_tower": cfg.mm_vision_tower},
        "fusion": cfg.to_dict(),
        "options": {"query_len": query_len, "image_tokens": image_tokens, "query_lens": list(cfg.query_lens)},
        "prompt": {"template": cfg.template, "stop_token_ids": list(stop_token_ids(tokenizer, cfg.template)),
                   "max_length": cfg.tokenizer_model_max_length},
        "components": components, "build": build_info(),
    }


def export_bundle(model: str, out: str | Path, target: str = "onnx", precision: str = "fp32",
                  query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                  verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True,
                  manifest_extend=None, **extra) -> Path:
    """Checkpoint → verified fp32 / fp16 ONNX bundle, or the trt fp16 bundle of the same graphs
    (other targets: fusion_edge/targets.py). manifest_extend(fields) → fields: the target's
    own manifest sections (trt: profiles, engines)."""
    if (target, precision) not in (("onnx", "fp32"), ("onnx", "fp16"), ("trt", "fp16")):
        raise ExportError(f"this exporter writes onnx fp32/fp16 and trt fp16 bundles, not {target}/{precision}.",
                          "export through fusion_edge.targets.export_bundle (fusion-export)")
    ckpt = open_checkpoint(model)
    q, n_img = export_options(ckpt, query_len, image_tokens)
    if verify:              # greedy steps of the verification: they must fit the model's context
        check_int(steps, "--verify-steps", 1, ckpt.config.llm.max_position_embeddings)
    tokenizer = ckpt.tokenizer()

    def fill(writer: BundleWriter) -> dict:
        components = {}
        for spec in _progress(graph_specs(ckpt), f"export {target}/{precision}", progress):
            components[spec["name"]] = export_graph(ckpt, spec, writer.path(f"{spec['name']}.onnx"), precision)
        # TensorRT bundles keep the Concat attention: a com.microsoft op would split the engine
        components.update(build_shared(writer.tmp, components, gqa=target == "onnx"))
        tokenizer.save(writer.path("tokenizer"))
        fields = manifest_for(ckpt, model, target, precision, q, n_img, components, tokenizer)
        if verify:      # the CUDA twin of decode.onnx, compared with it (runtime/graph_gates.py)
            gate_decode_twin_fields(writer.tmp, fields, force)
        return manifest_extend(fields) if manifest_extend else fields

    def check(folder: Path) -> dict:       # a forced twin gate makes the bundle "forced"
        figures = verify_folder(folder, ckpt, steps, precision, force, target)
        return fold_into(figures, recorded_gate(folder, DECODE_CONCAT, TWIN_KEY), DECODE_CONCAT)
    return write_bundle(out, fill, check if verify else None, overwrite)


def export_options(ckpt: Checkpoint, query_len: int | None, image_tokens: int | None) -> tuple[int, int]:
    """(query_len, image token count) of a bundle: checked against the checkpoint, defaults filled."""
    cfg = ckpt.config
    q = cfg.check_query_len(cfg.default_query_len if query_len is None else query_len)
    if image_tokens not in (None, cfg.tower.num_patches, FUSION_L_TOKENS):
        raise ExportError(f"--image-tokens {image_tokens} is not supported.",
                          f"use {FUSION_L_TOKENS} (FUSION-L) or leave it out ({cfg.tower.num_patches})")
    return q, image_tokens or cfg.tower.num_patches


def verify_folder(folder: Path, ckpt: Checkpoint, steps: int, precision: str, force: bool,
                  target: str = "onnx") -> dict:
    """Figures vs the PyTorch reference (export/verify.py), gated by target and precision
    (runtime/fidelity.py); below the gate an ExportError unless `force`."""
    from .reference import FusionReference
    from .verify import verify_gated
    pipe = Pipeline.open(folder, device="cpu")
    try:
        figures = verify_gated(pipe, FusionReference(ckpt), precision, target, steps=steps)
    finally:
        pipe.llm.close()
    passed, reasons = figures["passed"], figures["gate"]
    log.info(format_reference(figures))
    if not passed and not force:
        raise ExportError(f"the exported {target} bundle does not match the reference closely enough: "
                          + "; ".join(reasons),
                          "report this with the figures above; --force keeps the bundle anyway")
    return figures
