"""Reference recursive-alignment (interaction) layer, docs/fusion.md §6.

One layer: (h_inst (H,), latents (q,H), global_ctx ((s*w)^2, H)) → new latents (q,H).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CROSS_ATTN_HEADS = 16   # fixed by the reference (VisionCrossAttentionLayer default)


def window_context(global_ctx: torch.Tensor, q: int) -> torch.Tensor:
    """((s*w)^2, H) grid → (q, w*w, H): window j (row-major) of size w×w belongs to latent j."""
    G, H = global_ctx.shape
    s, gs = math.isqrt(q), math.isqrt(G)
    w = gs // s
    assert s * s == q and gs * gs == G and w * s == gs, (q, G)
    x = global_ctx.reshape(s, w, s, w, H).permute(0, 2, 1, 3, 4)
    return x.reshape(q, w * w, H)


class AlignmentLayer(nn.Module):
    q: nn.Linear                # q, k, v and their norms are set in a loop (setattr) below
    k: nn.Linear
    v: nn.Linear
    q_norm: nn.LayerNorm
    k_norm: nn.LayerNorm
    v_norm: nn.LayerNorm

    def __init__(self, hidden: int, heads: int = CROSS_ATTN_HEADS):
        super().__init__()
        self.heads = heads
        self.proj_in = nn.Linear(2 * hidden, hidden, bias=False)
        self.proj_context = nn.Linear(hidden, hidden, bias=False)
        for n in "qkv":
            setattr(self, f"{n}_norm", nn.LayerNorm(hidden))
            setattr(self, n, nn.Linear(hidden, hidden, bias=False))
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.mlp1 = nn.Linear(hidden, hidden, bias=False)
        self.mlp2 = nn.Linear(hidden, hidden, bias=False)

    def forward(self, h_inst: torch.Tensor, latents: torch.Tensor, global_ctx: torch.Tensor) -> torch.Tensor:
        return self.forward_windows(h_inst, latents, window_context(global_ctx, latents.shape[0]))

    def forward_windows(self, h_inst: torch.Tensor, latents: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Same, with the global context already cut into windows (q, w*w, H) (the exported form)."""
        q_len, H = latents.shape
        x = self.proj_in(torch.cat([h_inst.reshape(1, H).expand(q_len, H), latents], dim=-1))  # (q,H)
        ctx = self.proj_context(windows)                                                       # (q,w*w,H)
        a = self._cross_attention(x, ctx)
        y = self.norm(a + x)
        return self.mlp2(F.gelu(self.mlp1(y))) + latents

    def _cross_attention(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """One query token per latent: x (q,H) attends its window ctx (q,W,H)."""
        q_len, W, H = ctx.shape
        h, hd = self.heads, H // self.heads
        qh = self.q(self.q_norm(x)).view(q_len, 1, h, hd).transpose(1, 2)        # (q,h,1,hd)
        kh = self.k(self.k_norm(ctx)).view(q_len, W, h, hd).transpose(1, 2)      # (q,h,W,hd)
        vh = self.v(self.v_norm(ctx)).view(q_len, W, h, hd).transpose(1, 2)
        att = torch.softmax((qh @ kh.transpose(-1, -2)) * hd ** -0.5, dim=-1)    # (q,h,1,W)
        return self.o((att @ vh).transpose(1, 2).reshape(q_len, H))
