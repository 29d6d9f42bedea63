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

    def load_canonical(self, state: dict[str, np.ndarray]) -> None:
        own = dict(self.named_parameters())
        tensors = {}
        for name, arr in state.items():
            mod_name = _module_name(name)
            assert own[mod_name].shape == arr.shape, (name, own[mod_name].shape, arr.shape)
            tensors[mod_name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if self.cfg.llm.tie_word_embeddings:
            tensors["llm.lm_head.weight"] = tensors["llm.embed.weight"]
        missing = set(own) - set(tensors)
        assert not missing, f"unloaded parameters: {sorted(missing)[:5]}"
        self.load_state_dict(tensors, strict=True)


def _module_name(canonical: str) -> str:
    # projector entries are "mm_projector.<n>.weight" → module list "mm_projector.layers.<n>"
    for p in ("mm_projector.", "aux_projector."):
        if canonical.startswith(p):
            return p + "layers." + canonical[len(p):]
    return canonical
