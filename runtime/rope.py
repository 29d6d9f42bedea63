"""Rotary position tables (numpy, float32): the one implementation, used by the PyTorch
reference and fed to every exported LLM segment as `cos` / `sin` inputs.

Phi-3 longrope: short factors while the sequence fits `original_max_position_embeddings`,
long factors beyond, cos/sin scaled by sqrt(1 + ln(scale)/ln(orig)). LLaMA-3.1: the
llama3 frequency smoothing. Others: plain RoPE.
"""
from __future__ import annotations

import math

import numpy as np

from .config import LLMConfig
from .rope_scaling import ROPE_KINDS as ROPE_KINDS  # re-exported: the kinds, for callers of rope
from .rope_scaling import rope_scaling_kind


def rope_kind(c: LLMConfig, where: str = "config.json") -> str:
    """default | longrope | llama3, from the config's rope_scaling; ConfigError otherwise."""
    return rope_scaling_kind(c.rope_scaling, where)


def inv_freq(c: LLMConfig, seq_len: int) -> tuple[np.ndarray, float]:
    """(head_dim/2,) float32 inverse frequencies and the cos/sin scale for a sequence of seq_len."""
    d = c.head_dim
    base = np.float32(c.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))
    s = c.rope_scaling or {}
    kind = rope_kind(c)
    if kind == "longrope":
        orig = c.original_max_position_embeddings or s["original_max_position_embeddings"]
        factors = np.asarray(s["long_factor"] if seq_len > orig else s["short_factor"], dtype=np.float32)
        scale = c.max_position_embeddings / orig
        attn = s.get("attention_factor")
        if attn is None:
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        return (np.float32(1.0) / (factors * base)).astype(np.float32), float(attn)
    inv = (np.float32(1.0) / base).astype(np.float32)
    if kind == "llama3":
        return _llama3(inv, s), 1.0
    return inv, 1.0


def _llama3(inv: np.ndarray, s: dict) -> np.ndarray:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    orig = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > orig / lo, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def cos_sin(c: LLMConfig, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (length, head_dim) float32 for positions start .. start+length-1."""
    inv, scale = inv_freq(c, start + length)
    pos = np.arange(start, start + length, dtype=np.float32)
    freqs = pos[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb) * np.float32(scale)).astype(np.float32), (np.sin(emb) * np.float32(scale)).astype(np.float32)


def position_tables(c: LLMConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (rows, head_dim/2) float32: row p is the first half of cos_sin(c, p, 1), the
    table GroupQueryAttention's own rotary reads at position p (export/decode_qkv.py). Row p
    uses the frequencies of a sequence of p + 1, as decoding position p does: for longrope
    the rows before `original_max_position_embeddings` take the short factors, the rest
    the long ones (two blocks; one for the other kinds)."""
    half = c.head_dim // 2
    cut = _longrope_cut(c, rows)
    blocks = [(0, cut), (cut, rows - cut)] if 0 < cut < rows else [(0, rows)]
    cos, sin = zip(*(cos_sin(c, start, n) for start, n in blocks))
    return np.ascontiguousarray(np.concatenate(cos)[:, :half]), np.ascontiguousarray(np.concatenate(sin)[:, :half])


def _longrope_cut(c: LLMConfig, rows: int) -> int:
    """The first position whose table uses the long factors (rows if none)."""
    if rope_kind(c) != "longrope":
        return rows
    s = c.rope_scaling or {}
    return min(rows, int(c.original_max_position_embeddings or s["original_max_position_embeddings"]))
