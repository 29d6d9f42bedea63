"""Reference SigLIP tower with FUSION's text-guided mode, connector and projectors (§4, §5).

Shapes: pixels (B,3,S,S) → patch embeddings (B,N,Dv) [+ instruct states (B,T,Dv)] →
all hidden states hs[0..L] → connector (B,N,3Dv) → mm_projector (B,N,H).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusion_edge.runtime.config import TowerConfig


class EncoderLayer(nn.Module):
    def __init__(self, t: TowerConfig):
        super().__init__()
        D = t.hidden_size
        self.heads = t.num_heads
        self.ln1 = nn.LayerNorm(D, eps=t.layer_norm_eps)
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.ln2 = nn.LayerNorm(D, eps=t.layer_norm_eps)
        self.fc1 = nn.Linear(D, t.intermediate_size)
        self.fc2 = nn.Linear(t.intermediate_size, D)

    def forward(self, x, key_mask, uniform_from: int | None):
        """x (B,K,D); key_mask (B,1,1,K) additive or None; rows >= uniform_from get uniform attention."""
        x = x + self._attention(self.ln1(x), key_mask, uniform_from)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    def _attention(self, x, key_mask, uniform_from):
        B, K, D = x.shape
        h, hd = self.heads, D // self.heads
        q, k, v = self.qkv(x).view(B, K, 3, h, hd).permute(2, 0, 3, 1, 4)   # each (B,h,K,hd)
        scores = (q @ k.transpose(-1, -2)) * hd ** -0.5                       # (B,h,K,K)
        if key_mask is not None:
            scores = scores + key_mask
        if uniform_from is not None:
            # The reference overwrites every instruct-query row with the dtype's most
            # negative value in the early layers: those rows become uniform over ALL keys.
            rows = (torch.arange(K, device=x.device) >= uniform_from)[:, None]
            scores = scores.masked_fill(rows, torch.finfo(scores.dtype).min)
        att = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out((att @ v).transpose(1, 2).reshape(B, K, D))


class VisionTower(nn.Module):
    def __init__(self, t: TowerConfig):
        super().__init__()
        self.t = t
        self.patch = nn.Conv2d(3, t.hidden_size, t.patch_size, stride=t.patch_size)
        self.pos = nn.Parameter(torch.zeros(t.num_patches, t.hidden_size))
        self.layers = nn.ModuleList(EncoderLayer(t) for _ in range(t.num_layers))

    def embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch(pixels).flatten(2).transpose(1, 2) + self.pos        # (B,N,Dv)

    def forward(self, pixels, instruct_states=None, instruct_keep=None) -> torch.Tensor:
        """pixels (B,3,S,S); instruct_states (B,T,Dv); instruct_keep (B,T) bool (id != 0).

        Returns the connector features of the N patch rows: (B, N, 3*Dv).
        """
        x = self.embeddings(pixels)
        N = x.shape[1]
        key_mask = None
        if instruct_states is not None:
            x = torch.cat([x, instruct_states], dim=1)
            keep = torch.cat([torch.ones(x.shape[0], N, dtype=torch.bool, device=x.device), instruct_keep], 1)
            key_mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            key_mask = key_mask.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        E = self.t.early_layers
        early_sum = x[:, :N]                     # hs[0]
        late_sum = torch.zeros_like(early_sum)
        for j, layer in enumerate(self.layers):
            uniform_from = N if (instruct_states is not None and j < E) else None
            x = layer(x, key_mask, uniform_from)
            # x is now hs[j+1]
            if j + 1 < E:
                early_sum = early_sum + x[:, :N]
            elif j + 1 < 2 * E:
                late_sum = late_sum + x[:, :N]
        return torch.cat([x[:, :N], early_sum / E, late_sum / E], dim=-1)


class MLPProjector(nn.Module):
    """`linear` (depth 1) or `mlpNx_gelu`: Linear, (GELU, Linear) * (N-1)."""

    def __init__(self, d_in: int, d_out: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in if i == 0 else d_out, d_out) for i in range(depth))

    def forward(self, x):
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(F.gelu(x))
        return x


def global_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(4, N, H) projected global tiles → (2P, 2P, H) grid, tile (r,c) at rows r*P.., cols c*P.."""
    _, N, H = tokens.shape
    P = math.isqrt(N)
    return tokens.reshape(2, 2, P, P, H).permute(0, 2, 1, 3, 4).reshape(2 * P, 2 * P, H)


def pool_global(grid: torch.Tensor, q: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """adaptive max pool of the (2P,2P,H) grid → latent init (q,H) and global ctx ((s*w)^2,H)."""
    s = math.isqrt(q)
    chw = grid.permute(2, 0, 1)[None]
    lat = F.adaptive_max_pool2d(chw, (s, s))[0].permute(1, 2, 0).reshape(q, -1)
    ctx = F.adaptive_max_pool2d(chw, (s * window, s * window))[0].permute(1, 2, 0)
    return lat, ctx.reshape((s * window) ** 2, -1)


def fusion_l_resize(tokens: torch.Tensor, side: int = 12) -> torch.Tensor:
    """FUSION-L: (N,H) image tokens on a P×P grid → bilinear (align_corners=False) side×side."""
    N, H = tokens.shape
    P = math.isqrt(N)
    x = tokens.reshape(1, P, P, H).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(side * side, H)
