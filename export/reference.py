"""The PyTorch reference: FUSION inference exactly as docs/fusion.md states it.

Every backend is judged against this. Built from a checkpoint's canonical weights
(export/weight_map.py); preprocessing and prompts come from runtime/ (one implementation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fusion_edge.runtime.prompt import (IMAGE_SLOT, LATENT_SLOT, PromptLayout, build_prompt,
                                        check_max_new_tokens, check_room, stop_token_ids)
from fusion_edge.runtime.preprocess import Tiles, static_hd_tiles
from fusion_edge.runtime.sampling import Sampler

from .checkpoint import Checkpoint, open_checkpoint
from .ref_model import FusionModel
from .ref_vision import fusion_l_resize, global_grid, pool_global

FUSION_L_TOKENS = 144


@dataclass
class RefScene:
    """Question-independent features of one image: cached per frame."""
    tiles: Tiles
    grid: torch.Tensor                # (2P, 2P, H) projected global tiles
    pooled: dict = field(default_factory=dict)   # q → (latent init (q,H), global ctx (G,H))


@dataclass
class RefResult:
    text: str
    token_ids: list[int]
    prompt: str
    first_logits: np.ndarray          # (V,) float32, logits of the first generated step
    timings: dict
    layout: PromptLayout | None = None


class FusionReference:
    def __init__(self, checkpoint: Checkpoint, dtype=torch.float32):
        self.ckpt = checkpoint
        self.cfg = checkpoint.config
        self.tokenizer = checkpoint.tokenizer()
        self.dtype = dtype                 # float32 (the gate's reference) or bfloat16 (bench only)
        self.model = FusionModel.from_checkpoint(checkpoint, dtype).eval()
        self.interactions_enabled = True   # tests switch this off to prove the layers matter

    @classmethod
    def load(cls, model: str, revision: str | None = None, dtype=torch.float32) -> "FusionReference":
        return cls(open_checkpoint(model, revision), dtype)

    # ---- vision ------------------------------------------------------------------------
    @torch.no_grad()
    def look(self, image) -> RefScene:
        tiles = static_hd_tiles(image, self.cfg.tower.image_size)
        return RefScene(tiles, self.encode_global(tiles.global_tiles))

    @torch.no_grad()
    def encode_global(self, global_tiles: np.ndarray) -> torch.Tensor:
        m = self.model
        feats = m.vision(torch.from_numpy(global_tiles).to(self.dtype))     # (4,N,3Dv)
        return global_grid(m.mm_projector(feats))                   # (2P,2P,H)

    @torch.no_grad()
    def pooled(self, scene: RefScene, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        if q not in scene.pooled:
            scene.pooled[q] = pool_global(scene.grid, q, self.cfg.window_size)
        return scene.pooled[q]

    @torch.no_grad()
    def encode_main(self, main_tile: np.ndarray, instruct_ids: np.ndarray) -> torch.Tensor:
        """(3,S,S) tile guided by the question → image tokens (N,H)."""
        m = self.model
        ids = torch.from_numpy(np.asarray(instruct_ids, dtype=np.int64))[None]
        states = m.aux_projector(m.llm.embed(ids))                  # (1,T,Dv)
        feats = m.vision(torch.from_numpy(main_tile)[None].to(self.dtype), states, ids != 0)
        return m.mm_projector(feats)[0]

    # ---- LLM ---------------------------------------------------------------------------
    def layout(self, question: str, q: int, image_tokens: int | None = None) -> PromptLayout:
        n_img = image_tokens or self.cfg.tower.num_patches
        return build_prompt(self.tokenizer, self.cfg.template, question, n_img, q,
                            self.cfg.tokenizer_model_max_length)

    @torch.no_grad()
    def embed_prompt(self, layout: PromptLayout, image_tokens: torch.Tensor, latents: torch.Tensor):
        ids = torch.from_numpy(layout.input_ids)
        text = ids.clamp(min=0)
        x = self.model.llm.embed(text)                              # (S,H); slot rows replaced below
        x[layout.image_start:layout.image_start + layout.num_image_tokens] = image_tokens
        x[layout.latent_start:layout.latent_start + layout.num_latents] = latents
        assert bool((ids[layout.image_start:layout.image_start + layout.num_image_tokens] == IMAGE_SLOT).all())
        assert bool((ids[layout.latent_start:layout.latent_start + layout.num_latents] == LATENT_SLOT).all())
        return x[None]

    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, layout: PromptLayout, global_ctx: torch.Tensor | None):
        """embeds (1,S,H) → last-position logits (V,), KV cache. Interactions run here only."""
        llm = self.model.llm
        cache = llm.empty_cache()
        x = embeds
        lat = slice(layout.latent_start, layout.latent_start + layout.num_latents)
        done = 0
        for k, layer in enumerate(self.cfg.interaction_layers):
            x = llm.run_layers(x, done, layer + 1, 0, cache)
            done = layer + 1
            if self.interactions_enabled:
                x = x.clone()
                x[0, lat] = self.model.align[k](x[0, layout.instruct_pos], x[0, lat], global_ctx)
        x = llm.run_layers(x, done, self.cfg.llm.num_layers, 0, cache)
        return llm.logits(x[0, -1]), cache

    @torch.no_grad()
    def decode_step(self, token_id: int, position: int, cache) -> torch.Tensor:
        llm = self.model.llm
        x = llm.embed(torch.tensor([[token_id]]))
        x = llm.run_layers(x, 0, self.cfg.llm.num_layers, position, cache)
        return llm.logits(x[0, -1])

    # ---- end to end ---------------------------------------------------------------------
    def check_ask(self, question: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                  top_k: int = 0, seed: int | None = None, query_len: int | None = None,
                  image_tokens: int | None = None) -> tuple[PromptLayout, Sampler]:
        """The options of `ask` checked without running the model → (prompt layout, sampler);
        the same checks as Pipeline.check_ask, against the model's positions."""
        context = self.cfg.llm.max_position_embeddings
        check_max_new_tokens(max_new_tokens, context)          # before the prompt is built
        sampler = Sampler(temperature, top_p, top_k, seed)
        q = self.cfg.check_query_len(self.cfg.default_query_len if query_len is None else query_len)
        layout = self.layout(question, q, FUSION_L_TOKENS if image_tokens == FUSION_L_TOKENS else None)
        check_room(layout.seq_len, max_new_tokens, context)
        return layout, sampler

    @torch.no_grad()
    def ask(self, scene: RefScene, question: str, max_new_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, top_k: int = 0, seed: int | None = None, query_len: int | None = None,
            image_tokens: int | None = None, on_token=None) -> RefResult:
        t0 = time.perf_counter()
        layout, sampler = self.check_ask(question, max_new_tokens, temperature, top_p, top_k, seed, query_len,
                                         image_tokens)                  # options checked before any work
        q, fusion_l = layout.num_latents, image_tokens == FUSION_L_TOKENS
        latents, ctx = self.pooled(scene, q)
        img = self.encode_main(scene.tiles.main, layout.instruct_ids)
        if fusion_l:
            img = fusion_l_resize(img, int(math.isqrt(FUSION_L_TOKENS)))
        t1 = time.perf_counter()
        logits, cache = self.prefill(self.embed_prompt(layout, img, latents), layout, ctx)
        t2 = time.perf_counter()
        first = logits.float().numpy().copy()
        stops = set(stop_token_ids(self.tokenizer, self.cfg.template))
        out: list[int] = []
        pos = layout.seq_len
        for _ in range(max_new_tokens):
            tok = sampler(logits.float().numpy())
            if tok in stops:
                break
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if len(out) == max_new_tokens:
                break
            logits = self.decode_step(tok, pos, cache)
            pos += 1
        t3 = time.perf_counter()
        timings = {"vision_main_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2,
                   "prompt_tokens": layout.seq_len, "new_tokens": len(out)}
        return RefResult(self.tokenizer.decode(out), out, layout.text, first, timings, layout)

    @torch.no_grad()
    def greedy_logits(self, image, question: str, steps: int, query_len: int | None = None,
                      image_tokens: int | None = None) -> tuple[PromptLayout, list[int], list[np.ndarray]]:
        """Greedy run → (layout, tokens, logits per step (V,)); tokens[t] = argmax(logits[t]),
        the last one a stop token or the `steps`-th: the reference side of a teacher-forced
        comparison (quantize/agreement.py, the same shape as its fp32 pipeline side)."""
        q = self.cfg.check_query_len(self.cfg.default_query_len if query_len is None else query_len)
        fusion_l = image_tokens == FUSION_L_TOKENS
        scene = self.look(image)
        layout = self.layout(question, q, FUSION_L_TOKENS if fusion_l else None)
        latents, ctx = self.pooled(scene, q)
        img = self.encode_main(scene.tiles.main, layout.instruct_ids)
        if fusion_l:
            img = fusion_l_resize(img, int(math.isqrt(FUSION_L_TOKENS)))
        logits, cache = self.prefill(self.embed_prompt(layout, img, latents), layout, ctx)
        stops = set(stop_token_ids(self.tokenizer, self.cfg.template))
        out, tokens, pos = [], [], layout.seq_len
        while True:
            out.append(logits.float().numpy().copy())
            tokens.append(int(np.argmax(out[-1])))
            if tokens[-1] in stops or len(tokens) >= steps:
                return layout, tokens, out
            logits = self.decode_step(tokens[-1], pos, cache)
            pos += 1

    def answer(self, image, question: str, **kw) -> RefResult:
        self.check_ask(question, **{k: v for k, v in kw.items() if k != "on_token"})   # before the image is encoded
        t0 = time.perf_counter()
        scene = self.look(image)
        t1 = time.perf_counter()
        res = self.ask(scene, question, **kw)
        res.timings = {"preprocess_and_global_s": t1 - t0, **res.timings}
        return res
