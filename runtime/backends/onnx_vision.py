"""Vision-encoder and recursive-alignment graphs on onnxruntime (used by every bundle
target whose vision part is ONNX: the onnx target and the gguf target)."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from .ort_session import component_session


class OnnxVision:
    def __init__(self, bundle: Bundle, providers: list[str], threads: int | None = None,
                 align_threads: int | None = None):
        """align_threads: intra-op threads of the alignment sessions (1 when they run inside
        llama.cpp's eval callback, so they do not fight ggml's own threads)."""
        comp = bundle.components
        self.vision = component_session(bundle, comp["vision"], providers, threads)
        self.aligns = [component_session(bundle, comp[name], providers, align_threads or threads)
                       for name in sorted(n for n in comp if n.startswith("align_"))]
        self.calls = {"vision_global": 0, "vision_main": 0, "align": 0}

    def encode(self, pixels: np.ndarray, instruct_embeds: np.ndarray, instruct_keep: np.ndarray) -> np.ndarray:
        """pixels (B,3,S,S), instruct_embeds (B,T,H), instruct_keep (B,T) bool → (B,N,H)."""
        self.calls["vision_main" if instruct_embeds.shape[1] else "vision_global"] += 1
        return self.vision.run(None, {"pixels": pixels, "instruct_embeds": instruct_embeds,
                                      "instruct_keep": instruct_keep})[0]

    def align(self, k: int, h_inst: np.ndarray, latents: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """h_inst (H,), latents (q,H), windows (q,w*w,H) → new latents (q,H)."""
        self.calls["align"] += 1
        return self.aligns[k].run(None, {"h_inst": h_inst.reshape(1, -1).astype(np.float32, copy=False),
                                         "latents": np.ascontiguousarray(latents, dtype=np.float32),
                                         "windows": windows})[0]
