"""Build a fast (`tokenizers`) tokenizer from a SentencePiece `tokenizer.model`.

For checkpoints that ship only the slow-tokenizer files (`tokenizer.model` +
`tokenizer_config.json`, as a slow `LlamaTokenizer.save_pretrained` writes them — the case
of FUSION's Phi-3.5 checkpoints, trained with `use_fast=False`). The conversion is the one
Hugging Face's Llama converter performs (own code):

* model: BPE over the .model's pieces (id = piece index), merges recovered from the
  vocabulary (every split of a piece into two pieces, ordered by the merged piece's score),
  `unk_token` = the .model's unk piece, `fuse_unk`, `byte_fallback` as in the .model;
* legacy=True  → normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer
                 (a "▁" before every text segment, also after added tokens);
  legacy=False → no normalizer, pre-tokenizer Metaspace(prepend_scheme="first", split=False);
* decoder Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(1 leading space)];
* post-processor from add_bos_token / add_eos_token (LlamaTokenizerFast's rule);
* added tokens: control / user-defined pieces of the .model, then every entry of
  tokenizer_config.json's `added_tokens_decoder` with its flags, at its id.

The .model protobuf is read from `sentencepiece`'s serialized proto with a small wire-format
reader, so no `protobuf` package is needed.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from fusion_edge.runtime.errors import CheckpointError, ConfigError, MissingExtraError
from fusion_edge.runtime.protowire import WireError, fields

SPIECE = "▁"
# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_UNIGRAM, MODEL_BPE = 1, 2


@dataclass
class SpmModel:
    """What the converter needs from a SentencePiece ModelProto."""
    pieces: list[tuple[str, float, int]] = field(default_factory=list)   # (piece, score, type)
    model_type: int = MODEL_UNIGRAM
    byte_fallback: bool = False
    unk_piece: str = "<unk>"
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def _len(value: object) -> bytes:
    """A length-delimited (or fixed-size) field's bytes (`fields` of a bytes buffer)."""
    if not isinstance(value, bytes):
        raise WireError("expected a length-delimited field, got a varint")
    return value


def _int(value: object) -> int:
    """A varint field's value."""
    if not isinstance(value, int):
        raise WireError("expected a varint field, got a length-delimited one")
    return value


def parse_model_proto(data: bytes) -> SpmModel:
    """Parse the fields of a serialized sentencepiece ModelProto that the converter uses."""
    m = SpmModel()
    for num, _, val in fields(data):
        if num == 1:                                   # repeated SentencePiece pieces
            piece, score, ptype = "", 0.0, NORMAL
            for n, _, v in fields(_len(val)):
                if n == 1:
                    piece = _len(v).decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", _len(v))[0]
                elif n == 3:
                    ptype = _int(v)
            m.pieces.append((piece, score, ptype))
        elif num == 2:                                 # TrainerSpec
            for n, _, v in fields(_len(val)):
                if n == 3:
                    m.model_type = _int(v)
                elif n == 35:
                    m.byte_fallback = bool(v)
                elif n == 45:
                    m.unk_piece = _len(v).decode("utf-8")
        elif num == 3:                                 # NormalizerSpec
            for n, _, v in fields(_len(val)):
                if n == 3:
                    m.add_dummy_prefix = bool(v)
                elif n == 4:
                    m.remove_extra_whitespaces = bool(v)
    return m


def read_spm_model(path: Path) -> SpmModel:
    """Load `path` with sentencepiece (validates it) and parse its proto."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise MissingExtraError("sentencepiece", "export",
                                "Converting a tokenizer.model (no tokenizer.json in the checkpoint)") from None
    try:
        proc = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable SentencePiece model ({e}).",
                              "restore the checkpoint's original tokenizer.model") from None
    model = parse_model_proto(proc.serialized_model_proto())
    if len(model.pieces) != proc.get_piece_size():
        raise CheckpointError(f"{path}: parsed {len(model.pieces)} pieces, sentencepiece reports "
                              f"{proc.get_piece_size()}.", "restore the original tokenizer.model")
    return model


# ------------------------------------------------------------------------------------
def bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece BPE vocabulary.

    Every split of a piece into two pieces of the vocabulary is a merge; merges are ordered
    by the merged piece's score (higher first; SentencePiece BPE scores are -merge rank),
    ties by the ids of the two parts, as Hugging Face's SentencePiece extractor does.
    """
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    found: list[tuple[float, int, int, str, str]] = []
    for piece, score, _ in pieces:
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        found.extend((score, li, ri, left, right) for li, ri, left, right in local)
    # stable sort on score only (descending) keeps the per-piece order within equal scores
    found.sort(key=lambda t: -t[0])
    return [(left, right) for _, _, _, left, right in found]


def _read_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}).",
                              "restore the checkpoint's original tokenizer_config.json") from None


def _token_str(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def tokenizer_from_spm(folder: Path, *, legacy: bool | None = None,
                       config: dict | None = None):
    """The fast tokenizer for `folder/tokenizer.model` (+ `tokenizer_config.json`).

    `legacy` None → tokenizer_config.json's "legacy" (absent → True, as Hugging Face).
    `config` overrides reading tokenizer_config.json. Returns a `tokenizers.Tokenizer`.
    """
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE
    except ImportError:
        raise MissingExtraError("tokenizers", "export", "Converting a tokenizer.model") from None
    folder = Path(folder)
    model_path = folder / "tokenizer.model"
    if not model_path.is_file():
        raise CheckpointError(f"{model_path} does not exist, and there is no tokenizer.json.",
                              "copy the checkpoint's tokenizer files (tokenizer.json or "
                              "tokenizer.model + tokenizer_config.json) into the folder")
    cfg = _read_config(folder) if config is None else config
    spm_model = read_spm_model(model_path)
    if spm_model.model_type != MODEL_BPE:
        raise ConfigError(f"{model_path} is a SentencePiece model of type {spm_model.model_type}, "
                          "not BPE.", "fusion-edge converts BPE models (Llama / Phi-3 family); "
                          "give the checkpoint's tokenizer.json instead")

    # (piece, score) → ids in piece order; merges from the vocabulary.
    vocab = {piece: i for i, (piece, _, _) in enumerate(spm_model.pieces)}
    merges = bpe_merges(spm_model.pieces)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=spm_model.unk_piece,
                        fuse_unk=True, byte_fallback=spm_model.byte_fallback, dropout=None))

    if legacy is None:
        legacy = cfg.get("legacy")
        legacy = True if legacy is None else bool(legacy)
    add_prefix_space = cfg.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    if legacy:
        norms = ([normalizers.Prepend(SPIECE)] if add_prefix_space else []) + \
                [normalizers.Replace(" ", SPIECE)]
        tok.normalizer = normalizers.Sequence(norms)
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPIECE, prepend_scheme="first" if add_prefix_space else "never", split=False)
    steps = [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)

    # Added tokens: the .model's control / user-defined pieces, then the config's table
    # (which may re-declare them with other flags, and lists the appended tokens).
    # tokenizers gives a new added token the next free id, so add in id order.
    added: dict[int, AddedToken] = {}
    for i, (piece, _, ptype) in enumerate(spm_model.pieces):
        if ptype in (CONTROL, USER_DEFINED):
            added[i] = AddedToken(piece, normalized=False, special=ptype == CONTROL)
    for key, entry in (cfg.get("added_tokens_decoder") or {}).items():
        added[int(key)] = AddedToken(entry["content"], single_word=bool(entry.get("single_word")),
                                     lstrip=bool(entry.get("lstrip")), rstrip=bool(entry.get("rstrip")),
                                     normalized=bool(entry.get("normalized", False)),
                                     special=bool(entry.get("special", False)))
    for idx in sorted(added):
        token = added[idx]
        expected = idx if idx < len(spm_model.pieces) else tok.get_vocab_size(with_added_tokens=True)
        if idx >= len(spm_model.pieces) and idx != expected:
            raise CheckpointError(
                f"tokenizer_config.json declares added token {token.content!r} at id {idx}, but the "
                f"next free id after {model_path.name} and the earlier added tokens is {expected}.",
                "the added_tokens_decoder ids must continue the .model's vocabulary without gaps")
        tok.add_tokens([token])
        if tok.token_to_id(token.content) != idx:
            raise CheckpointError(
                f"added token {token.content!r} got id {tok.token_to_id(token.content)}, "
                f"tokenizer_config.json says {idx}.", "restore the original tokenizer files")

    # Post-processor: BOS / EOS per add_bos_token / add_eos_token (defaults True / False).
    bos, eos = _token_str(cfg.get("bos_token", "<s>")), _token_str(cfg.get("eos_token", "</s>"))
    add_bos = cfg.get("add_bos_token", True) and bos is not None
    add_eos = cfg.get("add_eos_token", False) and eos is not None
    single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
    pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
    specials = ([(bos, tok.token_to_id(bos))] if add_bos and bos is not None else []) + \
               ([(eos, tok.token_to_id(eos))] if add_eos and eos is not None else [])
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=specials)
    return tok
