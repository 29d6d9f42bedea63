"""Shared tokenizer fixtures: the tiny phi3 / llama3 tokenizers, built once per session.

Import the fixtures into a test module (`from conftest_tokenizers import ...`). Also holds
`SlowLlamaReference`, an independent re-statement of transformers' slow LlamaTokenizer
(legacy=False) on top of sentencepiece itself, used as the expectation for Phi-3 encoding.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fusion_edge.export.tiny_tokenizer import write_tiny_tokenizer
from fusion_edge.runtime.tokenizer import Tokenizer

# Strings every encoder is checked on: prompt pieces, unicode, emoji (byte fallback),
# leading / trailing spaces, newlines, tabs, digits, special-token text.
PROBE_STRINGS = (
    "What is on the table?",
    "How many cups can you see in this image?",
    " leading space", "  two leading spaces", "trailing space ", "trailing two  ",
    "new\nline", "\nstarts with newline", "ends with newline\n", "blank\n\nline", "tab\tin",
    "Héllo wörld — naïve café", "emoji 🤖🦾 done", "中文字 mixed", "ÿ þ ß",
    "digits 1234567890 and 3.14", "quotes \"x\" and 'y' (z)", "a  b   c    d",
    "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<vision_start>",
    "<vision_end><vision_start>",
    "<vision_end>\nWhat is on the table?<|end|>\n<|assistant|>\n",
    "<|user|>   spaced after a chat token", "x <|end|>  y", "<s>text</s>  after eos",
    "<unk> unknown", "▁already▁metaspace", "",
)


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """flavor → (folder, write_tiny_tokenizer's info dict), built once."""
    root = tmp_path_factory.mktemp("tiny_tokenizers")
    return {flavor: (root / flavor, write_tiny_tokenizer(root / flavor, flavor))
            for flavor in ("phi3", "llama3")}


@pytest.fixture(scope="session")
def phi3_dir(tiny_tokenizers) -> Path:
    return tiny_tokenizers["phi3"][0]


@pytest.fixture(scope="session")
def phi3_info(tiny_tokenizers) -> dict:
    return tiny_tokenizers["phi3"][1]


@pytest.fixture(scope="session")
def llama3_dir(tiny_tokenizers) -> Path:
    return tiny_tokenizers["llama3"][0]


@pytest.fixture(scope="session")
def llama3_info(tiny_tokenizers) -> dict:
    return tiny_tokenizers["llama3"][1]


@pytest.fixture(scope="session")
def phi3_tok(phi3_dir) -> Tokenizer:
    return Tokenizer.from_dir(phi3_dir)


@pytest.fixture(scope="session")
def llama3_tok(llama3_dir) -> Tokenizer:
    return Tokenizer.from_dir(llama3_dir)


@pytest.fixture(scope="session")
def phi3_slow_ref(phi3_dir) -> "SlowLlamaReference":
    return SlowLlamaReference(phi3_dir)


class SlowLlamaReference:
    """transformers' slow LlamaTokenizer with legacy=False, restated on sentencepiece.

    * the .model is loaded with add_dummy_prefix switched off;
    * "▁" + text (after mapping "▁" to " ") is split at added tokens (longest match first),
      and rstrip / lstrip tokens eat the whitespace beside them;
    * a segment starting with "▁"/" " is encoded as `unk + segment` minus the unk pieces,
      others plainly;
    * a leading lone "▁" is dropped only before bos / eos / unk / pad;
    * BOS per add_bos_token.
    """

    def __init__(self, folder: Path):
        spm = pytest.importorskip("sentencepiece")
        pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
        cfg = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        proto = pb.ModelProto()
        proto.ParseFromString((Path(folder) / "tokenizer.model").read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.added = {e["content"]: (int(i), e) for i, e in cfg["added_tokens_decoder"].items()}
        self.named = {cfg.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        self.unk = cfg["unk_token"]
        self.unk_len = len(self.sp.encode(self.unk))
        self.bos = cfg["bos_token"] if cfg.get("add_bos_token", True) else None
        longest_first = sorted(self.added, key=len, reverse=True)
        self.split_rx = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")

    def _segment(self, seg: str) -> list[str]:
        if not seg.startswith(("▁", " ")):
            return self.sp.encode(seg, out_type=str)
        return self.sp.encode(self.unk + seg, out_type=str)[self.unk_len:]

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        parts = self.split_rx.split("▁" + text.replace("▁", " "))
        for i, part in enumerate(parts):
            if part in self.added:
                flags = self.added[part][1]
                if flags["rstrip"] and i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
                if flags["lstrip"] and i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
        tokens: list[str] = []
        for part in parts:
            if part:
                tokens += [part] if part in self.added else self._segment(part)
        if len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in self.named:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str) -> list[int]:
        ids = [self.added[t][0] if t in self.added else self.sp.piece_to_id(t)
               for t in self.tokenize(text)]
        return ([self.added[self.bos][0]] if self.bos else []) + ids
