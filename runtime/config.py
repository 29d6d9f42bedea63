"""FUSION configuration as dataclasses: the LLM, the vision tower, the FUSION fields.

The LLM architecture registry is runtime/arch.py (re-exported here); the tower types are
`TOWER_TYPES`; presets by name for the released towers and LLMs. Parsed from a
checkpoint's `config.json` (docs/fusion.md §1) and stored verbatim in bundles.
Pure Python: the runtime and the export side both use it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .arch import ARCHITECTURES as ARCHITECTURES  # re-exported: the registry, for callers of config
from .arch import ArchSpec, arch_spec
from .errors import ConfigError, UnsupportedArchitectureError
from .rope_scaling import rope_scaling_kind


# --------------------------------------------------------------------------------------
# Vision towers.
@dataclass(frozen=True)
class TowerConfig:
    tower_type: str          # "so400m" | "siglip2": fixes early/late split and connector
    hidden_size: int         # Dv
    num_heads: int
    intermediate_size: int
    num_layers: int          # layers that RUN (the base tower's depth minus the dropped last)
    patch_size: int
    image_size: int
    layer_norm_eps: float = 1e-6
    early_override: int | None = None   # config.json `mm_vision_early_layers` (shortened towers only)

    @property
    def patches_per_side(self) -> int:       # P
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:            # N = P*P
        return self.patches_per_side ** 2

    @property
    def early_layers(self) -> int:           # layer_id < early: instruct rows uniform
        if self.early_override is not None:
            return self.early_override
        return TOWER_TYPES[self.tower_type]["early_layers"]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# The type decides the early/late split and the connector means (docs/fusion.md §4): means
# over hs[0:E] and hs[E:2E], last = hs[num_layers]. Released checkpoints never override it;
# a checkpoint with a shortened tower (bench/real_size.py --vision-layers) may, through the
# config.json field `mm_vision_early_layers` (1 <= E, 2E <= the layers that run).
TOWER_TYPES: dict[str, dict[str, Any]] = {
    "so400m": {"early_layers": 13},
    "siglip2": {"early_layers": 19},
}

# Presets of the released base towers (hyper-parameters of the BASE tower; num_layers
# here is the base depth, one more than what runs).
TOWER_PRESETS: dict[str, dict[str, Any]] = {
    "so400m": dict(hidden_size=1152, num_heads=16, intermediate_size=4304, base_layers=27,
                   patch_size=14, image_size=384, layer_norm_eps=1e-6),
    "siglip2": dict(hidden_size=1536, num_heads=16, intermediate_size=6144, base_layers=40,
                    patch_size=16, image_size=384, layer_norm_eps=1e-6),
}
TOWER_NAMES = {
    "so400m": "google/siglip-so400m-patch14-384",
    "siglip2": "google/siglip2-giant-opt-patch16-384",
}


def tower_type_of(name: str) -> str:
    """The reference's rule: a name containing 'siglip2' is siglip2-type, else 'siglip' → so400m."""
    low = name.lower()
    if "siglip2" in low:
        return "siglip2"
    if "siglip" in low:
        return "so400m"
    raise UnsupportedArchitectureError(
        f"vision tower '{name}' is not supported.",
        "FUSION checkpoints use a SigLIP tower: mm_vision_tower must name "
        f"{TOWER_NAMES['so400m']} or {TOWER_NAMES['siglip2']} (or a local folder whose name "
        "contains 'siglip' / 'siglip2')",
    )


def resolve_tower(name: str, checkpoint_dir: str | os.PathLike | None) -> TowerConfig:
    """Tower hyper-parameters from `mm_vision_tower` (docs/fusion.md §1).

    A local folder (absolute, or relative to the checkpoint folder) with a config.json
    wins; otherwise the preset of the tower type. Only hyper-parameters come from there.
    """
    ttype = tower_type_of(name)
    folder = _local_tower_folder(name, checkpoint_dir)
    if folder is None:
        p = TOWER_PRESETS[ttype]
        return TowerConfig(ttype, p["hidden_size"], p["num_heads"], p["intermediate_size"],
                           p["base_layers"] - 1, p["patch_size"], p["image_size"],
                           p["layer_norm_eps"])
    cfg = _read_json(folder / "config.json")
    cfg = cfg.get("vision_config", cfg)   # a full SigLIP config nests the vision part
    try:
        return TowerConfig(
            ttype, int(cfg["hidden_size"]), int(cfg["num_attention_heads"]),
            int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"]) - 1,
            int(cfg["patch_size"]), int(cfg["image_size"]),
            float(cfg.get("layer_norm_eps", 1e-6)))
    except KeyError as missing:
        raise ConfigError(f"tower config {folder / 'config.json'} lacks field {missing}.",
                          "give the base tower's config.json (SigLIP vision config)") from None


def _local_tower_folder(name: str, checkpoint_dir) -> Path | None:
    candidates = [Path(name)]
    if checkpoint_dir is not None and not os.path.isabs(name):
        candidates.insert(0, Path(checkpoint_dir) / name)
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    return None


# --------------------------------------------------------------------------------------
# LLM.
@dataclass(frozen=True)
class LLMConfig:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: dict | None = None
    original_max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False

    @property
    def arch(self) -> ArchSpec:
        return arch_spec(self.model_type)


LLM_PRESETS: dict[str, dict[str, Any]] = {
    # Phi-3.5-mini-instruct (FUSION-*-Phi3.5-3B). rope factors: 48 = head_dim/2.
    "phi3.5-mini": dict(model_type="fusion_phi", hidden_size=3072, intermediate_size=8192,
                        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=96,
                        vocab_size=32064, rms_norm_eps=1e-5, rope_theta=10000.0,
                        max_position_embeddings=131072, original_max_position_embeddings=4096),
    # LLaMA-3.1-8B-Instruct (FUSION-*-LLaMA3.1-8B).
    "llama3.1-8b": dict(model_type="fusion_llama", hidden_size=4096, intermediate_size=14336,
                        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                        vocab_size=128258, rms_norm_eps=1e-5, rope_theta=500000.0,
                        max_position_embeddings=131072,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
}

# Released checkpoints (hub ids) by short name.
CHECKPOINTS = {
    "fusion-phi3.5-3b": "starriver030515/FUSION-Phi3.5-3B",
    "fusion-llama3.1-8b": "starriver030515/FUSION-LLaMA3.1-8B",
    "fusion-x-phi3.5-3b": "starriver030515/FUSION-X-Phi3.5-3B",
    "fusion-x-llama3.1-8b": "starriver030515/FUSION-X-LLaMA3.1-8B",
}


# --------------------------------------------------------------------------------------
# The whole FUSION config.
PROJECTOR_TYPES = ("linear", "mlpNx_gelu")


@dataclass(frozen=True)
class FusionConfig:
    llm: LLMConfig
    tower: TowerConfig
    mm_vision_tower: str
    projector_type: str                 # "linear" | "mlp{N}x_gelu"
    query_lens: tuple[int, ...]         # trained latent counts
    window_size: int                    # w
    interaction_layers: tuple[int, ...]  # LLM layer after which interaction k runs
    image_aspect_ratio: str = "static_hd"
    use_im_start_end: bool = True
    tokenizer_model_max_length: int | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def template(self) -> str:
        return self.llm.arch.template

    @property
    def default_query_len(self) -> int:
        return 36 if 36 in self.query_lens else self.query_lens[0]

    @property
    def projector_depth(self) -> int:
        return projector_depth(self.projector_type)

    def check_query_len(self, q: int) -> int:
        if q not in self.query_lens:
            raise ConfigError(f"query_len {q} is not one the checkpoint was trained with.",
                              f"choose one of {', '.join(map(str, self.query_lens))}")
        return q

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        if d["tower"]["early_override"] is None:     # released checkpoints: the dict of before
            d["tower"].pop("early_override")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        d = dict(d)
        d["llm"] = LLMConfig(**d["llm"])
        d["tower"] = TowerConfig(**d["tower"])
        for k in ("query_lens", "interaction_layers", "eos_token_id"):
            d[k] = tuple(d[k])
        return cls(**d)


def projector_depth(projector_type: str) -> int:
    import re
    if projector_type == "linear":
        return 1
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not m:
        raise UnsupportedArchitectureError(
            f"mm_projector_type '{projector_type}' is not supported.",
            "supported: linear, mlp2x_gelu (released), mlpNx_gelu")
    return int(m.group(1))


def parse_query_lens(value: Any) -> tuple[int, ...]:
    vals: tuple[int, ...]
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            vals = (value,)
        elif isinstance(value, str):
            vals = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        else:
            vals = tuple(_whole(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"query_len {value!r} is not a list of whole numbers.",
                          "fix query_len in config.json, e.g. \"4,16,36,64,144\"") from None
    for q in vals:
        if q <= 0:
            raise ConfigError(f"query_len entry {q} is not a latent count (they are 1 or more).",
                              "fix query_len in config.json, e.g. \"4,16,36,64,144\"")
        s = int(round(q ** 0.5))
        if s * s != q:
            raise ConfigError(f"query_len entry {q} is not a perfect square (q = s*s).",
                              "fix query_len in config.json, e.g. \"4,16,36,64,144\"")
    if not vals:
        raise ConfigError("query_len is empty.", "set query_len, e.g. \"4,16,36,64,144\"")
    return vals


def _whole(v: Any) -> int:
    """An int from JSON (1.5, true and "4" are not query lengths)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


def _need(cfg: dict, key: str, path: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"{path} has no field '{key}'.",
                          "use the checkpoint's original config.json (a FUSION checkpoint)")
    return cfg[key]


_REQUIRED = object()


def _number(cfg: dict, key: str, path: str, kind=int, default: Any = _REQUIRED):
    """cfg[key] as `kind` (int or float); a missing required field or a value of the wrong
    type (a string, a list, a fraction where an integer belongs) is a ConfigError."""
    value = _need(cfg, key, path) if default is _REQUIRED else cfg.get(key, default)
    if value is None and default is not _REQUIRED:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int and float(value) != int(value):
        ok = False
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{path}: field '{key}' is {value!r}, not {what}.",
                          "use the checkpoint's original config.json (a FUSION checkpoint)")
    return kind(value)


def parse_llm(cfg: dict, path: str = "config.json") -> LLMConfig:
    model_type = _need(cfg, "model_type", path)
    arch_spec(model_type)
    hidden = _number(cfg, "hidden_size", path)
    heads = _number(cfg, "num_attention_heads", path)
    llm = LLMConfig(
        model_type=model_type, hidden_size=hidden,
        intermediate_size=_number(cfg, "intermediate_size", path),
        num_layers=_number(cfg, "num_hidden_layers", path),
        num_heads=heads, num_kv_heads=_number(cfg, "num_key_value_heads", path, default=heads),
        head_dim=_number(cfg, "head_dim", path, default=hidden // heads if heads else 0),
        vocab_size=_number(cfg, "vocab_size", path),
        rms_norm_eps=_number(cfg, "rms_norm_eps", path, float, 1e-5),
        rope_theta=_number(cfg, "rope_theta", path, float, 10000.0),
        max_position_embeddings=_number(cfg, "max_position_embeddings", path, default=4096),
        rope_scaling=cfg.get("rope_scaling"),
        original_max_position_embeddings=_number(cfg, "original_max_position_embeddings", path, default=None),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    if min(llm.hidden_size, llm.num_heads, llm.num_layers, llm.vocab_size, llm.num_kv_heads) <= 0:
        raise ConfigError(f"{path}: hidden_size, attention heads, layers and vocab_size must be positive.",
                          "use the checkpoint's original config.json (a FUSION checkpoint)")
    rope_scaling_kind(llm.rope_scaling, path)    # a rope scaling the runtime cannot compute fails here
    _check_decoder_form(cfg, path)
    return llm


# The decoder every graph, the GGUF writer and the native runtime compute: SiLU-gated MLP and
# projections without bias (Phi-3.5 and LLaMA-3.1 alike). A config that says otherwise would
# be exported and run as if it did not, so it is refused here, naming the field.
DECODER_FORM = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def _check_decoder_form(cfg: dict, path: str) -> None:
    for key, supported in DECODER_FORM.items():
        value = cfg.get(key, supported)
        if value != supported:
            raise UnsupportedArchitectureError(
                f"{path}: {key} = {value!r}; fusion-edge computes the decoder with {key} = {supported!r} "
                "(the FUSION checkpoints' form).",
                "use a released FUSION / FUSION-X checkpoint's config.json; another decoder form needs its "
                "support in the reference, the exporters and the native runtime")


def parse_fusion_config(cfg: dict, checkpoint_dir=None, path: str = "config.json") -> FusionConfig:
    llm = parse_llm(cfg, path)
    tower_name = _need(cfg, "mm_vision_tower", path)
    tower = resolve_tower(tower_name, checkpoint_dir)
    mm_hidden = cfg.get("mm_hidden_size")
    if mm_hidden is not None and _number(cfg, "mm_hidden_size", path) != tower.hidden_size:
        raise ConfigError(
            f"{path}: mm_hidden_size {mm_hidden} disagrees with tower '{tower_name}' "
            f"(hidden size {tower.hidden_size}).",
            "mm_vision_tower must name the tower the checkpoint was trained with")
    early = _number(cfg, "mm_vision_early_layers", path, default=None)
    if early is not None:
        if not 1 <= early <= tower.num_layers // 2:
            raise ConfigError(
                f"{path}: mm_vision_early_layers {early} does not fit the tower's {tower.num_layers} layers "
                f"(1 <= E and 2E <= {tower.num_layers}).",
                "remove the field (the tower type fixes the split) or give a smaller value")
        tower = replace(tower, early_override=early)
    projector_type = cfg.get("mm_projector_type", "linear")
    projector_depth(projector_type)
    n = _number(cfg, "num_of_vision_sampler_layers", path, default=10)
    start = _number(cfg, "start_of_vision_sampler_layers", path, default=0)
    stride = _number(cfg, "stride_of_vision_sampler_layers", path, default=3)
    layers = tuple(start + k * stride for k in range(n))
    if layers and layers[-1] >= llm.num_layers:
        raise ConfigError(
            f"{path}: interaction layers {layers} go beyond the LLM's {llm.num_layers} layers.",
            "check num/start/stride_of_vision_sampler_layers")
    aspect = cfg.get("image_aspect_ratio", "static_hd")
    if aspect != "static_hd":
        raise UnsupportedArchitectureError(
            f"image_aspect_ratio '{aspect}' is not supported.",
            "released FUSION checkpoints use static_hd")
    eos = cfg.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    max_len = _number(cfg, "tokenizer_model_max_length", path, default=None)
    return FusionConfig(
        llm=llm, tower=tower, mm_vision_tower=tower_name, projector_type=projector_type,
        query_lens=parse_query_lens(cfg.get("query_len", "4,16,36,64,144")),
        window_size=_number(cfg, "window_size", path, default=3), interaction_layers=layers,
        image_aspect_ratio=aspect, use_im_start_end=bool(cfg.get("mm_use_im_start_end", True)),
        tokenizer_model_max_length=int(max_len) if max_len else None,
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=eos, raw=cfg)


def load_fusion_config(folder: str | os.PathLike) -> FusionConfig:
    path = Path(folder) / "config.json"
    return parse_fusion_config(_read_json(path), folder, str(path))


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist.",
                          "point at a FUSION checkpoint folder (config.json + *.safetensors + tokenizer)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).", "restore the original file") from None
