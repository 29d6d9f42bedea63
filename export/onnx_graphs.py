"""The exported graph families as torch modules over the reference weights (docs/architecture.md).

* VisionGraph: pixels (B,3,S,S), instruct_embeds (B,T,H), instruct_keep (B,T) bool →
  image tokens (B,N,H). T = 0 is the plain mode of the 4 global tiles (no mask, no
  uniform rows), T > 0 the text-guided main tile: one graph, both modes.
* EmbedGraph: ids (1,S) int64 → (1,S,H). The only copy of the embedding table.
* AlignGraph k: h_inst (1,H), latents (q,H), windows (q,w*w,H) → new latents (q,H).
* SegmentGraph [a,b): hidden (1,S,H), cos/sin (S,hd), past_k_i/past_v_i (1,P,kv,hd) per layer
  → hidden (1,S,H) — or logits (1,V) of the last row for the final segment — and
  new_k_i/new_v_i (1,S,kv,hd): only the S new cache rows, which the runtime writes into
  its preallocated cache (IO binding straight into the buffer).
"""
from __future__ import annotations

from torch import nn

from .ref_llm import causal_mask, segments


class VisionGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixels, instruct_embeds, instruct_keep):
        states = self.m.aux_projector(instruct_embeds)
        return self.m.mm_projector(self.m.vision(pixels, states, instruct_keep))


class EmbedGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.llm.embed

    def forward(self, ids):
        return self.embed(ids)


class AlignGraph(nn.Module):
    def __init__(self, model, k: int):
        super().__init__()
        self.layer = model.align[k]

    def forward(self, h_inst, latents, windows):
        return self.layer.forward_windows(h_inst, latents, windows)


class SegmentGraph(nn.Module):
    def __init__(self, model, start: int, end: int, final: bool):
        super().__init__()
        self.llm = model.llm
        self.start, self.end, self.final = start, end, final

    def forward(self, hidden, cos, sin, *pasts):
        x, new = hidden, []
        mask = causal_mask(hidden.shape[1], pasts[0].shape[1] + hidden.shape[1])   # once per graph
        for n, i in enumerate(range(self.start, self.end)):
            pk, pv = pasts[2 * n], pasts[2 * n + 1]
            x, _, _, k, v = self.llm.layers[i](x, cos, sin, pk.transpose(1, 2), pv.transpose(1, 2), mask)
            new += [k.transpose(1, 2), v.transpose(1, 2)]
        if self.final:
            x = self.llm.logits(x[:, -1])
        return (x, *new)


def segment_plan(cfg) -> list[dict]:
    """One entry per LLM segment: layers, whether the final norm/lm_head are inside, and
    the alignment layer (if any) that runs after it during the prefill."""
    plan = []
    segs = segments(cfg)
    ends = {layer + 1: k for k, layer in enumerate(cfg.interaction_layers)}
    for n, (a, b) in enumerate(segs):
        plan.append({"name": f"segment_{n:02d}", "layers": [a, b], "final": n == len(segs) - 1,
                     "align_after": ends.get(b)})
    return plan
