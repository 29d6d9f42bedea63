"""All FUSION weights as one torch module tree whose parameter names are the canonical
names of export/weight_map.py: tower, projectors, alignment layers, LLM."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fusion_edge.runtime.config import FusionConfig

from .ref_align import AlignmentLayer
from .ref_llm import FusionLLM
from .ref_vision import MLPProjector, VisionTower


class FusionModel(nn.Module):
    """All FUSION weights as one module tree; parameter names are the canonical names."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        H, Dv, depth = cfg.llm.hidden_size, cfg.tower.hidden_size, cfg.projector_depth
        self.vision = VisionTower(cfg.tower)
        self.mm_projector = MLPProjector(3 * Dv, H, depth)
        self.aux_projector = MLPProjector(H, Dv, depth)
        self.align = nn.ModuleList(AlignmentLayer(H) for _ in cfg.interaction_layers)
        self.llm = FusionLLM(cfg)

    @classmethod
    def from_checkpoint(cls, ckpt, dtype=torch.float32) -> "FusionModel":
        """The whole model in `dtype`, read one tensor at a time (peak: the model plus one fp32
        tensor; FUSION-X-3B in bfloat16 is 11.6 GB where fp32 would not fit a 24 GiB machine)."""
        with torch.device("meta"):
            model = cls(ckpt.config)
        model.load_canonical(((e.name, ckpt.canonical(e)) for e in ckpt.entries), dtype)
        return model

    def load_canonical(self, state, dtype=torch.float32) -> None:
        """state: {canonical name: array} or (name, array) pairs, each cast to `dtype` and
        assigned as it comes; parameters may start on the meta device."""
        own = dict(self.named_parameters())
        loaded = set()
        for name, arr in (state.items() if isinstance(state, dict) else state):
            mod_name = _module_name(name)
            assert own[mod_name].shape == arr.shape, (name, own[mod_name].shape, arr.shape)
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dtype)
            self.load_state_dict({mod_name: t}, strict=False, assign=True)
            loaded.add(mod_name)
        if self.cfg.llm.tie_word_embeddings:
            self.llm.lm_head.weight = self.llm.embed.weight
            loaded.add("llm.lm_head.weight")
        missing = set(own) - loaded
        assert not missing, f"unloaded parameters: {sorted(missing)[:5]}"


def _module_name(canonical: str) -> str:
    # projector entries are "mm_projector.<n>.weight" → module list "mm_projector.layers.<n>"
    for p in ("mm_projector.", "aux_projector."):
        if canonical.startswith(p):
            return p + "layers." + canonical[len(p):]
    return canonical
