"""The engine contract: what the Pipeline, verification and calibration may call.

A bundle runs on two engines, chosen by name from the backend table in `__init__.py`:
* `VisionEngine`: the text-guided vision encoder and the alignment layers.
* `LLMEngine`: the decoder with its KV cache; the prefill runs the alignment through the
  `Aligner` it is given (runtime/pipeline.py) wherever its graph allows.
* `GreedyDecode` (optional, LLM engine): a greedy decode step that returns only the token,
  so the logits can stay where they were computed (the decode graph's in-graph argmax).
* `OwnPlacement` (optional, LLM engine): an engine that decides its offload itself
  (llama.cpp) says where it ended up and whether it computes fp32 in TF32 regardless.
* `GraphAccess` (optional, either engine): run one named graph of the bundle on recorded
  inputs, for per-graph verification and the quantization gate.
Shapes: H hidden size, S prompt rows, V vocabulary, q latents, w window.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

Recorder = Callable[[str, dict], None]      # (graph name, its inputs) observer


@runtime_checkable
class VisionEngine(Protocol):
    calls: dict[str, int]               # encode / align calls by graph, for statistics

    def encode(self, pixels: np.ndarray, instruct_embeds: np.ndarray, instruct_keep: np.ndarray) -> np.ndarray:
        """pixels (B,3,S,S), instruct_embeds (B,T,H), instruct_keep (B,T) bool → tokens (B,N,H)."""
        ...

    def align(self, k: int, h_inst: np.ndarray, latents: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Interaction layer k: h_inst (H,), latents (q,H), windows (q,w*w,H) → new latents (q,H)."""
        ...


@runtime_checkable
class LLMEngine(Protocol):
    name: str
    recorder: Recorder | None           # observes the prefill's per-graph inputs, where it has graphs

    def reserve(self, capacity: int) -> None:
        """Make the KV cache hold `capacity` positions (prompt + new tokens)."""
        ...

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(S,) int64 → (S,H) float32."""
        ...

    def prefill(self, embeds: np.ndarray, aligner, layout) -> np.ndarray:
        """embeds (S,H) of the PromptLayout `layout` → last-row logits (V,); `aligner`
        (None: interactions off) rewrites the latent rows after each interaction layer."""
        ...

    def decode(self, token_id: int) -> np.ndarray:
        """One token after the cached positions → logits (V,)."""
        ...

    def close(self) -> None:
        """Free native resources now (also done on garbage collection)."""
        ...


@runtime_checkable
class GreedyDecode(Protocol):
    def decode_greedy(self, token_id: int) -> int:
        """One token after the cached positions → argmax of the next position's logits
        (the same token as argmax(decode(token_id)), the logits not copied out)."""
        ...


@runtime_checkable
class OwnPlacement(Protocol):
    device: str                 # where it runs after its own offload decision: cpu | cuda
    forced_tf32: str | None     # why its fp32 matrix products run in TF32 whatever --tf32 says, else None


@runtime_checkable
class GraphAccess(Protocol):
    def graph_names(self) -> list[str]:
        """Component names of the graphs this engine can run one by one."""
        ...

    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's first output for `feeds` (its input names → arrays)."""
        ...
