"""The LLM as ONNX segment graphs on onnxruntime, with a preallocated KV cache
(runtime/backends/kv_cache.py: new rows are written in place through IO binding).

Prefill runs the segments (the alignment runs between them). Decoding runs the merged
`decode` graph, one session run per token, when the bundle has one (export/decode_graph.py);
bundles without it decode through the segments. A decode graph whose attention is
GroupQueryAttention (export/decode_attention.py) takes the head-major cache, bound whole
as its past and present (HeadMajorCache); on CUDA the op has no float32 kernel in
onnxruntime (float16/bfloat16 only), so there such bundles decode through the graph's Concat
twin (`decode_concat`), or through the segments when a bundle has none."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import rope
from ..bundle import Bundle
from ..config import FusionConfig
from ..layout import COS, DECODE, DECODE_CONCAT, OP, SEQLENS, SIN, TOTAL, present_name
from ..errors import BackendError, PromptError
from .kv_cache import CudaCache, HeadMajorCache, HostCache
from .ort_session import component_session, provider_name, providers_for


CACHE_BLOCK = 256


class OnnxLLM:
    """LLMEngine + GraphAccess: embedding graph and decoder segments on onnxruntime."""
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None, *,
                 providers: list | None = None, low_memory: bool = False):
        """low_memory: weights memory-mapped, not prepacked (ort_session.make_session)."""
        providers = providers or providers_for(device)
        self.cfg: FusionConfig = bundle.config
        self.embed_sess = component_session(bundle, bundle.component("embed"), providers, threads,
                                            low_memory=low_memory)
        self.segments = [(c, component_session(bundle, c, providers, threads, low_memory=low_memory))
                         for c in map(bundle.component, bundle.component_names("segment_"))]
        # The decode graph keeps its memory arena: without it every run mallocs and frees the
        # attention intermediates of every layer ((1,P,kv,hd) each), measured 60 → 34-37 ms per
        # token at P=800 on the bench preset (2 threads), the segments' speed; segments keep
        # theirs off (RSS, ort_session.make_session).
        # the KV cache stays in device memory for the EPs of onnxruntime-gpu (CUDA and TensorRT)
        self.on_cuda = provider_name(providers[0]) in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        decode = bundle.component(DECODE) if DECODE in bundle.components else None
        self.gqa = decode is not None and decode.get("attention") == OP
        if self.gqa and self.on_cuda:     # the op has no float32 CUDA kernel: its Concat twin, or the segments
            decode = bundle.component(DECODE_CONCAT) if DECODE_CONCAT in bundle.components else None
            self.gqa = False
        self.decode_sess = (component_session(bundle, decode, providers, threads, mem_arena=True,
                                              low_memory=low_memory)
                            if decode is not None else None)
        # the op's own rotary reads (C, hd/2) tables by position instead of per-token cos/sin
        self.rotary_tables = self.gqa and decode is not None and COS in decode.get("inputs", [])
        self.tables: tuple[np.ndarray, np.ndarray] | None = None
        self.capacity = 0
        # from reserve() on: HostCache, HeadMajorCache (the GroupQueryAttention graph: bind_shared)
        # or CudaCache, by device and decode graph (head_major)
        self.cache: Any = None
        self.length = 0          # positions currently in the cache
        self.recorder = None     # callable(name, inputs) observing prefill segment inputs

    # ---- cache ----------------------------------------------------------------------------
    def reserve(self, capacity: int) -> None:
        """Make the cache hold `capacity` positions. Allocated only when it grows, in blocks
        of CACHE_BLOCK positions, so follow-up questions of similar length reuse it."""
        if capacity <= self.capacity:
            return
        capacity = -(-capacity // CACHE_BLOCK) * CACHE_BLOCK
        c = self.cfg.llm
        kind = CudaCache if self.on_cuda else HeadMajorCache if self.head_major else HostCache
        self.cache = kind(c.num_layers, capacity, c.num_kv_heads, c.head_dim)
        self.tables = rope.position_tables(c, capacity) if self.rotary_tables else None
        self.capacity = capacity

    @property
    def head_major(self) -> bool:
        """Whether the cache is (1,kv,C,hd): decoding runs the GroupQueryAttention graph."""
        return self.gqa and self.decode_sess is not None

    @property
    def k(self):
        return self.cache.k

    # ---- graphs ---------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(S,) int64 → (S,H) float32."""
        return self.embed_sess.run(None, {"ids": np.asarray(ids, dtype=np.int64).reshape(1, -1)})[0][0]

    def prefill(self, embeds: np.ndarray, aligner=None, layout=None) -> np.ndarray:
        """embeds (S,H) → last-row logits (V,). `aligner(k, hidden (S,H)) → hidden` runs the
        interaction k between segments (docs/fusion.md §6); None disables it. (`layout`, the
        PromptLayout, is part of the engine interface; this engine needs only the embeddings.)"""
        self.length = 0
        return self._forward(embeds, aligner)

    def decode(self, token_id: int) -> np.ndarray:
        """token id → logits (V,) of the next position."""
        x = self.embed(np.array([token_id]))
        if self.decode_sess is None:
            return self._forward(x, None)
        return self._decode_merged(x)[0].numpy()[0]

    def decode_greedy(self, token_id: int) -> int:
        """GreedyDecode: the decode graph's `token` output (argmax in the graph); the logits
        stay in device memory on CUDA. Bundles without the graph take the argmax here."""
        x = self.embed(np.array([token_id]))
        if self.decode_sess is None:
            return int(np.argmax(self._forward(x, None)))
        return int(self._decode_merged(x, logits_on="cuda" if self.on_cuda else "cpu")[1].numpy()[0])

    def _decode_merged(self, x: np.ndarray, logits_on: str = "cpu") -> list:
        """One run of the decode graph over all layers: x (1,H) → OrtValues [logits (1,V) on
        `logits_on`, token (1,) on the CPU]."""
        P = self.length
        self._check_room(P, 1)
        io = self.decode_sess.io_binding()  # type: ignore[union-attr]  # called only where the decode graph is open
        io.bind_cpu_input("hidden", np.ascontiguousarray(x, dtype=np.float32)[None])
        if self.tables is not None:
            io.bind_cpu_input(COS, self.tables[0])
            io.bind_cpu_input(SIN, self.tables[1])
        else:
            cos, sin = rope.cos_sin(self.cfg.llm, P, 1)
            io.bind_cpu_input("cos", cos)
            io.bind_cpu_input("sin", sin)
        io.bind_output("logits", logits_on)
        io.bind_output("token", "cpu")
        if self.head_major:
            self._bind_shared_cache(io, P)
        else:
            self._bind_cache(io, range(self.cfg.llm.num_layers), P, 1)
        self._run(self.decode_sess, io, DECODE)
        self.length = P + 1
        return io.get_outputs()

    def _forward(self, x: np.ndarray, aligner) -> np.ndarray:
        S, P = x.shape[0], self.length
        self._check_room(P, S)
        cos, sin = rope.cos_sin(self.cfg.llm, P, S)
        hidden = np.ascontiguousarray(x, dtype=np.float32)[None]
        for comp, sess in self.segments:
            out = self._run_segment(comp, sess, hidden, cos, sin, P, S)
            if comp.final:
                self.length = P + S
                return out[0]
            hidden = out
            if aligner is not None and comp.align_after is not None:
                hidden = aligner(comp.align_after, hidden[0])[None]
        raise BackendError("the bundle has no final segment.", "re-export the bundle")

    def _run_segment(self, comp, sess, hidden, cos, sin, P: int, S: int) -> np.ndarray:
        if self.recorder is not None and P == 0:
            self.recorder(comp.name, self._segment_inputs(comp, hidden, cos, sin, P))
        io = sess.io_binding()
        io.bind_cpu_input("hidden", hidden)
        io.bind_cpu_input("cos", cos)
        io.bind_cpu_input("sin", sin)
        io.bind_output(comp.outputs[0], "cpu")      # first: get_outputs() keeps binding order
        self._bind_cache(io, range(*comp.layers), P, S)
        try:
            self._run(sess, io, comp.file)
        finally:     # after a failed run rows [P, P+S) hold garbage, beyond `length`: never read
            self.cache.flush()
        return io.get_outputs()[0].numpy()

    def _check_room(self, P: int, S: int) -> None:
        if P + S > self.capacity:
            raise PromptError(f"the KV cache holds {self.capacity} positions; {P + S} are needed.",
                              "lower --max-new-tokens or ask a shorter question")

    def _bind_cache(self, io, layers, P: int, S: int) -> None:
        """past_* → cache rows [0, P), new_* → rows [P, P+S) of each layer, in place."""
        for i in layers:
            for name, buf in (("k", self.cache.k[i]), ("v", self.cache.v[i])):
                self.cache.bind(io, f"past_{name}_{i}", buf, 0, P, output=False)
                self.cache.bind(io, f"new_{name}_{i}", buf, P, S, output=True)

    def _bind_shared_cache(self, io, P: int) -> None:
        """GroupQueryAttention: each layer's whole buffer is past_* and present_*; the op
        attends over rows [0, P] and writes row P in place (seqlens_k = P, total P + 1)."""
        io.bind_cpu_input(SEQLENS, np.array([P], np.int32))
        io.bind_cpu_input(TOTAL, np.array(P + 1, np.int32))
        for i in range(self.cfg.llm.num_layers):
            for name, buf in (("k", self.cache.k[i]), ("v", self.cache.v[i])):
                self.cache.bind_shared(io, f"past_{name}_{i}", present_name(f"past_{name}_{i}"), buf)

    @staticmethod
    def _run(sess, io, what: str) -> None:
        try:
            sess.run_with_iobinding(io)
        except Exception as e:   # onnxruntime raises its own types; report as ours
            raise BackendError(f"onnxruntime failed in {what}: {e}",
                               "check that the bundle matches this fusion-edge version (fusion-edge verify)") from e

    def _segment_inputs(self, comp, hidden, cos, sin, P: int) -> dict:
        feeds = {"hidden": hidden.copy(), "cos": cos, "sin": sin}
        a, b = comp.layers
        for i in range(a, b):
            feeds[f"past_k_{i}"] = self.cache.rows(self.cache.k[i], 0, P)
            feeds[f"past_v_{i}"] = self.cache.rows(self.cache.v[i], 0, P)
        return feeds

    def close(self) -> None:
        """Nothing native to free early: the sessions go with the engine."""

    # ---- GraphAccess ------------------------------------------------------------------------
    def graph_names(self) -> list[str]:
        return [comp.name for comp, _ in self.segments]

    def run_graph(self, name: str, feeds: dict) -> np.ndarray:
        return next(sess for comp, sess in self.segments if comp.name == name).run(None, feeds)[0]
