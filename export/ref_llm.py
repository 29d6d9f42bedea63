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


def rotate_half(x: torch.Tensor, half: int) -> torch.Tensor:
    """(…, 2·half) → cat(-x[…, half:], x[…, :half]); `half` a Python int, so the exported
    graph slices by constants instead of computing the split from the tensor's shape."""
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def causal_mask(S: int, T: int, device=None) -> torch.Tensor:
    """(S,T) bool, True where key position > query position; query i sits at T - S + i."""
    qpos = torch.arange(S, device=device)[:, None] + (T - S)
    return torch.arange(T, device=device)[None, :] > qpos


# ---- decoder ----------------------------------------------------------------------------
# Shapes below come from the config (Python ints) and -1, never from tensor shapes, so the
# traced ONNX graphs carry no Shape/Gather/Concat chains: on the bench preset a decoder layer
# was 80 nodes, most of them shape arithmetic, each a kernel launch per token.
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

    def forward(self, x, cos, sin, past_k, past_v, mask=None):
        """x (1,S,H); cos/sin (S,hd); past_k/v (1,kv,P,hd); mask (S,P+S) bool or None (built
        here) → x, k (1,kv,P+S,hd), v, and the new rows k_new, v_new (1,kv,S,hd)."""
        c = self.c
        qkv = self.qkv(self.attn_norm(x))
        nq, nkv, hd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.head_dim
        q = qkv[..., :nq].view(1, -1, c.num_heads, hd).transpose(1, 2)
        k_new = qkv[..., nq:nq + nkv].view(1, -1, c.num_kv_heads, hd).transpose(1, 2)
        v_new = qkv[..., nq + nkv:].view(1, -1, c.num_kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q, hd // 2) * sin
        k_new = k_new * cos + rotate_half(k_new, hd // 2) * sin
        k = torch.cat([past_k, k_new], dim=2)
        v = torch.cat([past_v, v_new], dim=2)
        if mask is None:
            mask = causal_mask(x.shape[1], k.shape[2], x.device)
        x = x + self.o(_causal_attention(q, k, v, mask, c))
        gu = self.gate_up(self.ffn_norm(x))
        gate, up = gu[..., :c.intermediate_size], gu[..., c.intermediate_size:]
        return x + self.down(F.silu(gate) * up), k, v, k_new, v_new


def _causal_attention(q, k, v, mask, c: LLMConfig) -> torch.Tensor:
    """q (1,h,S,hd), k/v (1,kv,P+S,hd), mask (S,P+S) → (1,S,h*hd)."""
    groups = c.num_heads // c.num_kv_heads
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (c.head_dim ** -0.5)
    scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
    return out.transpose(1, 2).reshape(1, -1, c.num_heads * c.head_dim)


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
        z = torch.zeros(1, c.num_kv_heads, 0, c.head_dim, device=device, dtype=self.embed.weight.dtype)
        return [(z, z) for _ in range(c.num_layers)]

    def run_layers(self, x, start: int, end: int, position0: int, cache) -> torch.Tensor:
        """Layers [start, end) on x (1,S,H) at positions position0.., updating cache in place."""
        cos, sin = (t.to(x.dtype) for t in rope_cos_sin(self.c, position0, x.shape[1]))
        for i in range(start, end):
            x, k, v, _, _ = self.layers[i](x, cos, sin, *cache[i])
            cache[i] = (k, v)
        return x

    def logits(self, x_last: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x_last))


def segments(cfg: FusionConfig) -> list[tuple[int, int]]:
    """Layer ranges [a, b) cut after each interaction layer: [0,1), [1,4), ..., [28, L)."""
    cuts = [i + 1 for i in cfg.interaction_layers]
    bounds = [0] + [c for c in cuts if c < cfg.llm.num_layers] + [cfg.llm.num_layers]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
