"""Tiny tokenizers (files, ids, flags), the SentencePiece converter, the runtime Tokenizer
and its StreamDecoder. Expectations are the released tokenizers' facts, sentencepiece itself
and an independent restatement of the reference's slow tokenizer — not our own output."""
from __future__ import annotations

import json
import shutil

import pytest
import tokenizers

from fusion_edge.export.spm_convert import parse_model_proto, tokenizer_from_spm
from fusion_edge.export.tiny_tokenizer import write_tiny_tokenizer
from fusion_edge.runtime.errors import CheckpointError, ConfigError
from fusion_edge.runtime.tokenizer import Tokenizer

try:
    from .conftest_tokenizers import (PROBE_STRINGS, llama3_dir, llama3_info, llama3_tok,  # noqa: F401
                                      phi3_dir, phi3_info, phi3_slow_ref, phi3_tok, tiny_tokenizers)
except ImportError:
    from conftest_tokenizers import (PROBE_STRINGS, llama3_dir, llama3_info, llama3_tok,  # noqa: F401
                                     phi3_dir, phi3_info, phi3_slow_ref, phi3_tok, tiny_tokenizers)

# Released facts: Phi-3.5-mini-instruct ids 32000..32010, Llama-3.1 ids 128000..128010.
PHI35_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
               "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
               "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
PHI35_RSTRIP = {"<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
                "<|placeholder6|>", "<|user|>"}
LLAMA31_ADDED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                 "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
VISION = ["<vision_start>", "<vision_end>"]


def _file_tok(folder) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


def _added(folder) -> dict[str, dict]:
    return {e["content"]: e for e in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("flavor, files", [
    ("phi3", {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}),
    ("llama3", {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}),
])
def test_files_written_small_and_loadable(tiny_tokenizers, flavor, files):
    folder, info = tiny_tokenizers[flavor]
    assert {p.name for p in folder.iterdir()} == files
    for p in folder.iterdir():
        assert p.stat().st_size < 200_000, p
    tok = _file_tok(folder)
    assert tok.get_vocab_size(with_added_tokens=True) == info["vocab_size"]
    base = tok.get_vocab_size(with_added_tokens=False)
    assert 400 <= base <= 1000
    for name, idx in info["special"].items():
        assert tok.token_to_id(name) == idx


def test_deterministic_bytes(tiny_tokenizers, tmp_path):
    for flavor, (folder, _) in tiny_tokenizers.items():
        again = tmp_path / flavor
        write_tiny_tokenizer(again, flavor)
        for p in folder.iterdir():
            assert (again / p.name).read_bytes() == p.read_bytes(), (flavor, p.name)


def test_unknown_flavor_raises(tmp_path):
    with pytest.raises(ConfigError, match="phi3"):
        write_tiny_tokenizer(tmp_path, "gpt2")


# ---------------------------------------------------------------------------- phi3 ids
def test_phi3_base_ids_and_byte_pieces(phi3_dir):
    tok = _file_tok(phi3_dir)
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [tok.id_to_token(3 + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]


def test_phi3_added_tokens_order_and_flags(phi3_dir, phi3_info):
    tok = _file_tok(phi3_dir)
    base = tok.get_vocab_size(with_added_tokens=False)
    # same offsets from the base vocab as 32000.. in Phi-3.5, then FUSION's two tokens
    assert [tok.token_to_id(t) for t in PHI35_ADDED + VISION] == list(range(base, base + 13))
    added = _added(phi3_dir)
    for t in PHI35_ADDED:
        assert added[t]["rstrip"] is (t in PHI35_RSTRIP) and added[t]["special"] is True
        assert added[t]["lstrip"] is False and added[t]["normalized"] is False
    for t in VISION:
        assert (added[t]["rstrip"], added[t]["lstrip"], added[t]["special"]) == (False, False, True)
    assert (added["</s>"]["rstrip"], added["</s>"]["special"]) == (True, False)
    cfg = json.loads((phi3_dir / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is False and cfg["add_eos_token"] is False
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"]) == ("<s>", "<|endoftext|>", "<unk>")
    decl = {e["content"]: int(i) for i, e in cfg["added_tokens_decoder"].items()}
    assert decl == {t: tok.token_to_id(t) for t in decl}
    assert phi3_info["eos_token_id"] == tok.token_to_id("<|endoftext|>")
    assert phi3_info["bos_token_id"] == 1


def test_phi3_released_pipeline_structure(phi3_dir):
    j = json.loads((phi3_dir / "tokenizer.json").read_text())
    assert j["normalizer"] == {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    assert j["pre_tokenizer"] is None
    assert [d["type"] for d in j["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    assert j["model"]["byte_fallback"] is True and j["model"]["unk_token"] == "<unk>"


def test_phi3_chat_tokens_strip_right_whitespace(phi3_dir):
    tok = _file_tok(phi3_dir)
    ids = tok.encode("<|end|>\n<|assistant|>\n", add_special_tokens=False).ids
    assert ids == [tok.token_to_id("<|end|>"), tok.token_to_id("<|assistant|>")]
    # all whitespace after <|user|> is gone: the rest encodes like the bare word
    ids = tok.encode("<|user|> \n  table", add_special_tokens=False).ids
    assert ids == [tok.token_to_id("<|user|>")] + tok.encode("table", add_special_tokens=False).ids
    assert tok.encode("table", add_special_tokens=False).tokens == ["▁table"]
    # the vision tokens strip nothing: the newline after <vision_end> stays
    toks = tok.encode("<vision_end>\nhi", add_special_tokens=False).tokens
    assert "<0x0A>" in toks


def test_phi3_no_bos_by_default(phi3_dir, phi3_tok):
    assert _file_tok(phi3_dir).encode("hello").ids[0] != 1
    assert phi3_tok.encode("hello")[0] != 1 and not phi3_tok.adds_bos
    assert phi3_tok.bos_token_id == 1


# ---------------------------------------------------------------------------- llama3 ids
def test_llama3_byte_alphabet_first_and_id0_is_bang(llama3_dir):
    tok = _file_tok(llama3_dir)
    assert tok.id_to_token(0) == "!"
    # GPT-2 byte alphabet order: printable ASCII '!'..'~', then '¡'..'¬', '®'..'ÿ', then
    # the 68 remapped bytes as U+0100.. ('Ā' is byte 0x00, 'Ġ' is the space).
    printable = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0xA1, 0xAD)] + \
                [chr(c) for c in range(0xAE, 0x100)]
    expected = printable + [chr(0x100 + n) for n in range(256 - len(printable))]
    assert [tok.id_to_token(i) for i in range(256)] == expected
    assert tok.id_to_token(188 + 32) == "Ġ"


def test_llama3_added_tokens_order(llama3_dir, llama3_info):
    tok = _file_tok(llama3_dir)
    base = tok.get_vocab_size(with_added_tokens=False)
    first = tok.token_to_id("<|begin_of_text|>")
    assert first == base
    assert [tok.token_to_id(t) - first for t in LLAMA31_ADDED] == list(range(11))
    last_reserved = max(i for t, i in llama3_info["special"].items() if t not in VISION)
    assert [tok.token_to_id(t) for t in VISION] == [last_reserved + 1, last_reserved + 2]
    for entry in _added(llama3_dir).values():
        assert (entry["special"], entry["rstrip"], entry["lstrip"]) == (True, False, False)
    eos = llama3_info["eos_token_id"]
    assert isinstance(eos, list)
    assert {tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")} <= set(eos)


def test_llama3_bos_and_pipeline(llama3_dir, llama3_tok):
    tok = _file_tok(llama3_dir)
    bos = tok.token_to_id("<|begin_of_text|>")
    assert tok.encode("hello").ids[0] == bos
    assert tok.encode("hello", add_special_tokens=False).ids[0] != bos
    assert llama3_tok.encode("hello")[0] == bos and llama3_tok.adds_bos
    j = json.loads((llama3_dir / "tokenizer.json").read_text())
    pre = j["pre_tokenizer"]["pretokenizers"]
    assert pre[0]["type"] == "Split" and pre[0]["behavior"] == "Isolated"
    assert pre[1] == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": False}
    assert j["decoder"]["type"] == "ByteLevel" and j["normalizer"] is None
    # "!" is id 0
    assert tok.encode("Stop!", add_special_tokens=False).ids[-1] == 0


@pytest.mark.parametrize("text", [s for s in PROBE_STRINGS if s])
def test_llama3_byte_level_roundtrip(llama3_tok, text):
    ids = llama3_tok.encode(text, add_special_tokens=False)
    assert llama3_tok.decode(ids, skip_special_tokens=False).replace(" ", "") == text.replace(" ", "")


# ---------------------------------------------------------------------------- SPM conversion
def test_parse_model_proto_matches_sentencepiece(phi3_dir):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(phi3_dir / "tokenizer.model"))
    model = parse_model_proto(sp.serialized_model_proto())
    assert len(model.pieces) == sp.get_piece_size()
    for i, (piece, score, ptype) in enumerate(model.pieces):
        assert piece == sp.id_to_piece(i)
        assert score == pytest.approx(sp.get_score(i))
        assert (ptype == 3) == sp.is_control(i) and (ptype == 6) == sp.is_byte(i)
        assert (ptype == 2) == sp.is_unknown(i)
    assert model.model_type == 2 and model.byte_fallback and model.add_dummy_prefix
    assert model.unk_piece == "<unk>" and not model.remove_extra_whitespaces


def test_spm_conversion_parity_with_tokenizer_json(phi3_dir):
    converted = tokenizer_from_spm(phi3_dir, legacy=True)
    shipped = _file_tok(phi3_dir)
    assert converted.get_vocab_size(True) == shipped.get_vocab_size(True)
    for text in PROBE_STRINGS:
        for special in (False, True):
            assert converted.encode(text, add_special_tokens=special).ids == \
                shipped.encode(text, add_special_tokens=special).ids, repr(text)


def test_converted_bpe_equals_sentencepiece(phi3_dir):
    """Independent check of the merges: plain text encodes as sentencepiece itself does."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(phi3_dir / "tokenizer.model"))
    converted = tokenizer_from_spm(phi3_dir, legacy=True)
    from fusion_edge.export.tiny_tokenizer import tiny_corpus
    plain = [s for s in PROBE_STRINGS if "<" not in s] + tiny_corpus()
    for text in plain:
        assert converted.encode(text, add_special_tokens=False).ids == sp.encode(text), repr(text)


def test_conversion_follows_config_legacy_flag(phi3_dir):
    state = json.loads(tokenizer_from_spm(phi3_dir).to_str())    # config says legacy=false
    assert state["normalizer"] is None
    assert state["pre_tokenizer"] == {"type": "Metaspace", "replacement": "▁",
                                      "prepend_scheme": "first", "split": False}


def test_conversion_errors(tmp_path, phi3_dir):
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        tokenizer_from_spm(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        tokenizer_from_spm(tmp_path)


# ---------------------------------------------------------------------------- runtime Tokenizer
def test_phi3_runtime_matches_slow_reference(phi3_tok, phi3_slow_ref):
    assert phi3_tok.slow_compatible
    from fusion_edge.export.tiny_tokenizer import tiny_corpus
    for text in list(PROBE_STRINGS) + tiny_corpus()[:60]:
        assert phi3_tok.encode(text) == phi3_slow_ref.encode(text), repr(text)


def test_phi3_slow_rules_explicit(phi3_tok):
    """The reference's slow tokenizer keeps a lone "▁" before a leading chat / vision token,
    drops it before <s>, and puts no "▁" on text right after an added token."""
    sp_id = phi3_tok.token_to_id("▁")
    ids = phi3_tok.encode("<|system|>\nYou")
    assert ids[:2] == [sp_id, phi3_tok.token_to_id("<|system|>")]
    assert phi3_tok.id_to_token(ids[2])[0] != "▁"
    assert phi3_tok.encode("<vision_end><vision_start>") == [
        sp_id, phi3_tok.token_to_id("<vision_end>"), phi3_tok.token_to_id("<vision_start>")]
    assert phi3_tok.encode("<s>hi")[0] == 1
    # plain text gets the one leading "▁" as sentencepiece's dummy prefix would
    assert phi3_tok.id_to_token(phi3_tok.encode("What")[0]).startswith("▁")


def test_from_tokenizer_of_converted_model_equals_from_dir(phi3_dir, phi3_tok):
    config = json.loads((phi3_dir / "tokenizer_config.json").read_text())
    for legacy in (None, True):
        tok = Tokenizer.from_tokenizer(tokenizer_from_spm(phi3_dir, legacy=legacy), config)
        for text in PROBE_STRINGS:
            assert tok.encode(text) == phi3_tok.encode(text), (legacy, text)


def test_legacy_config_uses_file_pipeline(phi3_dir):
    config = json.loads((phi3_dir / "tokenizer_config.json").read_text())
    config["legacy"] = True
    tok = Tokenizer.from_tokenizer(_file_tok(phi3_dir), config)
    assert not tok.slow_compatible
    for text in PROBE_STRINGS:
        assert tok.encode(text) == _file_tok(phi3_dir).encode(text).ids


def test_special_ids_and_sizes(phi3_tok, phi3_info, llama3_tok, llama3_info):
    assert phi3_tok.vocab_size == phi3_info["vocab_size"]
    assert phi3_tok.eos_token_ids == (phi3_info["special"]["<|endoftext|>"],)
    assert phi3_tok.token_to_id("<|user|>") == phi3_info["special"]["<|user|>"]
    assert phi3_tok.token_to_id("no-such-token") is None
    assert llama3_tok.vocab_size == llama3_info["vocab_size"]
    assert llama3_tok.bos_token_id == llama3_info["special"]["<|begin_of_text|>"]
    assert llama3_tok.eos_token_ids == (llama3_info["special"]["<|eot_id|>"],)
    assert llama3_tok.pad_token_id is None


def test_generation_config_eos_and_save_roundtrip(llama3_dir, llama3_info, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(llama3_dir, src)
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": llama3_info["eos_token_id"]}))
    tok = Tokenizer.from_dir(src)
    eot = llama3_info["special"]["<|eot_id|>"]
    assert tok.eos_token_ids[0] == eot and set(tok.eos_token_ids) == {eot, *llama3_info["eos_token_id"]}
    bundle = tmp_path / "bundle"
    tok.save(bundle)
    assert {p.name for p in bundle.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json"}
    again = Tokenizer.from_dir(bundle)
    assert again.eos_token_ids == tok.eos_token_ids
    for text in PROBE_STRINGS:
        assert again.encode(text) == tok.encode(text)


def test_phi3_save_roundtrip_keeps_slow_rules(phi3_tok, tmp_path):
    phi3_tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    assert again.slow_compatible
    for text in PROBE_STRINGS:
        assert again.encode(text) == phi3_tok.encode(text)


def test_missing_tokenizer_json_names_file_and_fix(tmp_path, phi3_dir):
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_dir(tmp_path)
    assert "tokenizer.json" in str(e.value) and "fix:" in str(e.value)
    shutil.copy(phi3_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        Tokenizer.from_dir(tmp_path)


def test_decode_skips_special_tokens(phi3_tok, llama3_tok):
    ids = phi3_tok.encode("<|user|>\nWhat is on the table?<|end|>")
    assert phi3_tok.decode(ids) == "What is on the table?"
    assert "<|user|>" in phi3_tok.decode(ids, skip_special_tokens=False)
    ids = llama3_tok.encode("What is on the table?<|eot_id|>")
    assert llama3_tok.decode(ids) == "What is on the table?"


def test_llama3_decode_cleans_up_spaces_like_transformers(llama3_tok, phi3_tok):
    # Llama-3.1 sets clean_up_tokenization_spaces=true, Phi-3.5 false
    ids = llama3_tok.encode("Hello , world . I 'm here !", add_special_tokens=False)
    assert llama3_tok.decode(ids) == "Hello, world. I'm here!"
    ids = phi3_tok.encode("Hello , world .", add_special_tokens=False)
    assert phi3_tok.decode(ids) == "Hello , world ."


# ---------------------------------------------------------------------------- streaming
STREAM_TEXTS = ("Héllo wörld — 🤖🦾 ok 中文字 done.", "The cup is on the table. 3.5 m away!",
                "  two spaces\n\nnew paragraph\tand tab", "emoji at end 🤖",
                "Hello , world . I 'm here !", "x")


@pytest.mark.parametrize("flavor", ["phi3", "llama3"])
@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_decoder_reproduces_decode(request, flavor, text):
    tok = request.getfixturevalue(f"{flavor}_tok")
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("flavor", ["phi3", "llama3"])
def test_stream_decoder_after_a_skipped_special_token(request, flavor):
    """A skipped special token (e.g. <unk> sampled by a model) between two words: the word after
    it keeps its space, as in a full decode (seen in the demo: "4ksutcameras" vs "4ksut cameras")."""
    tok = request.getfixturevalue(f"{flavor}_tok")
    special = sorted(tok._special_ids)[0]
    for left, right in (("The cup", " is on the table"), ("4ksut", " cameras step")):
        ids = tok.encode(left, add_special_tokens=False) + [special, special] \
            + tok.encode(right, add_special_tokens=False)
        stream = tok.stream_decoder()
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_stream_decoder_holds_incomplete_utf8(phi3_tok):
    emoji = "🤖"
    ids = phi3_tok.encode(emoji, add_special_tokens=False)
    byte_ids = [i for i in ids if phi3_tok.id_to_token(i).startswith("<0x")]
    assert len(byte_ids) == 4                          # byte fallback: F0 9F A4 96
    stream = phi3_tok.stream_decoder()
    out = [stream.push(i) for i in ids]
    assert out[-4:-1] == ["", "", ""] and out[-1].endswith(emoji)
    assert stream.flush() == ""


def test_stream_flush_emits_incomplete_tail(llama3_tok):
    ids = llama3_tok.encode("🤖", add_special_tokens=False)
    stream = llama3_tok.stream_decoder()
    assert len(ids) > 1 and stream.push(ids[0]) == ""   # first byte of a 4-byte character
    assert "\ufffd" in stream.flush()
