"""Checkpoint key → reference-model parameter mapping (decoder key layout from runtime/arch.py).

Each `WeightEntry` says which checkpoint tensors (concatenated on dim 0) make one
canonical parameter of the reference model, and the shapes the config implies. The tiny
checkpoint maker writes through the same tables, so reading and writing cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusion_edge.runtime.config import FusionConfig

TOWER = "model.vision_tower.vision_tower.vision_model."


@dataclass(frozen=True)
class WeightEntry:
    name: str                          # canonical parameter name in the reference model
    sources: tuple[str, ...]           # checkpoint keys, concatenated along dim 0
    shapes: tuple[tuple[int, ...], ...]  # expected shape of each source

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.shapes[0]
        return (sum(s[0] for s in self.shapes),) + tuple(first[1:])


def _e(name, *pairs) -> WeightEntry:
    return WeightEntry(name, tuple(k for k, _ in pairs), tuple(tuple(s) for _, s in pairs))


# ---- LLM decoder layers: the checkpoint keys come from the architecture registry ----------
def _rows(keys: tuple[str, ...], parts: tuple[int, ...]) -> tuple[int, ...]:
    """Row counts of each stored tensor: one fused tensor holds all parts, else one per part."""
    assert len(keys) in (1, len(parts)), (keys, parts)
    return (sum(parts),) if len(keys) == 1 else parts


def _decoder_layer(i: int, c) -> list[WeightEntry]:
    arch, p = c.arch, f"model.layers.{i}."
    H, hd, nq, nkv, F = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    qkv = zip(arch.qkv, _rows(arch.qkv, (nq * hd, nkv * hd, nkv * hd)))
    gate_up = zip(arch.gate_up, _rows(arch.gate_up, (F, F)))
    return [
        _e(f"llm.layers.{i}.attn_norm.weight", (p + "input_layernorm.weight", (H,))),
        _e(f"llm.layers.{i}.qkv.weight", *[(p + k, (n, H)) for k, n in qkv]),
        _e(f"llm.layers.{i}.o.weight", (p + "self_attn.o_proj.weight", (H, nq * hd))),
        _e(f"llm.layers.{i}.ffn_norm.weight", (p + "post_attention_layernorm.weight", (H,))),
        _e(f"llm.layers.{i}.gate_up.weight", *[(p + k, (n, H)) for k, n in gate_up]),
        _e(f"llm.layers.{i}.down.weight", (p + "mlp.down_proj.weight", (H, F))),
    ]


def llm_entries(cfg: FusionConfig) -> list[WeightEntry]:
    c = cfg.llm
    out = [_e("llm.embed.weight", ("model.embed_tokens.weight", (c.vocab_size, c.hidden_size)))]
    for i in range(c.num_layers):
        out += _decoder_layer(i, c)
    out.append(_e("llm.norm.weight", ("model.norm.weight", (c.hidden_size,))))
    if not c.tie_word_embeddings:
        out.append(_e("llm.lm_head.weight", ("lm_head.weight", (c.vocab_size, c.hidden_size))))
    return out


def tower_entries(cfg: FusionConfig) -> list[WeightEntry]:
    t = cfg.tower
    D, I = t.hidden_size, t.intermediate_size
    out = [
        _e("vision.patch.weight", (TOWER + "embeddings.patch_embedding.weight", (D, 3, t.patch_size, t.patch_size))),
        _e("vision.patch.bias", (TOWER + "embeddings.patch_embedding.bias", (D,))),
        _e("vision.pos", (TOWER + "embeddings.position_embedding.weight", (t.num_patches, D))),
    ]
    for j in range(t.num_layers):
        p = f"{TOWER}encoder.layers.{j}."
        q = f"vision.layers.{j}."
        out += [
            _e(q + "ln1.weight", (p + "layer_norm1.weight", (D,))),
            _e(q + "ln1.bias", (p + "layer_norm1.bias", (D,))),
            _e(q + "qkv.weight", *[(p + f"self_attn.{n}_proj.weight", (D, D)) for n in "qkv"]),
            _e(q + "qkv.bias", *[(p + f"self_attn.{n}_proj.bias", (D,)) for n in "qkv"]),
            _e(q + "out.weight", (p + "self_attn.out_proj.weight", (D, D))),
            _e(q + "out.bias", (p + "self_attn.out_proj.bias", (D,))),
            _e(q + "ln2.weight", (p + "layer_norm2.weight", (D,))),
            _e(q + "ln2.bias", (p + "layer_norm2.bias", (D,))),
            _e(q + "fc1.weight", (p + "mlp.fc1.weight", (I, D))),
            _e(q + "fc1.bias", (p + "mlp.fc1.bias", (I,))),
            _e(q + "fc2.weight", (p + "mlp.fc2.weight", (D, I))),
            _e(q + "fc2.bias", (p + "mlp.fc2.bias", (D,))),
        ]
    return out


def _mlp_entries(prefix: str, name: str, depth: int, d_in: int, d_out: int) -> list[WeightEntry]:
    """`mlpNx_gelu`: nn.Sequential(Linear, GELU, Linear, ...) → indices 0, 2, 4, ..."""
    out = []
    for n in range(depth):
        src_in = d_in if n == 0 else d_out
        out += [_e(f"{name}.{n}.weight", (f"{prefix}.{2 * n}.weight", (d_out, src_in))),
                _e(f"{name}.{n}.bias", (f"{prefix}.{2 * n}.bias", (d_out,)))]
    return out


def projector_entries(cfg: FusionConfig) -> list[WeightEntry]:
    H, Dv, depth = cfg.llm.hidden_size, cfg.tower.hidden_size, cfg.projector_depth
    if cfg.projector_type == "linear":
        return [
            _e("mm_projector.0.weight", ("model.mm_projector.weight", (H, 3 * Dv))),
            _e("mm_projector.0.bias", ("model.mm_projector.bias", (H,))),
            _e("aux_projector.0.weight", ("model.aux_projector.weight", (Dv, H))),
            _e("aux_projector.0.bias", ("model.aux_projector.bias", (Dv,))),
        ]
    return (_mlp_entries("model.mm_projector", "mm_projector", depth, 3 * Dv, H)
            + _mlp_entries("model.aux_projector", "aux_projector", depth, H, Dv))


def sampler_entries(cfg: FusionConfig) -> list[WeightEntry]:
    H = cfg.llm.hidden_size
    out = []
    for k in range(len(cfg.interaction_layers)):
        p = f"model.vision_sampler_layers.{k}.layers.0."
        q = f"align.{k}."
        out += [
            _e(q + "proj_in.weight", (p + "proj_in.weight", (H, 2 * H))),
            _e(q + "proj_context.weight", (p + "proj_context.weight", (H, H))),
            _e(q + "norm.weight", (p + "norm.weight", (H,))),
            _e(q + "norm.bias", (p + "norm.bias", (H,))),
            _e(q + "mlp1.weight", (p + "proj_out.linear_1.weight", (H, H))),
            _e(q + "mlp2.weight", (p + "proj_out.linear_2.weight", (H, H))),
            _e(q + "o.weight", (p + "cross_attn.o_proj.weight", (H, H))),
        ]
        for n in "qkv":
            out += [
                _e(q + f"{n}_norm.weight", (p + f"cross_attn.{n}_proj.0.weight", (H,))),
                _e(q + f"{n}_norm.bias", (p + f"cross_attn.{n}_proj.0.bias", (H,))),
                _e(q + f"{n}.weight", (p + f"cross_attn.{n}_proj.1.weight", (H, H))),
            ]
    return out


def all_entries(cfg: FusionConfig) -> list[WeightEntry]:
    return tower_entries(cfg) + projector_entries(cfg) + sampler_entries(cfg) + llm_entries(cfg)

