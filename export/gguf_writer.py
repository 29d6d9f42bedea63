"""Write FUSION's LLM as a llama.cpp GGUF, and requantize it with llama.cpp's own quantizer.

`write_gguf` streams the decoder straight from the checkpoint's safetensors into an f32
GGUF, one tensor at a time (header and tensor table first, then each tensor is read,
converted and written, then dropped): peak memory is one tensor, never the model.
`fusion_phi` → llama.cpp `phi3` (fused `attn_qkv`, fused `ffn_up` = [gate; up], NEOX rope,
LongRoPE factors + attention factor), `fusion_llama` → `llama` (Q/K rows permuted for
llama.cpp's interleaved rope, `rope_freqs` for the LLaMA-3.1 frequency smoothing).

The tokenizer goes in as llama.cpp metadata: SentencePiece (`llama`) for Phi-3 — pieces,
scores and types from `tokenizer.model` when the checkpoint has one —, byte-level BPE
(`gpt2`, pre-tokenizer `llama-bpe`) for LLaMA-3; added tokens (chat tokens, FUSION's
`<vision_start>` / `<vision_end>`) as CONTROL / USER_DEFINED, padding rows up to the
model's vocab_size as UNUSED, BOS / EOS / EOT / UNK / PAD ids. The runtime feeds the
runtime tokenizer's ids to llama.cpp, so a tokenization difference cannot change answers
(docs/gguf.md lists where llama.cpp's own tokenizer differs).

`quantize_gguf` rewrites an f32 GGUF with `llama_model_quantize`; `tensor_types` reads back
what type each tensor actually got (K-quants fall back on rows that are not multiples of 256).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusion_edge.runtime import rope
from fusion_edge.runtime.errors import ExportError, MissingExtraError
from fusion_edge.runtime.precisions import PRECISIONS

from .checkpoint import Checkpoint

# quant type name → its `gguf.LlamaFileType` member (llama_ftype); fp32 is written, not quantized
QUANT_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q4_0": "MOSTLY_Q4_0", "Q8_0": "MOSTLY_Q8_0",
               "Q4_K_M": "MOSTLY_Q4_K_M"}
PRECISION_QUANT = {name: p.gguf_llm for name, p in PRECISIONS.items()}


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise MissingExtraError("gguf", "gguf", "Writing a GGUF model") from None
    return gguf


def file_type(quant: str):
    """The `gguf.LlamaFileType` of a quant type name."""
    return import_gguf().LlamaFileType[QUANT_TYPES[quant]]


# ---- tensors -------------------------------------------------------------------------------
@dataclass
class TensorPlan:
    name: str                          # GGUF tensor name
    shape: tuple[int, ...]             # numpy (HF) layout: (out, in) for matrices
    make: Callable[[], np.ndarray]     # reads the checkpoint, returns float32 of `shape`


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp's interleaved pairs, per head: (n_head*D, in)."""
    out, d_in = w.shape
    d = out // n_head
    return w.reshape(n_head, 2, d // 2, d_in).swapaxes(1, 2).reshape(out, d_in)


def llm_tensor_plan(ckpt: Checkpoint) -> list[TensorPlan]:
    """Every GGUF tensor of the LLM, in file order, each with its checkpoint reader."""
    c = ckpt.config.llm
    arch = c.arch
    entries = {e.name: e for e in ckpt.entries}
    H, F, hd = c.hidden_size, c.intermediate_size, c.head_dim
    f32 = lambda key: (lambda: np.ascontiguousarray(ckpt.tensor(key), dtype=np.float32))
    src = lambda name: entries[name].sources
    plan = [TensorPlan("token_embd.weight", (c.vocab_size, H), f32(src("llm.embed.weight")[0]))]
    plan += _rope_tensors(c)
    for i in range(c.num_layers):
        p, b = f"llm.layers.{i}.", f"blk.{i}."
        plan.append(TensorPlan(b + "attn_norm.weight", (H,), f32(src(p + "attn_norm.weight")[0])))
        if arch.fused_qkv:
            nq = (c.num_heads + 2 * c.num_kv_heads) * hd
            plan.append(TensorPlan(b + "attn_qkv.weight", (nq, H), f32(src(p + "qkv.weight")[0])))
        else:
            q_key, k_key, v_key = src(p + "qkv.weight")
            q, k = _rope_rows(f32(q_key), c.num_heads, arch), _rope_rows(f32(k_key), c.num_kv_heads, arch)
            plan += [TensorPlan(b + "attn_q.weight", (c.num_heads * hd, H), q),
                     TensorPlan(b + "attn_k.weight", (c.num_kv_heads * hd, H), k),
                     TensorPlan(b + "attn_v.weight", (c.num_kv_heads * hd, H), f32(v_key))]
        plan.append(TensorPlan(b + "attn_output.weight", (H, c.num_heads * hd), f32(src(p + "o.weight")[0])))
        plan.append(TensorPlan(b + "ffn_norm.weight", (H,), f32(src(p + "ffn_norm.weight")[0])))
        gate_up = src(p + "gate_up.weight")
        if arch.fused_gate_up:   # one fused tensor, gate rows first: llama.cpp's fused SwiGLU order
            plan.append(TensorPlan(b + "ffn_up.weight", (2 * F, H), f32(gate_up[0])))
        else:
            plan += [TensorPlan(b + "ffn_gate.weight", (F, H), f32(gate_up[0])),
                     TensorPlan(b + "ffn_up.weight", (F, H), f32(gate_up[1]))]
        plan.append(TensorPlan(b + "ffn_down.weight", (H, F), f32(src(p + "down.weight")[0])))
    plan.append(TensorPlan("output_norm.weight", (H,), f32(src("llm.norm.weight")[0])))
    head = "llm.embed.weight" if c.tie_word_embeddings else "llm.lm_head.weight"
    plan.append(TensorPlan("output.weight", (c.vocab_size, H), f32(src(head)[0])))
    return plan


def _rope_rows(read: Callable[[], np.ndarray], n_head: int, arch) -> Callable[[], np.ndarray]:
    """The reader of a split Q or K projection, permuted where llama.cpp's rope interleaves."""
    return (lambda: _permute_rope(read(), n_head)) if arch.gguf_permute_qk else read


def _rope_tensors(c) -> list[TensorPlan]:
    s = c.rope_scaling or {}
    try:
        kind = rope.rope_kind(c)
    except NotImplementedError:
        raise ExportError(f"rope scaling '{s.get('rope_type', s.get('type'))}' has no GGUF mapping in fusion-edge.",
                          "export with --target onnx") from None
    half = c.head_dim // 2
    if kind == "longrope":
        return [TensorPlan("rope_factors_long.weight", (half,),
                           lambda: np.asarray(s["long_factor"], np.float32)),
                TensorPlan("rope_factors_short.weight", (half,),
                           lambda: np.asarray(s["short_factor"], np.float32))]
    if kind == "llama3":
        def factors() -> np.ndarray:   # llama.cpp divides each frequency by its factor
            base, _ = rope.inv_freq(_plain(c), 1)
            smoothed, _ = rope.inv_freq(c, 1)
            return (base / smoothed).astype(np.float32)
        return [TensorPlan("rope_freqs.weight", (half,), factors)]
    return []


def _plain(c):
    from dataclasses import replace
    return replace(c, rope_scaling=None)


# ---- metadata ------------------------------------------------------------------------------
def _hparams(w, ckpt: Checkpoint, n_vocab: int) -> None:
    c = ckpt.config.llm
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(n_vocab)
    s = c.rope_scaling or {}
    if rope.rope_kind(c) == "longrope":
        orig = c.original_max_position_embeddings or s["original_max_position_embeddings"]
        _, attn = rope.inv_freq(c, 1)         # the cos/sin scale: llama.cpp's attn_factor
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_scaling_attn_factors(attn)
    if c.head_dim != c.hidden_size // c.num_heads:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)


@dataclass
class Vocab:
    model: str                      # "llama" (SentencePiece) | "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    add_space_prefix: bool = True


def _special_ids(tokenizer, template: str) -> dict[str, int]:
    from fusion_edge.runtime.prompt import get_template
    unk = tokenizer.config.get("unk_token")
    unk = unk.get("content") if isinstance(unk, dict) else unk
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None,
           "unk": tokenizer.token_to_id(unk) if unk else None, "pad": tokenizer.pad_token_id,
           "eot": tokenizer.token_to_id(get_template(template).sep)}
    return {k: int(v) for k, v in ids.items() if v is not None}


def build_vocab(ckpt: Checkpoint, tokenizer, n_vocab: int) -> Vocab:
    """llama.cpp's view of the checkpoint's tokenizer, padded to the model's n_vocab rows."""
    state = tokenizer.to_json()     # the tokenizer.json the bundle ships
    added = {int(t["id"]): t for t in state.get("added_tokens", [])}
    if tokenizer.is_sentencepiece:
        vocab = _spm_vocab(ckpt.folder, state, added)
    else:
        vocab = _bpe_vocab(state, added)
    if len(vocab.tokens) > n_vocab:
        raise ExportError(f"the tokenizer has {len(vocab.tokens)} tokens but the model only {n_vocab} rows.",
                          "use the tokenizer that came with the checkpoint")
    for i in range(len(vocab.tokens), n_vocab):   # rows the embedding has and the tokenizer never emits
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(-1000.0)
        vocab.types.append(import_gguf().TokenType.UNUSED)
    return vocab


def _spm_vocab(folder: Path, state: dict, added: dict) -> Vocab:
    model_file = Path(folder) / "tokenizer.model"
    add_prefix = True
    if model_file.is_file():
        from .spm_convert import read_spm_model
        spm = read_spm_model(model_file)
        tokens = [p for p, _, _ in spm.pieces]
        scores = [float(s) for _, s, _ in spm.pieces]
        types = [int(t) for _, _, t in spm.pieces]
        add_prefix = spm.add_dummy_prefix
    else:   # tokenizer.json only: SentencePiece BPE pieces are ranked by id (score = -rank)
        T = import_gguf().TokenType
        by_id = sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])
        tokens = [p for p, _ in by_id]
        unk = state["model"].get("unk_token")
        types = [T.UNKNOWN if p == unk else T.BYTE if (p.startswith("<0x") and len(p) == 6) else T.NORMAL
                 for p in tokens]
        scores = [-float(i) if t == T.NORMAL else 0.0 for i, t in enumerate(types)]
    _place_added(tokens, scores, types, added)
    return Vocab("llama", "default", tokens, scores, types, add_space_prefix=add_prefix)


def _bpe_vocab(state: dict, added: dict) -> Vocab:
    model = state["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [p for p, _ in by_id]
    types = [import_gguf().TokenType.NORMAL] * len(tokens)
    scores = [0.0] * len(tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    _place_added(tokens, scores, types, added)
    return Vocab("gpt2", "llama-bpe", tokens, scores, types, merges)


def _place_added(tokens: list, scores: list, types: list, added: dict) -> None:
    T = import_gguf().TokenType
    for i in sorted(added):
        while len(tokens) <= i:            # holes between added ids: unused rows
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(T.UNUSED)
        tokens[i] = added[i]["content"]
        types[i] = T.CONTROL if added[i].get("special") else T.USER_DEFINED
        scores[i] = 0.0 if types[i] == T.CONTROL else -1000.0


def _tokenizer_meta(w, vocab: Vocab, tokenizer, template: str) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    ids = _special_ids(tokenizer, template)
    setters = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
               "pad": w.add_pad_token_id, "eot": w.add_eot_token_id}
    for key, value in ids.items():
        setters[key](value)
    w.add_add_bos_token(bool(tokenizer.adds_bos))
    w.add_add_eos_token(bool(tokenizer.config.get("add_eos_token", False)))
    if vocab.model == "llama":
        w.add_add_space_prefix(vocab.add_space_prefix)
    chat = tokenizer.config.get("chat_template")
    if isinstance(chat, str) and chat:
        w.add_chat_template(chat)


# ---- the file -------------------------------------------------------------------------------
def write_gguf(ckpt: Checkpoint, path: str | Path, tokenizer=None, progress: bool = False) -> dict:
    """Write the f32 GGUF of the checkpoint's LLM; returns {tensors, bytes, arch, n_vocab}."""
    gguf = import_gguf()
    cfg = ckpt.config
    c = cfg.llm
    tokenizer = tokenizer or ckpt.tokenizer()
    plan = llm_tensor_plan(ckpt)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), c.arch.gguf_arch)
    # llama.cpp keys Phi-3 special-token stripping (rstrip after chat tokens) on this name
    w.add_name(f"fusion-{c.arch.gguf_arch}")
    w.add_file_type(file_type("F32"))
    _hparams(w, ckpt, c.vocab_size)
    _tokenizer_meta(w, build_vocab(ckpt, tokenizer, c.vocab_size), tokenizer, cfg.template)
    for t in plan:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), 4 * int(np.prod(t.shape)))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in _bar(plan, progress):
            arr = t.make()
            if arr.shape != t.shape:
                raise ExportError(f"GGUF tensor {t.name}: got shape {arr.shape}, expected {t.shape}.",
                                  "the checkpoint does not match its config.json")
            w.write_tensor_data(arr)
            del arr
    finally:
        w.close()
    return {"tensors": len(plan), "bytes": path.stat().st_size, "arch": c.arch.gguf_arch,
            "n_vocab": c.vocab_size}


def _bar(items, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc="gguf", unit="tensor", leave=False)


# ---- llama.cpp's quantizer -----------------------------------------------------------------
def quantize_gguf(src: str | Path, dst: str | Path, quant: str, threads: int = 0) -> None:
    """Rewrite the f32 GGUF `src` as `quant` (F16, Q8_0, Q4_0, Q4_K_M) with llama.cpp."""
    if quant not in QUANT_TYPES or quant == "F32":
        raise ExportError(f"GGUF quant type '{quant}' is not offered.",
                          f"choose one of: {', '.join(q for q in QUANT_TYPES if q != 'F32')}")
    from fusion_edge.runtime.backends.llamacpp_llm import import_llama_cpp
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type(quant))
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(f"llama.cpp could not quantize {Path(src).name} to {quant} (code {rc}).",
                          "check free disk space; report the llama.cpp version with this message")


def tensor_types(path: str | Path) -> dict[str, str]:
    """GGUF tensor name → ggml type name (what each tensor actually got)."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def type_counts(types: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(types.values()).items()))
