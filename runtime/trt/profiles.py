"""Optimization profiles: for every graph, min/opt/max of each dynamic input dimension.

TensorRT builds an engine for a range of shapes; a shape outside it fails at run time. The
ranges cover every shape the runtime feeds (runtime/pipeline.py, backends/onnx_*.py):
* vision  pixels (B,3,S,S), instruct_embeds (B,T,H), instruct_keep (B,T): B = 4 global tiles
          with T = 0, or B = 1 main tile with T = the question's token count (≤ the context);
* embed   ids (1,S): S = 1 (decode) … the longest prompt;
* align_* h_inst (1,H), latents (q,H), windows (q,w²,H): q = every trained query_len;
* segment hidden (1,S,H), cos/sin (S,hd), past_k/v (1,P,kv,hd): prefill S ≤ max_context
          with P = 0, decode S = 1 with P < max_context;
* decode  the same inputs for every layer, S = 1 (one run per token, export/decode_graph.py).
max_context: the checkpoint's tokenizer_model_max_length (prompt + generated tokens).
A profile is {input: {"min": [...], "opt": [...], "max": [...]}} over the static inputs too,
so the ORT option strings name every input.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..layout import DECODE

DEFAULT_CONTEXT = 4096        # when the checkpoint does not state tokenizer_model_max_length
OPT_PROMPT = 1024             # the typical prefill length (729 image rows + latents + question)
OPT_QUESTION = 16             # typical question tokens


def max_context(cfg) -> int:
    return int(cfg.tokenizer_model_max_length or DEFAULT_CONTEXT)


def _dims(lo, opt, hi) -> dict:
    return {"min": list(lo), "opt": list(opt), "max": list(hi)}


def bundle_profiles(cfg, components: Mapping, image_tokens: int) -> dict[str, dict]:
    """{graph name: profile} for every component of a bundle (`cfg`: its FusionConfig)."""
    ctx = max_context(cfg)
    out = {}
    for name in components:
        if name == "vision":
            out[name] = _vision(cfg, ctx)
        elif name == "embed":
            out[name] = {"ids": _dims((1, 1), (1, min(OPT_PROMPT, ctx)), (1, ctx))}
        elif name.startswith("align_"):
            out[name] = _align(cfg)
        elif name.startswith("segment_"):
            out[name] = _segment(cfg, components[name], ctx, ctx)
        elif name == DECODE:                 # every layer, one row per run
            out[name] = _segment(cfg, components[name], ctx, 1)
    return out


def _vision(cfg, ctx: int) -> dict:
    S, H = cfg.tower.image_size, cfg.llm.hidden_size
    return {"pixels": _dims((1, 3, S, S), (1, 3, S, S), (4, 3, S, S)),
            "instruct_embeds": _dims((1, 0, H), (1, OPT_QUESTION, H), (4, ctx, H)),
            "instruct_keep": _dims((1, 0), (1, OPT_QUESTION), (4, ctx))}


def _align(cfg) -> dict:
    H, W = cfg.llm.hidden_size, cfg.window_size ** 2
    qs = sorted(cfg.query_lens)
    q_opt = cfg.default_query_len
    return {"h_inst": _dims((1, H), (1, H), (1, H)),
            "latents": _dims((qs[0], H), (q_opt, H), (qs[-1], H)),
            "windows": _dims((qs[0], W, H), (q_opt, W, H), (qs[-1], W, H))}


def _segment(cfg, comp: Mapping, ctx: int, rows: int) -> dict:
    """A segment (rows = ctx: prefill and decode) or the decode graph (rows = 1)."""
    c = cfg.llm
    H, hd, kv = c.hidden_size, c.head_dim, c.num_kv_heads
    opt = min(OPT_PROMPT, ctx)
    prof = {"hidden": _dims((1, 1, H), (1, 1, H), (1, rows, H)),
            "cos": _dims((1, hd), (1, hd), (rows, hd)), "sin": _dims((1, hd), (1, hd), (rows, hd))}
    a, b = comp["layers"]
    for i in range(a, b):                  # opt: decode (S=1) after a typical prompt
        for kind in ("k", "v"):
            prof[f"past_{kind}_{i}"] = _dims((1, 0, kv, hd), (1, opt, kv, hd), (1, ctx - 1, kv, hd))
    return prof


def covers(profile: Mapping, shapes: Mapping[str, tuple]) -> list[str]:
    """Why `shapes` ({input: shape}) fall outside `profile` (empty: inside)."""
    bad = []
    for name, shape in shapes.items():
        if name not in profile:
            bad.append(f"{name}: no profile entry")
            continue
        lo, hi = profile[name]["min"], profile[name]["max"]
        if len(shape) != len(lo) or any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
            bad.append(f"{name}: shape {list(shape)} outside [{lo}, {hi}]")
    return bad


def ort_shape_strings(profile: Mapping) -> dict[str, str]:
    """The TensorRT EP's trt_profile_{min,opt,max}_shapes values: "name:1x3x384x384,name2:...".
    (The names of this project's graphs hold no ':' or ',', which the format cannot escape.)"""
    return {f"trt_profile_{k}_shapes": ",".join(f"{name}:{'x'.join(map(str, dims[k]))}"
                                                for name, dims in profile.items())
            for k in ("min", "opt", "max")}
