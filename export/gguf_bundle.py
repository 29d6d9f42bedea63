"""`fusion-export MODEL --target gguf`: the LLM as a llama.cpp GGUF, vision + alignment as ONNX.

Bundle contents: `vision.onnx` and `align_00..NN.onnx` (the same graphs as the onnx target,
run by onnxruntime), `llm.gguf` (the decoder for llama.cpp, at the precision's GGUF type),
`vision.gguf` (tower, projectors and alignment layers for the native runtime, native/;
gated at export against the checkpoint's, export/vision_gguf_gate.py),
`tokenizer/`, and `fusion_bundle.json` with `"llm_backend": "llama.cpp"`, the quant type
and the type each GGUF tensor actually got. Precision → GGUF type: fp32 → F32 (run with an
f32 KV cache and flash attention off: parity mode), fp16 → F16, int8 → Q8_0, int4 → Q4_K_M
(`quant="Q4_0"` picks Q4_0 instead). Written atomically and verified against the PyTorch
reference like every bundle: the fp32 (F32) bundle must pass the onnx fp32 gate; a
quantized one (F16, Q8_0, Q4_0, Q4_K_M) must pass the `gate` it is given, which
fusion_edge/targets.py builds from quantize/agreement.py: teacher-forced top-1 agreement
and logit cosine against the verified fp32 ONNX pipeline and the PyTorch reference, with
per-type bounds (runtime/fidelity.py GATES["fp32_pipeline"], docs/gguf.md).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fusion_edge.runtime.bundle import Bundle, BundleWriter, write_bundle
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.graph_gates import VISION_KEY, fold_into, recorded_gate

from .bundle_export import _progress, export_options, manifest_for, verify_folder
from .checkpoint import Checkpoint, open_checkpoint
from .isolated import run_isolated
from .gguf_writer import PRECISION_QUANT, QUANT_TYPES, quantize_gguf, tensor_types, type_counts, write_gguf
from .onnx_export import export_graph, graph_specs
from .vision_gguf import PRECISION_VISION_QUANT, VISION_GGUF, write_vision_gguf
from .vision_gguf_gate import gate_vision_gguf

log = logging.getLogger(__name__)

LLM_FILE = "llm.gguf"
CRASH_FIX = ("nothing was kept. Export with --no-verify to keep the bundle marked unverified and check it with "
             "`fusion-edge verify BUNDLE --model CKPT --device cpu`; on a CUDA build of llama-cpp-python, a CPU "
             "build for the export avoids its GPU code (CMAKE_ARGS=\"-DGGML_CUDA=off\" pip install "
             "--force-reinstall llama-cpp-python). Please report the crash with the frames above")


def export_gguf_bundle(model: str, out: str | Path, target: str = "gguf", precision: str = "fp32",
                       query_len: int | None = None, image_tokens: int | None = None, overwrite: bool = False,
                       verify: bool = True, force: bool = False, steps: int = 16, progress: bool = True,
                       gate=None, **extra) -> Path:
    """Write a verified gguf bundle. gate: (folder, quant type) → figures, raising below the
    quality gate; needed to verify a quantized bundle (fusion_edge/targets.py builds it).
    Extra options: quant ("F16", "Q8_0", "Q4_0", "Q4_K_M";
    default from the precision), vision_precision ("fp32" | "fp16", default "fp32"), threads
    (llama.cpp quantizer), onnx_from (a bundle of the same checkpoint whose vision/align ONNX
    graphs are copied instead of exported again, e.g. to make several quant types quickly),
    vision_quant (vision.gguf: "F32", "F16", "Q8_0"; default from the precision)."""
    quant = extra.pop("quant", None) or PRECISION_QUANT.get(precision)
    vision_precision = extra.pop("vision_precision", "fp32")
    threads = int(extra.pop("threads", 0) or 0)
    onnx_from = extra.pop("onnx_from", None)
    vision_quant = extra.pop("vision_quant", None) or PRECISION_VISION_QUANT.get(precision, "F32")
    if extra:
        raise ExportError(f"unknown gguf export option(s): {', '.join(sorted(extra))}.",
                          "known: quant, vision_precision, vision_quant, threads, onnx_from")
    if quant not in QUANT_TYPES:
        raise ExportError(f"GGUF quant type '{quant}' is not offered.", f"choose one of: {', '.join(QUANT_TYPES)}")
    if vision_precision not in ("fp32", "fp16"):
        raise ExportError(f"vision_precision '{vision_precision}' is not offered.", "use fp32 or fp16")
    if verify and quant != "F32" and gate is None:
        raise ExportError(f"a {quant} GGUF bundle is verified by its quality gate against the fp32 pipeline, "
                          "and none was given.", "export through fusion-export (fusion_edge.targets.export_bundle)")
    ckpt = open_checkpoint(model)
    q, n_img = export_options(ckpt, query_len, image_tokens)
    tokenizer = ckpt.tokenizer()

    def fill(writer: BundleWriter) -> dict:
        if onnx_from:
            components = copy_onnx_parts(onnx_from, ckpt, writer, vision_precision)
        else:
            components = {}
            specs = [s for s in graph_specs(ckpt) if s["name"] == "vision" or s["name"].startswith("align_")]
            for spec in _progress(specs, f"export gguf/{precision} (onnx parts)", progress):
                components[spec["name"]] = export_graph(ckpt, spec, writer.path(f"{spec['name']}.onnx"),
                                                        vision_precision)
        components["llm"] = write_llm(ckpt, writer, precision, quant, tokenizer, progress, threads)
        # vision.gguf: the vision side for the native runtime (native/); the Python runtime ignores it
        components["native_vision"] = write_vision_gguf(ckpt, writer.path(VISION_GGUF), vision_quant)
        if verify:      # ... which nothing else here runs: gated against the checkpoint's vision side
            components["native_vision"][VISION_KEY] = gate_vision_gguf(ckpt, writer.path(VISION_GGUF),
                                                                       vision_quant, tokenizer, force)
        tokenizer.save(writer.path("tokenizer"))
        manifest = manifest_for(ckpt, model, target, precision, q, n_img, components, tokenizer,
                                llm_backend="llama.cpp")
        log.info(f"llm.gguf: {quant}, {components['llm']['bytes'] / 2**20:.2f} MiB, tensor types "
                 f"{components['llm']['type_counts']}")
        return manifest

    def check(folder: Path) -> dict:        # llama.cpp runs in a child: a native crash there is an error here
        figures = run_isolated(verify_llm, folder, model, quant, gate, steps, precision, force,
                               what=f"verifying the bundle ({LLM_FILE}, {quant}) with llama.cpp", fix=CRASH_FIX)
        # a vision.gguf kept below its gate with --force makes the bundle "forced"
        return fold_into(figures, recorded_gate(folder, "native_vision", VISION_KEY), VISION_GGUF)
    return write_bundle(out, fill, check if verify else None, overwrite)


def verify_llm(folder: Path, model: str, quant: str, gate, steps: int, precision: str, force: bool) -> dict:
    """The verification step of a gguf export: the quality gate of a quantized llm.gguf, or
    the fp32 comparison with the PyTorch reference. Runs in export/isolated.py's child."""
    if quant != "F32":
        return gate(folder, quant)
    return verify_folder(folder, open_checkpoint(model), steps, precision, force, target="gguf")


def copy_onnx_parts(source: str | Path, ckpt: Checkpoint, writer: BundleWriter, precision: str) -> dict:
    """The vision + align_* graphs of an existing bundle of the same checkpoint → component records."""
    src = Bundle.open(source)
    src.check_source(ckpt.fingerprint)
    names = [n for n in src.components if n == "vision" or n.startswith("align_")]
    if "vision" not in names or len(names) != 1 + len(ckpt.config.interaction_layers):
        raise ExportError(f"bundle {source} does not hold the vision and alignment graphs.",
                          "pass an onnx or gguf bundle of this checkpoint, or leave onnx_from out")
    out = {}
    for name in names:
        comp = dict(src.components[name])
        if comp.get("precision") != precision:
            raise ExportError(f"{name} in {source} is {comp.get('precision')}, not {precision}.",
                              f"pass a bundle whose vision graphs are {precision}, or leave onnx_from out")
        for f in comp["files"]:
            shutil.copyfile(src.file(f), writer.path(f))
        out[name] = comp
    return out


def write_llm(ckpt: Checkpoint, writer: BundleWriter, precision: str, quant: str, tokenizer,
              progress: bool, threads: int = 0) -> dict:
    """llm.gguf in the bundle folder (f32 written from the checkpoint, then requantized) →
    its component record."""
    dst = writer.path(LLM_FILE)
    if quant == "F32":
        info = write_gguf(ckpt, dst, tokenizer, progress)
    else:
        tmp = writer.path("llm.f32.gguf.tmp")     # never listed in the manifest
        try:
            info = write_gguf(ckpt, tmp, tokenizer, progress)
            quantize_gguf(tmp, dst, quant, threads)
        finally:
            tmp.unlink(missing_ok=True)
    types = tensor_types(dst)
    parity = precision == "fp32" and quant == "F32"
    return {"name": "llm", "backend": "llama.cpp", "precision": precision, "files": [LLM_FILE],
            "format": "gguf", "arch": info["arch"], "quant": quant, "bytes": dst.stat().st_size,
            "kv_cache": "f32" if parity else "f16", "flash_attn": "off" if parity else "auto",
            "type_counts": type_counts(types), "k_quant_fallbacks": _k_fallbacks(quant, types),
            "tensor_types": types}


def _k_fallbacks(quant: str, types: dict[str, str]) -> int:
    """Quantized tensors that did not get a K type although a K-quant was asked for (llama.cpp
    falls back to Q5_0 / Q8_0 ... on rows that are not multiples of 256)."""
    if "_K" not in quant:
        return 0
    return sum(1 for t in types.values() if t not in ("F32", "F16") and not t.endswith("_K"))

