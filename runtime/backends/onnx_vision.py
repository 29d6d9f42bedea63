"""Vision-encoder and recursive-alignment graphs on onnxruntime (used by every bundle
target whose vision part is ONNX: the onnx target and the gguf target)."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from .ort_session import component_session, providers_for


class OnnxVision:
    """VisionEngine + GraphAccess on onnxruntime sessions."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None, *,
                 providers: list | None = None, align_threads: int | None = None,
                 align_providers: list | None = None, low_memory: bool = False):
        """low_memory: weights memory-mapped, not prepacked (ort_session.make_session).
        align_threads: intra-op threads of the alignment sessions (1 when they run inside
        llama.cpp's eval callback, so they do not fight ggml's own threads). align_providers:
        the alignment graphs' own providers (default: the vision's)."""
        providers = providers or providers_for(device)
        align_providers = align_providers or providers
        self.names = ["vision"] + bundle.component_names("align_")
        self.sessions = {name: (component_session(bundle, bundle.component(name), providers, threads,
                                                  low_memory=low_memory)
                                if name == "vision" else
                                component_session(bundle, bundle.component(name), align_providers,
                                                  align_threads or threads, low_memory=low_memory))
                         for name in self.names}
        self.aligns = [self.sessions[n] for n in self.names[1:]]
        self.calls = {"vision_global": 0, "vision_main": 0, "align": 0}

    def encode(self, pixels: np.ndarray, instruct_embeds: np.ndarray, instruct_keep: np.ndarray) -> np.ndarray:
        """pixels (B,3,S,S), instruct_embeds (B,T,H), instruct_keep (B,T) bool → (B,N,H)."""
        self.calls["vision_main" if instruct_embeds.shape[1] else "vision_global"] += 1
        return self.sessions["vision"].run(None, {"pixels": pixels, "instruct_embeds": instruct_embeds,
                                                  "instruct_keep": instruct_keep})[0]

    def align(self, k: int, h_inst: np.ndarray, latents: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """h_inst (H,), latents (q,H), windows (q,w*w,H) → new latents (q,H)."""
        self.calls["align"] += 1
        return self.aligns[k].run(None, {"h_inst": h_inst.reshape(1, -1).astype(np.float32, copy=False),
                                         "latents": np.ascontiguousarray(latents, dtype=np.float32),
                                         "windows": windows})[0]

    # ---- GraphAccess: vision_global / vision_main recordings run the one vision graph -------
    def graph_names(self) -> list[str]:
        return list(self.names)

    def run_graph(self, name: str, feeds: dict) -> np.ndarray:
        return self.sessions["vision" if name.startswith("vision") else name].run(None, feeds)[0]
