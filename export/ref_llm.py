"""Reference decoder (Phi-3 / LLaMA-3.1) with an explicit KV cache, written for export.

Fused `qkv` (rows q, k, v) and `gate_up` (rows gate, up) for both families: Phi-3 stores
them fused, LLaMA's are concatenated at load (export/weight_map.py). The model runs any
contiguous range of layers (`run_layers`), which is how the prefill interleaves the
recursive alignment and how the ONNX exporter cuts segments.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusion_edge.runtime.config import FusionConfig, LLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


# ---- rotary embeddings ------------------------------------------------------------------
def rope_inv_freq(c: LLMConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """inv_freq (head_dim/2,) float64→float32 and the cos/sin scale, for sequences up to seq_len."""
    d = c.head_dim
    base = c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    scaling = c.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in ("longrope", "su"):
        orig = c.original_max_position_embeddings or scaling.get("original_max_position_embeddings")
        factors = scaling["long_factor"] if seq_len > orig else scaling["short_factor"]
        inv = 1.0 / (torch.tensor(factors, dtype=torch.float32) * base)
        scale = c.max_position_embeddings / orig
        attn = scaling.get("attention_factor")
        if attn is None:
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        return inv, float(attn)
    inv = 1.0 / base
    if kind == "llama3":
        inv = _llama3_scale(inv, scaling)
    elif kind not in (None, "default"):
        raise NotImplementedError(f"rope scaling '{kind}'")
    return inv, 1.0


def _llama3_scale(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    orig = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > orig / lo, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(c: LLMConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (S, head_dim) for integer positions (S,)."""
    inv, scale = rope_inv_freq(c, int(positions.max()) + 1)
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


# ---- decoder ----------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, c: LLMConfig):
        super().__init__()
        self.c = c
        H, hd = c.hidden_size, c.head_dim
        self.attn_norm = RMSNorm(H, c.rms_norm_eps)
        self.qkv = nn.Linear(H, (c.num_heads + 2 * c.num_kv_heads) * hd, bias=False)
        self.o = nn.Linear(c.num_heads * hd, H, bias=False)
        self.ffn_norm = RMSNorm(H, c.rms_norm_eps)
        self.gate_up = nn.Linear(H, 2 * c.intermediate_size, bias=False)
        self.down = nn.Linear(c.intermediate_size, H, bias=False)

    def forward(self, x, cos, sin, past_k, past_v):
        """x (1,S,H); cos/sin (S,hd); past_k/v (1,kv,P,hd) → x, k (1,kv,P+S,hd), v."""
        c = self.c
        S = x.shape[1]
        qkv = self.qkv(self.attn_norm(x))
        nq, nkv, hd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.head_dim
        q = qkv[..., :nq].view(1, S, c.num_heads, hd).transpose(1, 2)
        k = qkv[..., nq:nq + nkv].view(1, S, c.num_kv_heads, hd).transpose(1, 2)
        v = qkv[..., nq + nkv:].view(1, S, c.num_kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        x = x + self.o(_causal_attention(q, k, v, c.num_heads // c.num_kv_heads))
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up), k, v


def _causal_attention(q, k, v, groups: int) -> torch.Tensor:
    """q (1,h,S,hd), k/v (1,kv,P+S,hd); query i sits at absolute position P+i. → (1,S,h*hd)."""
    S, T = q.shape[2], k.shape[2]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    qpos = torch.arange(S, device=q.device)[:, None] + (T - S)
    kpos = torch.arange(T, device=q.device)[None, :]
    scores = scores.masked_fill(kpos > qpos, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
    return out.transpose(1, 2).reshape(1, S, -1)


class FusionLLM(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        c = self.c = cfg.llm
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def empty_cache(self, device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        c = self.c
        z = torch.zeros(1, c.num_kv_heads, 0, c.head_dim, device=device)
        return [(z, z) for _ in range(c.num_layers)]

    def run_layers(self, x, start: int, end: int, position0: int, cache) -> torch.Tensor:
        """Layers [start, end) on x (1,S,H) at positions position0.., updating cache in place."""
        pos = torch.arange(position0, position0 + x.shape[1], device=x.device)
        cos, sin = rope_cos_sin(self.c, pos)
        for i in range(start, end):
            x, k, v = self.layers[i](x, cos, sin, *cache[i])
            cache[i] = (k, v)
        return x

    def logits(self, x_last: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x_last))


def segments(cfg: FusionConfig) -> list[tuple[int, int]]:
    """Layer ranges [a, b) cut after each interaction layer: [0,1), [1,4), ..., [28, L)."""
    cuts = [i + 1 for i in cfg.interaction_layers]
    bounds = [0] + [c for c in cuts if c < cfg.llm.num_layers] + [cfg.llm.num_layers]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
