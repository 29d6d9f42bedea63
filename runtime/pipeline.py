"""The runtime pipeline: `Pipeline.open(bundle)`, `look(image)`, `ask(scene, question)`.

The prefill chain (docs/fusion.md §3–§6), one place for every backend:
  question → prompt layout → instruct embeddings → text-guided vision (main tile)
  → prompt embeddings with image rows and latent rows → LLM prefill, where after each
  interaction layer the alignment graph rewrites the latent rows from the cached global
  context → decode (plain LLM) → streamed text.
`look` does the question-independent part once per frame (preprocess + 4 global tiles);
per query_len it caches the pooled latent init and context windows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import vision_post
from .backends.engines import GraphAccess, GreedyDecode, LLMEngine, VisionEngine
from .bundle import Bundle, check_verified
from .devices import Placement
from .errors import BackendError, PromptError
from .option_types import check_threads
from .preprocess import Tiles, static_hd_tiles
from .prompt import PromptLayout, build_prompt, check_max_new_tokens, check_room, stop_token_ids
from .sampling import Sampler
from .tokenizer import Tokenizer

FUSION_L_TOKENS = 144


@dataclass
class Scene:
    """One frame, ready for questions: tiles, global grid and per-q pooled context."""
    tiles: Tiles
    grid: np.ndarray                                   # (2P, 2P, H)
    pooled: dict = field(default_factory=dict)         # q → (latent init (q,H), windows (q,w*w,H))
    stats: dict = field(default_factory=dict)          # preprocess_s, vision_global_s


@dataclass
class AskResult:
    text: str
    token_ids: list[int]
    prompt: str
    first_logits: np.ndarray     # (V,) float32: logits of the first generated step
    layout: PromptLayout


class Pipeline:
    def __init__(self, bundle: Bundle, vision: VisionEngine, llm: LLMEngine, tokenizer: Tokenizer,
                 placement: Placement | str):
        self.bundle = bundle
        self.cfg = bundle.config
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        # a plain device string: every part on it (engines opened by hand)
        self.placement = placement if isinstance(placement, Placement) else \
            Placement({c: placement for c in ("vision", "align", "llm")})
        self.stop_ids = frozenset(stop_token_ids(tokenizer, self.cfg.template))
        self.last_stats: dict = {}
        self.last_result: AskResult | None = None
        self._recorder = None           # callable(name, dict) observing graph inputs (calibration, verify)
        self.interactions_enabled = True

    @classmethod
    def open(cls, path, device: str = "auto", threads: int | None = None, check_hashes: bool = True, *,
             vision_device: str | None = None, align_device: str | None = None, llm_device: str | None = None,
             tf32: bool = False, strict: bool = False, no_build: bool = False, capabilities=None,
             low_memory: bool = False) -> "Pipeline":
        """device: auto | cpu | cuda for every part; vision_device / align_device / llm_device
        override it per part. tf32: let the CUDA EP run fp32 MatMuls in TF32 (faster, ~1e-2 off).
        strict: refuse a bundle whose verification was skipped, forced or failed (else
        `verification_warning` says so, for the caller to show). device "tensorrt" (and
        auto on a trt bundle where TensorRT is usable) checks or builds the bundle's engines
        first; no_build refuses to build them. Without TensorRT a trt bundle runs on CUDA or
        the CPU and `placement.notice` says so. capabilities: what is installed (default:
        probed; runtime/devices.py); engine building logs its progress (fusion_edge/logs.py).
        low_memory: onnxruntime keeps the weights memory-mapped from the bundle instead of a
        prepacked copy per session: a bundle larger than RAM opens; decoding is slower."""
        from .backends import open_backends
        check_threads(threads, "threads")
        bundle = Bundle.open(path, check_hashes=check_hashes)
        if strict:
            check_verified(bundle)
        vision, llm, placement = open_backends(bundle, device, threads, vision_device=vision_device,
                                               align_device=align_device, llm_device=llm_device, tf32=tf32,
                                               no_build=no_build, capabilities=capabilities,
                                               low_memory=low_memory)
        return cls(bundle, vision, llm, Tokenizer.from_dir(bundle.file("tokenizer")), placement)

    @property
    def verification_warning(self) -> str | None:
        return self.bundle.verification_warning()

    @property
    def device_notice(self) -> str | None:
        """One line when the parts run elsewhere than the bundle is made for (trt without TensorRT)."""
        return self.placement.notice

    @property
    def devices(self) -> dict[str, str]:
        """{"vision", "align", "llm"} → "cpu" | "cuda" | "tensorrt": where each part runs."""
        return dict(self.placement.devices)

    @property
    def device(self) -> str:
        """The one device every part runs on, or "mixed"."""
        return self.placement.summary

    @property
    def tf32(self) -> bool:
        return self.placement.tf32

    @property
    def tf32_parts(self) -> list[str]:
        """Parts whose fp32 products run in TF32: --tf32 on the CUDA EP, or forced by the backend."""
        return self.placement.tf32_parts

    @property
    def recorder(self):
        return self._recorder

    @recorder.setter
    def recorder(self, fn) -> None:
        self._recorder = fn
        self.llm.recorder = fn

    @property
    def backend_name(self) -> str:
        return f"{self.bundle.target}-{self.bundle.precision}"

    @property
    def default_query_len(self) -> int:
        return int(self.bundle.options["query_len"])

    @property
    def image_tokens(self) -> int:
        return int(self.bundle.options["image_tokens"])

    # ---- per frame ---------------------------------------------------------------------
    def look(self, image) -> Scene:
        t0 = time.perf_counter()
        tiles = static_hd_tiles(image, self.cfg.tower.image_size)
        t1 = time.perf_counter()
        H = self.cfg.llm.hidden_size
        inputs = {"pixels": tiles.global_tiles, "instruct_embeds": np.zeros((4, 0, H), np.float32),
                  "instruct_keep": np.zeros((4, 0), bool)}
        self._record("vision_global", inputs)
        tokens = self.vision.encode(**inputs)
        grid = vision_post.global_grid(tokens)
        return Scene(tiles, grid, stats={"preprocess_s": t1 - t0, "vision_global_s": time.perf_counter() - t1})

    def pooled(self, scene: Scene, q: int) -> tuple[np.ndarray, np.ndarray]:
        if q not in scene.pooled:
            lat, ctx = vision_post.pool_global(scene.grid, q, self.cfg.window_size)
            scene.pooled[q] = (lat, vision_post.context_windows(ctx, q))
        return scene.pooled[q]

    # ---- per question ------------------------------------------------------------------
    def ask(self, scene: Scene, question: str, stream: bool = False, max_new_tokens: int = 64,
            temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
            query_len: int | None = None):
        """The answer text, or with stream=True an iterator of text pieces as they are decoded.
        Every option is checked here, when ask is called, before any graph runs (`check_ask`)."""
        layout, sampler = self.check_ask(question, max_new_tokens, temperature, top_p, top_k, seed, query_len)
        pieces = self._generate(scene, layout, max_new_tokens, sampler)
        return pieces if stream else "".join(pieces)

    def check_ask(self, question: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                  top_k: int = 0, seed: int | None = None,
                  query_len: int | None = None) -> tuple[PromptLayout, Sampler]:
        """The options of `ask` checked without running anything (a caller may check them before
        `look`) → (prompt layout, sampler); PromptError / OptionError / ConfigError otherwise."""
        context, what = self.context_limit()
        check_max_new_tokens(max_new_tokens, context, what)          # before the prompt is built
        sampler = Sampler(temperature, top_p, top_k, seed)
        q = self.cfg.check_query_len(self.default_query_len if query_len is None else query_len)
        layout = build_prompt(self.tokenizer, self.cfg.template, question, self.image_tokens, q,
                              self.cfg.tokenizer_model_max_length)
        check_room(layout.seq_len, max_new_tokens, context, what)    # the prompt's length known
        return layout, sampler

    def context_limit(self) -> tuple[int, str]:
        """(positions a prompt plus its new tokens may take, what sets them): see bundle_context."""
        return bundle_context(self.bundle)

    def _generate(self, scene: Scene, layout: PromptLayout, max_new: int, sampler: Sampler) -> Iterator[str]:
        t0 = time.perf_counter()
        embeds = self._prefill_inputs(scene, layout, max_new)
        t1 = time.perf_counter()
        logits = self._prefill_run(scene, layout, embeds)
        first = np.array(logits, dtype=np.float32)
        t2 = time.perf_counter()
        decoder = self.tokenizer.stream_decoder()
        out: list[int] = []
        stats = {**scene.stats, "vision_main_s": t1 - t0, "prefill_s": t2 - t1, "ttft_s": t2 - t0,
                 "prompt_tokens": layout.seq_len, "query_len": layout.num_latents,
                 "devices": self.devices, "tf32": self.tf32, "tf32_parts": self.tf32_parts}
        self.last_stats = stats
        # greedy: the engine's own argmax where it has one (the logits stay on the device)
        greedy = self.llm.decode_greedy if sampler.temperature == 0 and isinstance(self.llm, GreedyDecode) else None
        tok = sampler(logits)
        while True:
            if tok in self.stop_ids:
                break
            out.append(tok)
            piece = decoder.push(tok)
            if piece:
                yield piece
            if len(out) >= max_new:
                break
            tok = greedy(tok) if greedy else sampler(self.llm.decode(tok))
        tail = decoder.flush()
        if tail:
            yield tail
        t3 = time.perf_counter()
        n_steps = max(len(out) - 1, 0)   # decode calls made after the prefill's token
        stats.update({"decode_s": t3 - t2, "new_tokens": len(out),
                      "decode_tokens_per_s": (n_steps / (t3 - t2)) if n_steps and t3 > t2 else 0.0})
        self.last_result = AskResult(self.tokenizer.decode(out), out, layout.text, first, layout)

    def prefill(self, scene: Scene, layout: PromptLayout, max_new: int) -> np.ndarray:
        """The prefill `ask` runs (the quality gate runs it too): reserve the cache for the
        prompt + `max_new` tokens, embed the prompt (guided vision included), run the LLM
        prefill with the alignment unless `interactions_enabled` is off → first logits (V,)."""
        return self._prefill_run(scene, layout, self._prefill_inputs(scene, layout, max_new))

    def _prefill_inputs(self, scene: Scene, layout: PromptLayout, max_new: int) -> np.ndarray:
        check_room(layout.seq_len, max_new, *self.context_limit())     # prefill() is called without ask too
        try:
            self.llm.reserve(layout.seq_len + max_new)
        except MemoryError:      # the KV cache for prompt + max_new positions is allocated up front
            raise PromptError(f"the KV cache for {layout.seq_len + max_new} positions does not fit in memory.",
                              "lower --max-new-tokens") from None
        return self.prompt_embeds(scene, layout)

    def _prefill_run(self, scene: Scene, layout: PromptLayout, embeds: np.ndarray) -> np.ndarray:
        aligner = self._aligner(scene, layout) if self.interactions_enabled else None
        return self.llm.prefill(embeds, aligner, layout)

    def prompt_embeds(self, scene: Scene, layout: PromptLayout) -> np.ndarray:
        """(S, H): text rows from the embedding graph, image rows from the guided vision, latent rows."""
        ids = layout.instruct_ids
        inst = self.llm.embed(ids)[None]
        self._record("vision_main", {"pixels": scene.tiles.main[None], "instruct_embeds": inst,
                                     "instruct_keep": (ids != 0)[None]})
        image = self.vision.encode(scene.tiles.main[None], inst, (ids != 0)[None])[0]
        if layout.num_image_tokens == FUSION_L_TOKENS and image.shape[0] != FUSION_L_TOKENS:
            image = vision_post.fusion_l_resize(image, 12)
        latents, _ = self.pooled(scene, layout.num_latents)
        x = self.llm.embed(np.maximum(layout.input_ids, 0))
        x[layout.image_start:layout.image_start + layout.num_image_tokens] = image
        x[layout.latent_start:layout.latent_start + layout.num_latents] = latents
        return x

    def _aligner(self, scene: Scene, layout: PromptLayout) -> "Aligner":
        _, windows = self.pooled(scene, layout.num_latents)
        return Aligner(self.vision, windows, layout, self._record)

    def _graph_engine(self, name: str) -> GraphAccess | None:
        component = "vision" if name.startswith("vision") else name    # vision_global / vision_main
        for engine in (self.vision, self.llm):
            if isinstance(engine, GraphAccess) and component in engine.graph_names():
                return engine
        return None

    def has_graph(self, name: str) -> bool:
        """Whether `run_graph(name, ...)` works: the engine holding it exposes its graphs."""
        return self._graph_engine(name) is not None

    def run_graph(self, name: str, feeds: dict) -> np.ndarray:
        """Run one graph of the bundle by recorded-call name (verification, calibration)."""
        engine = self._graph_engine(name)
        if engine is None:
            raise BackendError(f"the {self.bundle.target} engines do not expose graph '{name}' on its own.",
                               "compare end to end instead")
        return engine.run_graph(name, feeds)

    def _record(self, name: str, inputs: dict) -> None:
        if self._recorder is not None:
            self._recorder(name, {k: np.array(v) for k, v in inputs.items()})


class Aligner:
    """The recursive alignment during one prefill (docs/fusion.md §6), for LLM engines.

    `new_latents(k, h_inst, latents)` is the interaction layer k on the latent rows;
    `__call__(k, hidden)` applies it to a full (S, H) hidden state. `latent_rows` and
    `instruct_pos` say where those rows sit in the prompt.
    """

    def __init__(self, vision, windows: np.ndarray, layout: PromptLayout, record):
        self.vision, self.windows, self.record = vision, windows, record
        self.latent_rows = slice(layout.latent_start, layout.latent_start + layout.num_latents)
        self.instruct_pos = layout.instruct_pos

    def new_latents(self, k: int, h_inst: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """h_inst (H,), latents (q,H) → (q,H)."""
        self.record(f"align_{k:02d}", {"h_inst": h_inst[None], "latents": latents, "windows": self.windows})
        return self.vision.align(k, h_inst, latents, self.windows)

    def __call__(self, k: int, hidden: np.ndarray) -> np.ndarray:
        hidden = hidden.copy()
        hidden[self.latent_rows] = self.new_latents(k, hidden[self.instruct_pos], hidden[self.latent_rows])
        return hidden


def scene_bytes(cfg) -> int:
    """An upper bound of one Scene's memory: the five float32 tiles (3,S,S), the global grid
    (2P,2P,H) and the pooled context of every trained latent count q (latents (q,H) and windows
    (q,w*w,H)). 66 MiB at FUSION-X-3B size (H 3072, S 384, P 24); a cache of scenes is bounded by it."""
    S, P, H, w = cfg.tower.image_size, cfg.tower.patches_per_side, cfg.llm.hidden_size, cfg.window_size
    floats = 5 * 3 * S * S + (2 * P) ** 2 * H + sum(q * (1 + w * w) * H for q in cfg.query_lens)
    return 4 * floats


def bundle_context(bundle: Bundle) -> tuple[int, str]:
    """(positions a prompt plus its new tokens may take, what sets them) of a bundle, known from
    its manifest (no graph opened): a trt bundle's engine profiles end at its max_context; every
    other bundle at the model's positions."""
    limit = bundle.options.get("max_context")
    if limit:
        return int(limit), "the bundle's context"
    return int(bundle.config.llm.max_position_embeddings), "the model's context"
