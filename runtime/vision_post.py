"""Question-independent vision post-processing in numpy (docs/fusion.md §5, §8).

Global tiles' tokens → (2P,2P,H) grid → adaptive max pool to the latent init (q,H) and
the global context ((s*w)^2,H) → per-latent windows (q, w*w, H) that the alignment graphs
take. Also FUSION-L's bilinear 12×12 resize of the image tokens. Checked against
torch's adaptive_max_pool2d / interpolate in the tests.
"""
from __future__ import annotations

import math

import numpy as np


def global_grid(tokens: np.ndarray) -> np.ndarray:
    """(4, N, H) → (2P, 2P, H): tile (r, c) at rows r*P.., columns c*P.."""
    _, N, H = tokens.shape
    P = math.isqrt(N)
    return tokens.reshape(2, 2, P, P, H).transpose(0, 2, 1, 3, 4).reshape(2 * P, 2 * P, H)


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    # PyTorch's adaptive pooling bins: [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))
    return [((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out)]


def adaptive_max_pool(grid: np.ndarray, side: int) -> np.ndarray:
    """(Hg, Wg, C) → (side, side, C)."""
    rows = _bins(grid.shape[0], side)
    cols = _bins(grid.shape[1], side)
    out = np.empty((side, side, grid.shape[2]), dtype=grid.dtype)
    for i, (r0, r1) in enumerate(rows):
        band = grid[r0:r1].max(axis=0)
        for j, (c0, c1) in enumerate(cols):
            out[i, j] = band[c0:c1].max(axis=0)
    return out


def pool_global(grid: np.ndarray, q: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Latent init (q, H) and global context ((s*w)^2, H), s = sqrt(q)."""
    s = math.isqrt(q)
    assert s * s == q, q
    lat = adaptive_max_pool(grid, s).reshape(q, -1)
    ctx = adaptive_max_pool(grid, s * window).reshape((s * window) ** 2, -1)
    return np.ascontiguousarray(lat), np.ascontiguousarray(ctx)


def context_windows(ctx: np.ndarray, q: int) -> np.ndarray:
    """((s*w)^2, H) → (q, w*w, H): the w×w window j (row-major) belongs to latent j."""
    G, H = ctx.shape
    s, gs = math.isqrt(q), math.isqrt(G)
    w = gs // s
    return np.ascontiguousarray(ctx.reshape(s, w, s, w, H).transpose(0, 2, 1, 3, 4).reshape(q, w * w, H))


def fusion_l_resize(tokens: np.ndarray, side: int = 12) -> np.ndarray:
    """(N, H) on a P×P grid → bilinear (align_corners=False) → (side*side, H)."""
    N, H = tokens.shape
    P = math.isqrt(N)
    grid = tokens.reshape(P, P, H).astype(np.float32)
    i0, i1, lam = _linear_taps(P, side)
    rows = grid[i0] * (1 - lam)[:, None, None] + grid[i1] * lam[:, None, None]          # (side,P,H)
    out = rows[:, i0] * (1 - lam)[None, :, None] + rows[:, i1] * lam[None, :, None]      # (side,side,H)
    return np.ascontiguousarray(out.reshape(side * side, H).astype(np.float32))


def _linear_taps(n_in: int, n_out: int):
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)
