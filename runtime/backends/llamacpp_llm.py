"""The LLM as one llama.cpp model (a GGUF), with FUSION's recursive alignment run inside
llama.cpp's eval callback during the prefill (docs/fusion.md §6, docs/gguf.md).

Prefill of a prompt laid out as [text][image rows][text][latent rows][question + roles]:
  1. the text before the image block goes in as TOKEN ids (the runtime tokenizer's ids:
     llama.cpp's own tokenizer is never used);
  2. the span [first image row … last prompt row] goes in as EMBEDDINGS, in ONE ubatch
     (n_batch = n_ubatch ≥ span), so every `l_out-<i>` holds the whole span;
  3. llama.cpp asks the callback about every graph node; it answers yes for `l_out-<i>` of
     the interaction layers, and on the data call reads the instruct row and the q latent
     rows, runs the aligner and writes the new latent rows back: later layers and the KV
     cache see them, as in the reference.
Decoding is plain llama.cpp (the callback is inactive outside that one prefill call).

Traps guarded here: a span longer than n_batch is refused before llama.cpp is called (it
would abort the process); an exception inside the callback is caught, the callback still
returns True (False would silently cut the graph), and the abort callback then stops
llama_decode, which is reported as a BackendError; the callback's numpy/BLAS math runs
single-threaded. fp32 bundles run with an f32 KV cache and flash attention off (parity
mode); other precisions with an f16 KV cache.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from collections import deque
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..cuda_driver import cuda_device
from ..errors import BackendError, BundleFileError, DeviceError, MissingExtraError, PromptError
from ..tf32 import llama_cpp_tf32
from . import ggml_ctypes as gg

_LOG: deque = deque(maxlen=40)        # llama.cpp's recent warnings and errors, for messages
_STATE: dict = {}                      # process-wide: backend initialised, log callback kept alive
CTX_ROUND = 256                        # n_ctx grows in steps of this many positions


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError("llama-cpp-python", "gguf", "Running a GGUF bundle's LLM") from None
    if "backend" not in _STATE:
        _install_log(llama_cpp)
        llama_cpp.llama_backend_init()
        gg.check_layout()
        _STATE["backend"] = True
    return llama_cpp


def _install_log(llama_cpp) -> None:
    """Keep llama.cpp's warnings/errors (for error messages) instead of printing them."""
    @llama_cpp.llama_log_callback
    def log(level, text, _user):
        if level in (3, 4) and text:            # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h)
            _LOG.append(text.decode("utf-8", "replace").rstrip())
    _STATE["log"] = log
    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))


def _recent_log() -> str:
    lines = [s for s in _LOG if s][-3:]
    _LOG.clear()
    return (" (llama.cpp: " + " | ".join(lines) + ")") if lines else ""


def _single_threaded():
    """numpy/BLAS limited to one thread inside the callback (ggml's threads are waiting)."""
    if "threadpools" not in _STATE:
        try:
            from threadpoolctl import ThreadpoolController
            _STATE["threadpools"] = ThreadpoolController()     # scans the loaded libraries once
        except ImportError:
            _STATE["threadpools"] = None
    ctl = _STATE["threadpools"]
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


class TokenEmbedding:
    """Rows of the GGUF's own `token_embd`, dequantized as llama.cpp does (memory-mapped)."""

    def __init__(self, path):
        try:
            import gguf
        except ImportError:
            raise MissingExtraError("gguf", "gguf", "Reading a GGUF bundle's token embeddings") from None
        try:
            reader = gguf.GGUFReader(str(path), "r")
        except Exception as e:   # gguf raises ValueError / struct errors on a bad file
            raise BundleFileError(f"{path} is not a readable GGUF file ({e}).",
                                  "copy the bundle again, or re-export it") from None
        t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if t is None:
            raise BundleFileError(f"{path} has no token_embd.weight tensor.", "re-export the bundle")
        self._data, self._type, self._dequantize = t.data, t.tensor_type, gguf.quants.dequantize
        self.n_vocab = int(t.shape[1])      # GGUF shapes are (n_embd, n_vocab)
        self.type_name = t.tensor_type.name

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise PromptError(f"token id out of range 0..{self.n_vocab - 1}.", "use ids from the bundle's tokenizer")
        rows = self._dequantize(np.asarray(self._data[ids]), self._type)
        return np.ascontiguousarray(rows, dtype=np.float32).reshape(ids.size, -1)


class _AlignHook:
    """The eval + abort callbacks of one context, and the state of the prefill they serve."""

    def __init__(self, llama_cpp, layers: tuple[int, ...]):
        self.layer_of = {f"l_out-{i}".encode(): k for k, i in enumerate(layers)}
        self.f32 = llama_cpp.GGML_TYPE_F32
        self.active = False
        self.aligner: Any = None              # the prefill's aligner (new_latents) while armed
        self.lat0 = self.n_lat = self.inst = self.n_rows = 0
        self.row_bytes = 0
        self.applied = 0
        self.error: BaseException | None = None
        self.eval_cb = llama_cpp.ggml_backend_sched_eval_callback(self._eval)
        self.abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self.active and self.error is not None)

    def arm(self, aligner, lat0: int, n_lat: int, inst: int, n_rows: int, n_embd: int) -> None:
        self.aligner, self.lat0, self.n_lat, self.inst, self.n_rows = aligner, lat0, n_lat, inst, n_rows
        self.row_bytes = 4 * n_embd
        self.applied, self.error, self.active = 0, None, True

    def disarm(self) -> None:
        self.active, self.aligner, self.error = False, None, None

    def _eval(self, ptr, ask, _user) -> bool:
        if not self.active:
            return not ask          # not interested; a data call (never asked for) must go on
        try:
            k = self.layer_of.get(gg.tensor_name(ptr))
            if ask:
                return k is not None
            if k is not None and self.error is None:
                with _single_threaded():
                    self._apply(ptr, k)
        except BaseException as e:      # never let it reach C; the abort callback reports it
            self.error = self.error or e
        return True                     # False would cut the graph short: logits silently wrong

    def _apply(self, ptr: int, k: int) -> None:
        t = gg.tensor_at(ptr)
        if t.type != self.f32 or t.ne[1] != self.n_rows or t.nb[1] != self.row_bytes \
                or t.nb[0] != 4 or t.ne[0] * 4 != self.row_bytes:
            raise BackendError(f"llama.cpp's {t.name.decode()} is type {t.type}, ne {list(t.ne)}, nb {list(t.nb)}; "
                               f"expected contiguous f32 [{self.row_bytes // 4}, {self.n_rows}].",
                               "this llama.cpp build lays out hidden states differently; use llama-cpp-python 0.3.x")
        h_inst = gg.read_rows(ptr, self.inst, 1, self.row_bytes)[0]
        lat = gg.read_rows(ptr, self.lat0, self.n_lat, self.row_bytes)
        new = np.asarray(self.aligner.new_latents(k, h_inst, lat), dtype=np.float32)
        if new.shape != lat.shape:
            raise BackendError(f"interaction layer {k} returned shape {new.shape}, expected {lat.shape}.",
                               "re-export the bundle")
        gg.write_rows(ptr, self.lat0, new, self.row_bytes)
        self.applied += 1


def load_model(path, n_gpu_layers: int = 0):
    """llama.cpp model from a GGUF file, or a BackendError (llama.cpp returns NULL on a bad file)."""
    L = import_llama_cpp()
    params = L.llama_model_default_params()
    params.n_gpu_layers = int(n_gpu_layers)
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise BackendError(f"llama.cpp could not load {path}{_recent_log()}.",
                           "the GGUF is damaged or from another llama.cpp: copy the bundle again or re-export it")
    return model


class LlamaCppLLM:
    """LLM engine on llama.cpp: reserve / embed / prefill(embeds, aligner, layout) / decode."""
    name = "llama.cpp"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None,
                 max_batch: int | None = None, *, providers: list[str] | None = None, low_memory: bool = False):
        """providers: part of the engine constructor; llama.cpp picks its device itself.
        low_memory: part of the engine constructor; llama.cpp memory-maps the GGUF always."""
        self.llama = import_llama_cpp()
        self.cfg = bundle.config
        comp = bundle.components.get("llm")
        if comp is None or comp.backend != "llama.cpp":
            raise BundleFileError(f"bundle {bundle.path} has no llama.cpp LLM component.",
                                  "re-export it with --target gguf")
        self.path = bundle.file(comp.file)
        self.parity = comp.get("kv_cache", "f32" if bundle.precision == "fp32" else "f16") == "f32"
        self.threads = int(threads or os.cpu_count() or 1)
        self.max_batch = max_batch
        layers = self.cfg.interaction_layers
        if layers and max(layers) >= self.cfg.llm.num_layers - 1:
            raise BackendError(f"interaction layer {max(layers)} is the last decoder layer, whose l_out holds "
                               "only output rows in llama.cpp.", "export this checkpoint with --target onnx")
        self.ctx = self.model = None
        self.device, self.n_gpu_layers, self.op_offload = "cpu", 0, False
        self.forced_tf32: str | None = None
        self.embed_rows = TokenEmbedding(self.path)      # reads (and so checks) the GGUF first
        self.model = self._load_model(device)
        self.n_embd = self.llama.llama_model_n_embd(self.model)
        self.n_vocab = self.llama.llama_vocab_n_tokens(self.llama.llama_model_get_vocab(self.model))
        if self.n_embd != self.cfg.llm.hidden_size or self.n_vocab != self.embed_rows.n_vocab:
            self.close()
            raise BundleFileError(f"{self.path.name} has n_embd {self.n_embd}, n_vocab {self.n_vocab}; the bundle "
                                  f"says {self.cfg.llm.hidden_size}, {self.embed_rows.n_vocab}.",
                                  "re-export the bundle")
        self.hook = _AlignHook(self.llama, layers)
        self.capacity = self.n_batch = 0
        self.length = 0          # positions in the KV cache
        self.recorder = None     # engine interface; llama.cpp exposes no segment inputs

    # ---- model and context ----------------------------------------------------------------
    def _load_model(self, device: str):
        """device auto | cpu | cuda. On cuda every layer is offloaded (n_gpu_layers 999)."""
        gpu = self.llama.llama_supports_gpu_offload()
        if device == "cuda" and not gpu:
            raise DeviceError("the llm part (llama.cpp) cannot run on 'cuda': this llama-cpp-python was built "
                              "without GPU offload.",
                              "reinstall it with CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install llama-cpp-python, "
                              "or use --llm-device cpu")
        if device not in ("auto", "cpu", "cuda"):
            raise DeviceError(f"unknown device '{device}'.", "use auto, cpu or cuda")
        self.n_gpu_layers = 999 if (gpu and device != "cpu") else 0
        self.device = "cuda" if self.n_gpu_layers else "cpu"
        # On a GPU build with the weights on the host, ggml's scheduler still sends every weight
        # product of ≥ 32 rows (GGML_OP_OFFLOAD_MIN_BATCH) to the GPU ("op_offload", on by
        # default), where F32 products run in TF32: the 1e-2 drift of a cpu placement on a CUDA
        # build (the H200 check of 2026-11-29, docs/gpu.md). A cpu placement keeps every op on the CPU.
        self.op_offload = self.device == "cuda"
        gpu = cuda_device() if self.device == "cuda" else None
        self.forced_tf32 = llama_cpp_tf32(self.device, gpu[1] if gpu else None)
        return load_model(self.path, self.n_gpu_layers)

    def reserve(self, capacity: int) -> None:
        """A context whose KV cache holds `capacity` positions (re-created only when it grows)."""
        if capacity <= self.capacity:
            return
        L = self.llama
        n_ctx = -(-int(capacity) // CTX_ROUND) * CTX_ROUND
        n_batch = min(n_ctx, self.max_batch or n_ctx)
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, n_batch, 1
        p.n_threads = p.n_threads_batch = self.threads
        p.type_k = p.type_v = L.GGML_TYPE_F32 if self.parity else L.GGML_TYPE_F16
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED if self.parity else L.LLAMA_FLASH_ATTN_TYPE_AUTO
        p.cb_eval, p.cb_eval_user_data = self.hook.eval_cb, None
        p.abort_callback, p.abort_callback_data = self.hook.abort_cb, None
        p.no_perf = True
        if hasattr(p, "op_offload"):
            p.op_offload = self.op_offload
        self._free_ctx()
        ctx = L.llama_init_from_model(self.model, p)
        if not ctx:
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} positions{_recent_log()}.",
                               "lower --max-new-tokens, or free memory")
        self.ctx, self.capacity, self.n_batch, self.length = ctx, n_ctx, n_batch, 0

    def _free_ctx(self) -> None:
        if self.ctx:
            self.llama.llama_free(self.ctx)
            self.ctx, self.capacity = None, 0

    def close(self) -> None:
        self._free_ctx()
        if getattr(self, "model", None):
            self.llama.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # ---- engine interface -----------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(S,) ids → (S,H) float32: the GGUF's own token_embd rows (bit-identical to llama.cpp's)."""
        return self.embed_rows(ids)

    def prefill(self, embeds: np.ndarray, aligner=None, layout=None) -> np.ndarray:
        """embeds (S,H) → last-row logits (V,). Tokens before `layout.image_start` go in as ids,
        the rest as embeddings in one ubatch with the alignment in the eval callback."""
        S = int(embeds.shape[0])
        start = int(layout.image_start) if layout is not None else 0
        span = S - start
        self._check_room(S, span)
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)
        self.length = 0
        if start:
            ids = np.asarray(layout.input_ids[:start], dtype=np.int64)
            if ids.min() < 0:
                raise PromptError("the prompt has image/latent slots before its image block.", "rebuild the prompt")
            for a in range(0, start, self.n_batch):
                self._decode_tokens(ids[a:a + self.n_batch], want_logits=False)
        if aligner is not None:
            lat = aligner.latent_rows
            lat0, inst = lat.start - start, int(aligner.instruct_pos) - start
            if lat0 < 0 or lat.stop - start > span or not 0 <= inst < span:
                raise PromptError("the latent rows or the instruct row lie outside the embedded span.",
                                  "rebuild the prompt with runtime.prompt.build_prompt")
            self.hook.arm(aligner, lat0, lat.stop - lat.start, inst, span, self.n_embd)
        try:
            logits = self._decode_embeds(np.ascontiguousarray(embeds[start:], dtype=np.float32))
        finally:
            applied, self.hook.applied = self.hook.applied, 0
            self.hook.disarm()
        if aligner is not None and applied != len(self.cfg.interaction_layers):
            raise BackendError(f"the alignment ran on {applied} of {len(self.cfg.interaction_layers)} layers inside "
                               "llama.cpp (its l_out tensors were not offered to the eval callback).",
                               "use llama-cpp-python 0.3.x, or a bundle with --target onnx")
        return logits

    def decode(self, token_id: int) -> np.ndarray:
        if self.length + 1 > self.capacity:
            raise PromptError(f"the KV cache holds {self.capacity} positions; {self.length + 1} are needed.",
                              "lower --max-new-tokens or ask a shorter question")
        return self._decode_tokens(np.array([token_id], np.int64), want_logits=True)

    # ---- llama_decode ---------------------------------------------------------------------
    def _check_room(self, S: int, span: int) -> None:
        if self.ctx is None or S > self.capacity:
            raise PromptError(f"the KV cache holds {self.capacity} positions; {S} are needed.",
                              "call reserve() first, or lower --max-new-tokens / ask a shorter question")
        if span > self.n_batch:   # llama.cpp would abort the process: refuse before calling it
            raise PromptError(f"the image + question span has {span} rows, more than this llama.cpp context takes "
                              f"in one batch ({self.n_batch}); the alignment needs the span in one batch.",
                              "ask a shorter question, choose a smaller query_len, or raise max_batch")

    def _decode_tokens(self, ids: np.ndarray, want_logits: bool):
        L, n = self.llama, int(ids.size)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            np.ctypeslib.as_array(batch.token, shape=(n,))[:] = ids
            self._fill(batch, n, want_logits)
            return self._run(batch, n, want_logits)
        finally:
            L.llama_batch_free(batch)

    def _decode_embeds(self, x: np.ndarray) -> np.ndarray:
        L, n = self.llama, int(x.shape[0])
        batch = L.llama_batch_init(n, self.n_embd, 1)
        try:
            ctypes.memmove(batch.embd, x.ctypes.data, x.nbytes)
            self._fill(batch, n, True)
            return self._run(batch, n, True)
        finally:
            L.llama_batch_free(batch)

    def _fill(self, batch, n: int, want_logits: bool) -> None:
        batch.n_tokens = n
        np.ctypeslib.as_array(batch.pos, shape=(n,))[:] = np.arange(self.length, self.length + n, dtype=np.int32)
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
        out = np.ctypeslib.as_array(batch.logits, shape=(n,))
        out[:] = 0
        out[-1] = int(want_logits)
        for i in range(n):
            batch.seq_id[i][0] = 0

    def _run(self, batch, n: int, want_logits: bool):
        rc = self.llama.llama_decode(self.ctx, batch)
        if rc != 0:
            err = self.hook.error
            self.length = 0                    # partial ubatches may remain: the next prefill clears
            if err is not None:
                raise BackendError(f"the recursive alignment failed inside llama.cpp's eval callback: "
                                   f"{type(err).__name__}: {err}", "check the bundle (fusion-edge verify)") from err
            raise BackendError(f"llama_decode returned {rc}{_recent_log()}.",
                               "lower --max-new-tokens or ask a shorter question; if it persists, re-export")
        self.length += n
        if not want_logits:
            return None
        ptr = self.llama.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # ---- llama.cpp's own tokenizer (for comparisons only; the runtime never uses it) ------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        L = self.llama
        vocab = L.llama_model_get_vocab(self.model)
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            buf = (L.llama_token * -n)()
            n = L.llama_tokenize(vocab, raw, len(raw), buf, -n, add_special, parse_special)
        return list(buf[:n])
