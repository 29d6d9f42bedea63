"""Tiny FUSION checkpoints for tests and demos: random weights in the released on-disk format.

`make_tiny_checkpoint` writes config.json (the released fields), the tower's config.json
in a local folder named by `mm_vision_tower`, safetensors under the released key names
(single file or sharded + index) and a real tokenizer built locally. Widths are small,
structure is real: 729 / 576 image tokens, the tower's full depth and early/late split,
32 LLM layers with the 10 interaction layers 0, 3, ..., 27. A `TinySize` with fewer layers
(bench/real_size.py --llm-layers/--vision-layers) gets the schedule cut to its depth
(`interaction_schedule`) and, with `tower_layers`, the early/late split scaled in the
released ratio (`scaled_early_layers`, written as config.json `mm_vision_early_layers`).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion_edge.runtime.arch import by_tiny_name
from fusion_edge.runtime.config import LLM_PRESETS, TOWER_NAMES, TOWER_PRESETS, TOWER_TYPES, parse_fusion_config
from fusion_edge.runtime.errors import OptionError
from fusion_edge.runtime.option_types import SHARD_NAME_MAX, check_int, check_output_dir, check_query_lens

from .safetensors_io import f32_to_bf16, save_file
from .tiny_tokenizer import write_tiny_tokenizer
from .weight_map import all_entries


@dataclass(frozen=True)
class TinySize:
    hidden: int
    heads: int
    kv_heads_llama: int
    intermediate: int
    layers: int
    tower_hidden: int
    tower_heads: int
    tower_mlp: int
    vocab: int | None = None    # None: the tokenizer's size padded to a multiple of 64
    tower_layers: int | None = None   # tower layers that RUN; None: the released depth


def interaction_schedule(layers: int) -> dict:
    """The released schedule (10 interaction layers 0, 3, ..., 27 in 32 layers) cut to an LLM
    of `layers` (>= 2) layers: every 3rd layer from 0 that has a layer after it, at most 10.
    An interaction runs after its layer and changes the latent rows; after the last layer
    nothing reads them (the exporters cut no segment there), so it would be dead weight."""
    return {"num_of_vision_sampler_layers": min(10, len(range(0, layers - 1, 3))),
            "start_of_vision_sampler_layers": 0, "stride_of_vision_sampler_layers": 3}


def scaled_early_layers(tower: str, layers: int) -> int:
    """The early/late split of a tower shortened to `layers` running layers, in the released
    tower's ratio (siglip2: 19 of 39, so400m: 13 of 26): round(layers * E / base), kept within
    1 <= E <= layers // 2 so that both connector means have E states."""
    p = TOWER_PRESETS[tower]
    e = TOWER_TYPES[tower]["early_layers"]
    return max(1, min(layers // 2, round(layers * e / (p["base_layers"] - 1))))


def preset_size(llm_preset: str, tower_preset: str) -> TinySize:
    """The REAL dimensions of a released LLM + tower (runtime/config.py presets), for
    memory and size measurements of the export with random weights (e.g.
    `preset_size("phi3.5-mini", "siglip2")` = FUSION-X-Phi3.5-3B)."""
    c, t = LLM_PRESETS[llm_preset], TOWER_PRESETS[tower_preset]
    return TinySize(c["hidden_size"], c["num_heads"], c["num_kv_heads"], c["intermediate_size"], c["num_layers"],
                    t["hidden_size"], t["num_heads"], t["intermediate_size"], vocab=c["vocab_size"])


SIZES = {
    "tiny": TinySize(64, 4, 2, 128, 32, 32, 2, 64),
    # real token counts, widths small enough for a CPU benchmark of seconds
    "bench": TinySize(256, 8, 2, 768, 32, 128, 4, 512),
}
TOWERS = ("so400m", "siglip2")
# Measured on the tiny phi3/llama3 checkpoints (6 cases x 24 greedy steps = 144 steps each):
# top-1 margin median 3.3 / 3.4 logits, 10th percentile 0.53 / 0.63, min 0.056 / 0.004;
# first-step margins 0.5–4.1 (phi3), 1.5–2.8 (llama3); answers vary with the image.
LOGIT_STD = 16.0      # lm_head scale: peaked next-token distributions → stable greedy tokens
EMBED_STD = 3.0       # token embeddings dominate the residual stream: answers follow the tokens
RESIDUAL_GAIN = 0.25  # output projections of every residual branch


def make_tiny_checkpoint(out: str | Path, llm: str = "phi3", tower: str = "so400m",
                         preset: str = "tiny", query_len: str = "4,16,36,64,144", seed: int = 0,
                         shards: int = 1, dtype: str = "F32", max_length: int = 2048,
                         size: TinySize | None = None) -> Path:
    """`size` (optional) replaces the preset's dimensions, e.g. `preset_size(...)`; the
    weights are then generated and written one tensor at a time, never all in RAM."""
    by_tiny_name(llm)
    if tower not in TOWERS:
        raise ValueError(f"--tower must be one of {TOWERS}")
    if preset not in SIZES:
        raise ValueError(f"--preset must be one of {sorted(SIZES)}")
    check_int(seed, "--seed", 0)
    check_int(shards, "--shards", 1, SHARD_NAME_MAX)
    p = TOWER_PRESETS[tower]
    check_query_lens(query_len, high=(p["image_size"] // p["patch_size"]) ** 2)
    out = check_output_dir(out, "the checkpoint folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tok = write_tiny_tokenizer(out, llm)
    stream = size is not None
    size = size or SIZES[preset]
    tower_dir = f"tiny-{TOWER_NAMES[tower].split('/')[-1]}"
    _write_tower_config(out / tower_dir, tower, size)
    config = _llm_config(llm, size, tok, max_length) | _fusion_fields(tower_dir, size, query_len)
    if size.tower_layers is not None:
        config["mm_vision_early_layers"] = scaled_early_layers(tower, size.tower_layers)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    cfg = parse_fusion_config(config, out)
    n_tensors = sum(len(e.sources) for e in all_entries(cfg))
    if shards > n_tensors:               # a shard holds at least one tensor; known once the config is
        if created:                      # written: what this call wrote goes again
            shutil.rmtree(out, ignore_errors=True)
        raise OptionError(f"--shards {shards} is more than the checkpoint's {n_tensors} tensors.",
                          f"pass --shards {n_tensors} or fewer")
    rng = np.random.default_rng(seed)
    if stream:
        _stream_weights(out, cfg, rng, tok, shards, dtype)
        return out
    tensors = {}
    for entry in all_entries(cfg):
        full = _init(entry.name, entry.shape, rng, cfg)
        rows = np.cumsum([0] + [s[0] for s in entry.shapes])
        for key, a, b in zip(entry.sources, rows[:-1], rows[1:]):
            tensors[key] = full[a:b]
    _shape_lm_head(tensors, tok, out)
    _write_weights(out, tensors, shards, dtype)
    return out


# ---- config.json ---------------------------------------------------------------------------
def _llm_config(llm: str, s: TinySize, tok: dict, max_length: int) -> dict:
    vocab = s.vocab or int(math.ceil(tok["vocab_size"] / 64) * 64)      # padded like the released 32064
    hd = s.hidden // s.heads
    base = {"hidden_size": s.hidden, "intermediate_size": s.intermediate, "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "initializer_range": 0.02, "attention_dropout": 0.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
            "bos_token_id": tok["bos_token_id"], "eos_token_id": tok["eos_token_id"],
            "pad_token_id": tok.get("pad_token_id"), "transformers_version": "4.44.2"}
    return base | by_tiny_name(llm).tiny_config(s.heads, s.kv_heads_llama, hd)


def _fusion_fields(tower_dir: str, s: TinySize, query_len: str) -> dict:
    return {"mm_vision_tower": tower_dir, "mm_hidden_size": s.tower_hidden,
            "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
            "mm_use_im_start_end": True, "mm_use_im_patch_token": False,
            "image_aspect_ratio": "static_hd", "query_len": query_len, "window_size": 3,
            **interaction_schedule(s.layers), "tokenizer_model_max_length": 2048,
            "tokenizer_padding_side": "right", "use_mm_proj": True, "unfreeze_mm_vision_tower": True}


def _write_tower_config(folder: Path, tower: str, s: TinySize) -> None:
    p = TOWER_PRESETS[tower]
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "siglip2_vision_model" if tower == "siglip2" else "siglip_vision_model",
           "hidden_size": s.tower_hidden, "num_attention_heads": s.tower_heads,
           "intermediate_size": s.tower_mlp,
           "num_hidden_layers": p["base_layers"] if s.tower_layers is None else s.tower_layers + 1,
           "patch_size": p["patch_size"], "image_size": p["image_size"], "num_channels": 3,
           "layer_norm_eps": p["layer_norm_eps"], "hidden_act": "gelu_pytorch_tanh"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


# ---- weights ---------------------------------------------------------------------------------
_RESIDUAL_OUT = (".o.weight", ".down.weight", ".out.weight", ".fc2.weight", ".mlp2.weight")


def _init(name: str, shape: tuple, rng: np.random.Generator, cfg) -> np.ndarray:
    """Scaled random init that keeps activations O(1) through 32 layers."""
    if name.endswith("norm.weight") or ".ln" in name and name.endswith(".weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias") or name.endswith("norm.bias"):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if name == "llm.embed.weight":
        return (EMBED_STD * rng.standard_normal(shape)).astype(np.float32)
    if name == "vision.pos":
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    gain = LOGIT_STD if name == "llm.lm_head.weight" else 1.0
    if name.endswith(_RESIDUAL_OUT):
        gain = RESIDUAL_GAIN
    return (gain / math.sqrt(fan_in) * rng.standard_normal(shape)).astype(np.float32)


def _shape_lm_head(tensors: dict, tok: dict, folder: Path) -> None:
    """Padding rows never win; stop tokens rarely win, so greedy answers run their length;
    tokens that are not text on their own (lone UTF-8 bytes) rarely win, so answers read
    as words rather than replacement characters."""
    from fusion_edge.runtime.tokenizer import Tokenizer
    head = tensors["lm_head.weight"]
    head[tok["vocab_size"]:] = 0.0
    tokenizer = Tokenizer.from_dir(folder)
    partial = [i for i in range(tok["vocab_size"]) if "\ufffd" in tokenizer.decode([i])]
    head[partial] *= 0.2
    stops = [i for name, i in tok["special"].items()
             if name in ("<|end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")]
    head[stops] *= 0.05


def _write_weights(out: Path, tensors: dict, shards: int, dtype: str) -> None:
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    meta = {"format": "pt"}
    if shards <= 1:
        save_file(tensors, out / "model.safetensors", dtype, meta)
        return
    keys = list(tensors)
    per = math.ceil(len(keys) / shards)
    weight_map, total = {}, 0
    for n in range(shards):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[n * per:(n + 1) * per]}
        save_file(part, out / name, dtype, meta)
        for k, v in part.items():
            weight_map[k] = name
            total += v.size * (2 if dtype in ("BF16", "F16") else 4)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _stream_weights(out: Path, cfg, rng: np.random.Generator, tok: dict, shards: int, dtype: str) -> None:
    """The tensors of the in-memory path (same values, order, sharding and file layout),
    each generated, converted and appended to its shard file on its own: peak RAM is one
    tensor, so real-size checkpoints can be written on a small machine."""
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    entries = all_entries(cfg)
    keys = [(k, shape) for e in entries for k, shape in zip(e.sources, e.shapes)]
    n = max(shards, 1)
    per = math.ceil(len(keys) / n)
    names = (["model.safetensors"] if n == 1
             else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    groups = [keys[i * per:(i + 1) * per] for i in range(n)]
    width = 2 if dtype in ("BF16", "F16") else 4
    shard_of = {k: i for i, g in enumerate(groups) for k, _ in g}
    files: list = [None] * n
    try:
        for entry in entries:
            full = _init(entry.name, entry.shape, rng, cfg)
            rows = np.cumsum([0] + [s[0] for s in entry.shapes])
            for key, a, b in zip(entry.sources, rows[:-1], rows[1:]):
                part = full[a:b]
                if key == "lm_head.weight":
                    _shape_lm_head({key: part}, tok, out)
                i = shard_of[key]
                if files[i] is None:
                    if i > 0 and files[i - 1] is not None:
                        files[i - 1].close()
                    files[i] = open(out / names[i], "wb")
                    files[i].write(_header(groups[i], dtype, width))
                files[i].write(_encode(part, dtype).tobytes())
    finally:
        for f in files:
            if f is not None and not f.closed:
                f.close()
    if n > 1:
        total = sum(int(np.prod(shape)) * width for _, shape in keys)
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[shard_of[k]] for k, _ in keys}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _header(group: list, dtype: str, width: int) -> bytes:
    """8-byte length + JSON header, byte-identical to `save_file`'s for these tensors."""
    header, offset = {}, 0
    for key, shape in group:
        nbytes = int(np.prod(shape)) * width
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return f32_to_bf16(x)
    return np.ascontiguousarray(x, dtype=np.float16 if dtype == "F16" else np.float32)
