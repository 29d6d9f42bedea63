"""`vision.gguf`: FUSION's vision side for the native (all-ggml) runtime (native/).

One GGUF with the SigLIP/SigLIP2 tower, mm_projector, aux_projector and the interaction
(alignment) layers, under their canonical names (export/weight_map.py), e.g.
`vision.layers.3.qkv.weight` (3Dv, Dv), `mm_projector.0.weight` (H, 3Dv), `align.7.q.weight`.
numpy shapes are written as they are; ggml sees them reversed (ne0 = last numpy dim), so a
Linear weight (out, in) is a ggml (in, out) matrix ready for ggml_mul_mat.
Hyperparameters are `fusion.*` metadata. Types: F32 (parity), F16, or Q8_0 (2-D weights
whose rows are a multiple of 32; everything else F16 / F32). Norms, biases, the position
table and the patch kernel stay F32 at every type.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.precisions import PRECISIONS

from .checkpoint import Checkpoint
from .gguf_writer import import_gguf
from .ref_align import CROSS_ATTN_HEADS
from .weight_map import projector_entries, sampler_entries, tower_entries

VISION_GGUF = "vision.gguf"
ARCH = "fusion-vision"
VISION_QUANTS = ("F32", "F16", "Q8_0")
PRECISION_OF = {"F32": "fp32", "F16": "fp16", "Q8_0": "int8"}      # the manifest's precision name of each type
ALIGN_LN_EPS = 1e-5      # nn.LayerNorm's default, used by the alignment layers
PRECISION_VISION_QUANT = {name: p.gguf_vision for name, p in PRECISIONS.items()}



def write_vision_gguf(ckpt: Checkpoint, dst: Path, quant: str = "F32") -> dict:
    """Write dst; → its component record (files, quant, tensor count, bytes)."""
    if quant not in VISION_QUANTS:
        raise ExportError(f"vision.gguf type '{quant}' is not offered.", f"choose one of: {', '.join(VISION_QUANTS)}")
    gguf = import_gguf()
    cfg = ckpt.config
    writer = gguf.GGUFWriter(str(dst), ARCH)
    _write_metadata(writer, cfg)
    entries = tower_entries(cfg) + projector_entries(cfg) + sampler_entries(cfg)
    plan = [(e, _tensor_type(gguf, e.name, e.shape, quant)) for e in entries]
    for e, t in plan:                     # infos first, then the data one tensor at a time (streamed)
        shape, dtype, nbytes = _stored(gguf, e.shape, t)
        writer.add_tensor_info(e.name, shape, dtype, nbytes, raw_dtype=t if dtype == np.uint8 else None)
    types: dict[str, int] = {}
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for e, t in plan:
            arr = np.ascontiguousarray(ckpt.canonical(e), dtype=np.float32)
            if arr.shape != e.shape:
                raise ExportError(f"vision.gguf tensor {e.name}: got shape {arr.shape}, expected {e.shape}.",
                                  "the checkpoint does not match its config.json")
            writer.write_tensor_data(_convert(gguf, arr, t))
            types[t.name] = types.get(t.name, 0) + 1
            del arr
    finally:
        writer.close()
    return {"name": "native_vision", "backend": "ggml", "format": "gguf", "precision": PRECISION_OF[quant],
            "files": [dst.name],
            "quant": quant, "tensors": len(entries), "type_counts": types, "bytes": dst.stat().st_size}


def _tensor_type(gguf, name: str, shape: tuple[int, ...], quant: str):
    T = gguf.GGMLQuantizationType
    matrix = len(shape) == 2 and name.endswith(".weight") and name != "vision.pos"
    if quant == "F32" or not matrix:
        return T.F32
    if quant == "Q8_0" and shape[1] % 32 == 0:
        return T.Q8_0
    return T.F16


def _stored(gguf, shape: tuple[int, ...], t) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape as stored, numpy dtype, bytes) of a tensor of `shape` written as type t."""
    T = gguf.GGMLQuantizationType
    n = int(np.prod(shape))
    if t == T.F32:
        return shape, np.dtype(np.float32), 4 * n
    if t == T.F16:
        return shape, np.dtype(np.float16), 2 * n
    block, size = gguf.GGML_QUANT_SIZES[t]
    byte_shape = (*shape[:-1], shape[-1] // block * size)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


def _convert(gguf, arr: np.ndarray, t) -> np.ndarray:
    T = gguf.GGMLQuantizationType
    if t == T.F32:
        return arr
    if t == T.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, t)


def metadata(cfg) -> dict:
    """The `fusion.*` hyperparameters of vision.gguf: key → int (uint32), str, float (float32)
    or list of ints (array). Written by `_write_metadata`, checked by the export's gate."""
    t = cfg.tower
    u32 = {
        "fusion.tower.hidden_size": t.hidden_size, "fusion.tower.num_heads": t.num_heads,
        "fusion.tower.intermediate_size": t.intermediate_size, "fusion.tower.num_layers": t.num_layers,
        "fusion.tower.patch_size": t.patch_size, "fusion.tower.image_size": t.image_size,
        "fusion.tower.early_layers": t.early_layers,
        "fusion.llm.hidden_size": cfg.llm.hidden_size, "fusion.projector.depth": cfg.projector_depth,
        "fusion.align.count": len(cfg.interaction_layers), "fusion.align.heads": CROSS_ATTN_HEADS,
        "fusion.window_size": cfg.window_size, "fusion.default_query_len": cfg.default_query_len,
    }
    return {**{k: int(v) for k, v in u32.items()},
            "fusion.tower.type": t.tower_type, "fusion.projector.type": cfg.projector_type,
            "fusion.tower.layer_norm_eps": float(t.layer_norm_eps), "fusion.align.layer_norm_eps": ALIGN_LN_EPS,
            "fusion.align.llm_layers": [int(x) for x in cfg.interaction_layers],
            "fusion.query_lens": [int(x) for x in cfg.query_lens]}


def _write_metadata(w, cfg) -> None:
    w.add_name("fusion vision + alignment")
    for k, v in metadata(cfg).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, list):
            w.add_array(k, v)
        else:
            w.add_uint32(k, v)
