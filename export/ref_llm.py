"""Reference decoder (Phi-3 / LLaMA-3.1) with an explicit KV cache, written for export.

Fused `qkv` (rows q, k, v) and `gate_up` (rows gate, up) for both families: Phi-3 stores
them fused, LLaMA's are concatenated at load (export/weight_map.py). The model runs any
contiguous range of layers (`run_layers`), which is how the prefill interleaves the
recursive alignment and how the ONNX exporter cuts segments.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion_edge.runtime import rope
from fusion_edge.runtime.config import FusionConfig, LLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


# ---- rotary embeddings: tables from runtime/rope.py (one implementation) -------------------
def rope_cos_sin(c: LLMConfig, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = rope.cos_sin(c, start, length)
    return torch.from_numpy(cos), torch.from_numpy(sin)


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
        cos, sin = rope_cos_sin(self.c, position0, x.shape[1])
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
