"""`fusion-export`: checkpoint → complete, verified bundle (written atomically).

Steps: open and validate the checkpoint → export every graph (progress bar) → tokenizer
→ manifest (facts, components, hashes, build info) → verify against the PyTorch
reference → gate → rename into place. A failure at any step leaves no bundle folder.
"""
from __future__ import annotations

import platform
from pathlib import Path

from fusion_edge import __version__
from fusion_edge.runtime.bundle import Bundle, BundleWriter
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.pipeline import FUSION_L_TOKENS, Pipeline
from fusion_edge.runtime.prompt import stop_token_ids

from .checkpoint import Checkpoint, open_checkpoint
from .onnx_export import OPSET, export_graph, graph_specs

# target → precisions → "module:function" that writes the bundle. Each exporter has the
# signature of `export_bundle` below; the onnx fp32/fp16 path is the one in this module.
TARGETS = {
    "onnx": {"fp32": None, "fp16": None,
             "int8": "fusion_edge.quantize.onnx_quant:export_quantized_bundle",
             "int4": "fusion_edge.quantize.onnx_quant:export_quantized_bundle"},
    "gguf": {p: "fusion_edge.export.gguf_bundle:export_gguf_bundle" for p in ("fp32", "fp16", "int8", "int4")},
    "trt": {p: "fusion_edge.export.bundle_export:trt_not_available" for p in ("fp16", "int8", "int4")},
}


def trt_not_available(model, out, **kw):
    raise ExportError(
        "TensorRT engine bundles are not built by this fusion-edge version yet.",
        f"export TensorRT-ready graphs instead: fusion-export MODEL --target onnx --precision "
        f"{kw.get('precision', 'int8')} -o BUNDLE (symmetric Q/DQ for int8, see docs/quantization.md), "
        "and run them with onnxruntime-gpu on the device")


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, unit="graph", leave=False)


def build_info() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch
    return {"fusion_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "opset": OPSET,
            "python": platform.python_version(), "machine": platform.machine()}


def check_target(target: str, precision: str):
    """→ the exporter function for (target, precision), or None for this module's onnx path."""
    if target not in TARGETS:
        raise ExportError(f"target '{target}' is not available in this fusion-edge build.",
                          f"available targets: {', '.join(TARGETS)}")
    if precision not in TARGETS[target]:
        raise ExportError(f"precision '{precision}' is not available for target '{target}'.",
                          f"choose one of: {', '.join(TARGETS[target])}")
    ref = TARGETS[target][precision]
    if ref is None:
        return None
    import importlib
    module, func = ref.split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"the {target}/{precision} exporter is not available in this build ({e}).",
                          "install the matching extra, or choose --target onnx --precision fp32|fp16") from None


def manifest_for(ckpt: Checkpoint, model: str, target: str, precision: str, query_len: int,
                 image_tokens: int, components: dict, tokenizer, llm_backend: str = "onnxruntime") -> dict:
    cfg = ckpt.config
    return {
        "target": target, "precision": precision, "llm_backend": llm_backend,
        "source": {"model": str(model), "fingerprint": ckpt.fingerprint(), "model_type": cfg.llm.model_type,
                   "mm_vision_tower": cfg.mm_vision_tower},
        "fusion": cfg.to_dict(),
        "options": {"query_len": query_len, "image_tokens": image_tokens, "query_lens": list(cfg.query_lens)},
        "prompt": {"template": cfg.template, "stop_token_ids": list(stop_token_ids(tokenizer, cfg.template)),
                   "max_length": cfg.tokenizer_model_max_length},
        "components": components, "build": build_info(),
    }


def export_bundle(model: str, out: str | Path, target: str = "onnx", precision: str = "fp32",
                  query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                  verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True,
                  log=print, **extra) -> Path:
    exporter = check_target(target, precision)
    if exporter is not None:
        return exporter(model, out, target=target, precision=precision, query_len=query_len,
                        image_tokens=image_tokens, overwrite=overwrite, verify=verify, force=force,
                        steps=steps, progress=progress, log=log, **extra)
    ckpt = open_checkpoint(model)
    cfg = ckpt.config
    q = cfg.check_query_len(query_len or cfg.default_query_len)
    if image_tokens not in (None, cfg.tower.num_patches, FUSION_L_TOKENS):
        raise ExportError(f"--image-tokens {image_tokens} is not supported.",
                          f"use {FUSION_L_TOKENS} (FUSION-L) or leave it out ({cfg.tower.num_patches})")
    n_img = image_tokens or cfg.tower.num_patches
    tokenizer = ckpt.tokenizer()
    with BundleWriter(out, overwrite) as writer:
        components = {}
        for spec in _progress(graph_specs(ckpt), f"export {target}/{precision}", progress):
            components[spec["name"]] = export_graph(ckpt, spec, writer.path(f"{spec['name']}.onnx"), precision)
        tokenizer.save(writer.path("tokenizer"))
        manifest = manifest_for(ckpt, model, target, precision, q, n_img, components, tokenizer)
        manifest = writer.write_manifest(manifest)
        if verify:
            figures = verify_folder(writer.tmp, ckpt, steps, precision, force, log)
            Bundle(writer.tmp, manifest).update_manifest(verification=figures)
        return writer.commit()


def verify_folder(folder: Path, ckpt: Checkpoint, steps: int, precision: str, force: bool, log,
                  target: str = "onnx") -> dict:
    """Figures vs the PyTorch reference, gated by target and precision (export/verify.py)."""
    from .reference import FusionReference
    from .verify import gate, verify
    pipe = Pipeline.open(folder, device="cpu")
    try:
        figures = verify(pipe, FusionReference(ckpt), steps=steps)
    finally:
        close = getattr(pipe.llm, "close", None)
        if close:
            close()
    passed, reasons = gate(figures, precision, target)
    figures.update({"passed": passed, "gate": reasons, "device": "cpu"})
    log(format_figures(figures))
    if not passed and not force:
        raise ExportError(f"the exported {target} bundle does not match the reference closely enough: "
                          + "; ".join(reasons),
                          "report this with the figures above; --force keeps the bundle anyway")
    return figures


def format_figures(f: dict) -> str:
    lines = [f"verification on {f['cases']} built-in cases, {f['steps']} greedy steps:"]
    for name, d in sorted(f["per_graph_max_abs"].items()):
        lines.append(f"  {name:<14} max |Δ| {d:.3g}")
    lines.append(f"  end to end: max |Δlogit| {f['max_dlogit']:.3g}, top-1 agreement {f['top1_agreement']:.0%}, "
                 f"greedy agreement {f['greedy_agreement']:.0%} (shortest identical prefix {f['greedy_prefix_min']})")
    if "passed" in f:
        lines.append("  gate: " + ("passed" if f["passed"] else "FAILED: " + "; ".join(f["gate"])))
    return "\n".join(lines)
