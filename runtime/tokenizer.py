"""The runtime tokenizer: a `tokenizers.Tokenizer` plus the checkpoint's tokenizer_config.

Encodes exactly as the FUSION reference's tokenizer does, decodes, and streams text out
of generated ids (`StreamDecoder`). Uses only `tokenizers` (no torch, no sentencepiece).

Two encoders, chosen from tokenizer_config.json:

* the file's own pipeline (byte-level BPE such as LLaMA-3, or a SentencePiece-style
  tokenizer with legacy=true): what `tokenizers` does with tokenizer.json, with BOS/EOS for
  SentencePiece-style files taken from add_bos_token / add_eos_token (LlamaTokenizer's
  defaults: True / False), as transformers does for them;
* "slow" mode, for SentencePiece-style tokenizers whose config says `legacy: false`
  (Phi-3.5). The FUSION reference loads those with `use_fast=False`, i.e. transformers'
  slow LlamaTokenizer, whose non-legacy rules differ from the released tokenizer.json:
  one "▁" is put before the whole text (not before every segment between added tokens),
  segments after added tokens get no "▁", and a leading lone "▁" is dropped only when the
  next token is one of bos/eos/unk/pad/additional_special_tokens — so e.g. a text that
  begins with `<|system|>` or `<vision_end>` keeps a "▁" token in front of it. This mode
  reproduces those rules with a normalizer that only maps " " → "▁".
"""
from __future__ import annotations

import json
from pathlib import Path

import tokenizers as tk   # a core dependency of the runtime

from .errors import CheckpointError

SPIECE = "▁"
CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
# generation EOS ids beyond eos_token (e.g. Llama-3.1's), kept in a saved bundle's config
EXTRA_EOS_KEY = "fusion_edge_eos_token_ids"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                 "cls_token", "mask_token")


def _content(value) -> str | None:
    """A special-token entry of tokenizer_config (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.", f"copy the checkpoint's {what} into {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}).", f"restore the original {what}") from None


def _is_spm_style(state: dict) -> bool:
    """True for SentencePiece-style pipelines (spaces become "▁"), e.g. Llama-2 / Phi-3."""
    def has_metaspace(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Metaspace":
                return True
            if node.get("type") == "Replace" and node.get("content") == SPIECE:
                return True
            return any(has_metaspace(v) for v in node.values())
        if isinstance(node, list):
            return any(has_metaspace(v) for v in node)
        return False
    return has_metaspace(state.get("normalizer")) or has_metaspace(state.get("pre_tokenizer"))


class Tokenizer:
    """encode / decode / special ids of one checkpoint's tokenizer."""

    def __init__(self, tok, config: dict, extra_eos_ids: tuple[int, ...] = ()):
        self._file_tok = tok                 # as loaded: what save() writes back
        self.config = dict(config)
        state = json.loads(tok.to_str())
        self._spm = _is_spm_style(state)
        self._slow = self._spm and self.config.get("legacy") is False
        self._tok = tk.Tokenizer.from_str(tok.to_str())   # the encoder (may be re-piped)
        self._add_bos = self._add_eos = False
        if self._spm:
            # LlamaTokenizer(Fast) semantics: specials from the config, not the file.
            self._tok.post_processor = None
            self._add_bos = bool(self.config.get("add_bos_token", True)) and self.bos_token_id is not None
            self._add_eos = bool(self.config.get("add_eos_token", False)) and self._eos_token_id is not None
        if self._slow:
            self._tok.normalizer = tk.normalizers.Replace(" ", SPIECE)
            self._tok.pre_tokenizer = None
            # Without a pre-tokenizer the BPE model's word cache keys on whole texts: every new
            # question up to ~250 bytes stayed cached (1.6 KiB at 28 characters, 6 KiB at 128;
            # up to 10,000 of them, tens of MB of native memory in a long-running app) and a
            # repeated text encodes no faster from it. Off (a private method; absent: kept).
            resize = getattr(self._tok.model, "_resize_cache", None)
            if resize is not None:
                resize(0)
            self._spiece_id = self._tok.token_to_id(SPIECE)
            # transformers' all_special_tokens: the special-token attributes only.
            names = [_content(self.config.get(k)) for k in _SPECIAL_KEYS]
            names += [_content(v) for v in self.config.get("additional_special_tokens") or []]
            self._named_special_ids = {i for i in map(self.token_to_id, filter(None, names))
                                       if i is not None}
        eos = [self._eos_token_id] if self._eos_token_id is not None else []
        extra = list(extra_eos_ids) + list(self.config.get(EXTRA_EOS_KEY) or [])
        self._eos_ids = tuple(dict.fromkeys(eos + [int(i) for i in extra]))
        self._special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_dir(cls, folder: str | Path) -> "Tokenizer":
        """Load tokenizer.json + tokenizer_config.json (+ generation_config.json's EOS ids)."""
        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            hint = (" It has a tokenizer.model: convert it first (fusion_edge.export."
                    "spm_convert.tokenizer_from_spm, done by `fusion-export`)."
                    if (folder / "tokenizer.model").is_file() else "")
            raise CheckpointError(f"{path} does not exist.{hint}",
                                  "export the checkpoint again (the exporter writes tokenizer.json "
                                  "into the bundle), or copy the checkpoint's tokenizer.json there")
        try:
            tok = tk.Tokenizer.from_file(str(path))
        except Exception as e:   # tokenizers raises plain Exception on a bad file
            raise CheckpointError(f"{path} cannot be loaded by tokenizers ({e}).",
                                  "restore the checkpoint's original tokenizer.json") from None
        config = _read_json(folder / CONFIG_FILE, CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        extra: list[int] = []
        gen = folder / "generation_config.json"
        if gen.is_file():
            eos = _read_json(gen, "generation_config.json").get("eos_token_id")
            extra = list(eos) if isinstance(eos, list) else ([eos] if isinstance(eos, int) else [])
        return cls(tok, config, tuple(extra))

    @classmethod
    def from_tokenizer(cls, tok, config: dict, extra_eos_ids: tuple[int, ...] = ()) -> "Tokenizer":
        """Wrap an in-memory `tokenizers.Tokenizer` with its tokenizer_config dict."""
        return cls(tok, config, extra_eos_ids)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_text(self._file_tok.to_str(pretty=True) + "\n", encoding="utf-8")
        config = dict(self.config)
        if self._eos_ids[1:]:
            config[EXTRA_EOS_KEY] = list(self._eos_ids)
        dump = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
        (folder / CONFIG_FILE).write_text(dump(config), encoding="utf-8")
        special_map = {k: self.config[k] for k in _SPECIAL_KEYS if self.config.get(k) is not None}
        if self.config.get("additional_special_tokens"):
            special_map["additional_special_tokens"] = self.config["additional_special_tokens"]
        (folder / SPECIAL_MAP_FILE).write_text(dump(special_map), encoding="utf-8")

    # --- encode / decode ----------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, as the reference's `tokenizer(text).input_ids`."""
        if not self._spm:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        if self._slow:
            ids = self._encode_slow(text)
        else:
            ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_special_tokens:       # _add_bos / _add_eos are set only where the id exists
            bos = self.bos_token_id if self._add_bos else None
            eos = self._eos_token_id if self._add_eos else None
            ids = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
        return ids

    def _encode_slow(self, text: str) -> list[int]:
        # transformers LlamaTokenizer.tokenize with legacy=False (see module docstring).
        if not text:
            return []
        text = text.replace(SPIECE, " ")
        if self.config.get("add_prefix_space", True) is not False:
            text = SPIECE + text
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if len(ids) > 1 and ids[0] == self._spiece_id and ids[1] in self._named_special_ids:
            ids = ids[1:]
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (special tokens dropped unless skip_special_tokens=False).

        Applies transformers' clean_up_tokenization (" ." → "." ...) when the config's
        clean_up_tokenization_spaces is true (Llama-3.1: true, Phi-3.5: false).
        """
        text = self._file_tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    @property
    def clean_up_spaces(self) -> bool:
        return bool(self.config.get("clean_up_tokenization_spaces", False))

    def to_json(self) -> dict:
        """The tokenizer.json state as loaded (what `save` writes; what the GGUF writer reads)."""
        return json.loads(self._file_tok.to_str())

    @property
    def is_sentencepiece(self) -> bool:
        """True for SentencePiece-style (Metaspace / ▁) vocabularies such as Phi-3's."""
        return self._spm

    def token_to_id(self, token: str) -> int | None:
        return self._file_tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._file_tok.id_to_token(int(token_id))

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special_ids

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)

    # --- special ids --------------------------------------------------------------
    def _special_id(self, key: str) -> int | None:
        name = _content(self.config.get(key))
        return None if name is None else self.token_to_id(name)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def _eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """tokenizer_config's eos_token, then generation_config.json's eos ids (deduplicated)."""
        return self._eos_ids

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._file_tok.get_vocab_size(with_added_tokens=True)

    @property
    def slow_compatible(self) -> bool:
        """True when encoding follows transformers' slow non-legacy LlamaTokenizer."""
        return self._slow

    @property
    def adds_bos(self) -> bool:
        """Whether encode(..., add_special_tokens=True) starts with BOS."""
        if self._spm:
            return self._add_bos
        bos = self.bos_token_id
        probe = self._tok.encode("", add_special_tokens=True).ids
        return bos is not None and bool(probe) and probe[0] == bos


# transformers' clean_up_tokenization, in its order.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_tokenization(text: str) -> str:
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


def _cleanup_holdback(text: str) -> int:
    """Length of the longest end of `text` that could start a clean-up pattern."""
    hold = 0
    for pattern, _ in _CLEANUPS:
        for k in range(1, len(pattern)):
            if k > hold and text.endswith(pattern[:k]):
                hold = k
    return hold


class StreamDecoder:
    """Incremental detokenizer: push ids one by one, get the newly printable text.

    Holds text back while it ends in an incomplete UTF-8 sequence (byte-fallback pieces or
    partial byte-level tokens decode to U+FFFD until the sequence completes), and, when the
    tokenizer cleans up spaces, while it ends in the start of a clean-up pattern (" ", " n").
    Decodes a window that starts at an earlier emission point, so spaces that depend on the
    previous token ("▁" handling, Strip decoders) come out as in a full decode:
    "".join(push(i) for i in ids) + flush() == tokenizer.decode(ids).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0     # window start (token index)
        self._read = 0       # text(_prefix, _read) has been emitted in full ...
        self._extra = ""     # ... followed by this much of the text after it

    def _text(self, start: int, stop: int | None = None) -> str:
        return self._tok.decode(self._ids[start:stop], skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        full = self._text(self._prefix)
        if full.endswith("\ufffd"):
            return ""
        emitted = len(self._text(self._prefix, self._read)) + len(self._extra)
        hold = _cleanup_holdback(full) if self._tok.clean_up_spaces else 0
        end = max(emitted, len(full) - hold)
        out = full[emitted:end]
        if end == len(full):     # all of the window is out: start the next one here ...
            # ... unless the new context would be only skipped special tokens: they decode to
            # nothing, and the next token would decode as the start of a text (SPM drops its "▁")
            only_skipped = self._skip and all(self._tok.is_special(i) for i in self._ids[self._read:])
            self._prefix = self._prefix if only_skipped else self._read
            self._read, self._extra = len(self._ids), ""
        else:
            self._extra += out
        return out

    def flush(self) -> str:
        """Whatever is still held back (incomplete sequences come out as U+FFFD)."""
        full = self._text(self._prefix)
        emitted = len(self._text(self._prefix, self._read)) + len(self._extra)
        self._prefix = self._read = len(self._ids)
        self._extra = ""
        return full[emitted:]

    @property
    def ids(self) -> list[int]:
        return list(self._ids)
