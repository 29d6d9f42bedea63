"""Real, tiny tokenizers for test checkpoints, in the released on-disk file set.

`write_tiny_tokenizer(out_dir, "phi3" | "llama3")` trains a small vocabulary on a built-in
English corpus (camera / robotics / household questions and answers) and writes the files
a released checkpoint ships, with the same structure, special tokens (in the same relative
order) and flags as the released Phi-3.5-mini-instruct / Llama-3.1-Instruct tokenizers, plus
FUSION's `<vision_start>` / `<vision_end>`:

* phi3:   `tokenizer.model` (SentencePiece BPE with byte fallback, trained here),
          `tokenizer.json` (converted from that .model, Llama-2-style "legacy" pipeline as
          released), `tokenizer_config.json`, `special_tokens_map.json`.
* llama3: `tokenizer.json` (byte-level BPE, LLaMA-3 split regex, `<|begin_of_text|>` added
          by the post-processor), `tokenizer_config.json`, `special_tokens_map.json`.

Nothing is downloaded and the output is byte-for-byte deterministic. Needs `tokenizers`
and, for phi3, `sentencepiece` (export side only; the runtime never imports this module).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from fusion_edge.runtime.errors import ConfigError, MissingExtraError

FLAVORS = ("phi3", "llama3")

# Sizes of the trained base vocabularies (before added tokens). Small, so files stay small.
PHI3_SPM_VOCAB = 800        # incl. <unk> <s> </s> and the 256 byte pieces
LLAMA3_BPE_VOCAB = 700      # incl. the 256 byte-level alphabet symbols

VISION_TOKENS = ("<vision_start>", "<vision_end>")

# Phi-3.5-mini-instruct added tokens, in the released id order 32000..32010, with flags
# (rstrip, special). The chat tokens and placeholders strip whitespace to their right.
PHI3_ADDED = (
    ("<|endoftext|>", False, True),
    ("<|assistant|>", True, True),
    ("<|placeholder1|>", True, True),
    ("<|placeholder2|>", True, True),
    ("<|placeholder3|>", True, True),
    ("<|placeholder4|>", True, True),
    ("<|system|>", True, True),
    ("<|end|>", True, True),
    ("<|placeholder5|>", True, True),
    ("<|placeholder6|>", True, True),
    ("<|user|>", True, True),
)
# ids 0..2 of the SentencePiece model as Phi-3.5 declares them: (piece, rstrip, special).
# `</s>` is declared rstrip=True, special=False in the released tokenizer_config.json.
PHI3_BASE_SPECIAL = (("<unk>", False, True), ("<s>", False, True), ("</s>", True, False))

# Llama-3.1 special tokens in released relative order (128000, 128001, ...), with fewer
# reserved ones. All special, no stripping.
LLAMA3_ADDED = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|reserved_special_token_3|>",
    "<|reserved_special_token_4|>",
    "<|reserved_special_token_5|>",
)
# The LLaMA-3 (tiktoken cl100k-style) pre-tokenizer split pattern.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODEL_MAX_LENGTH = 131072   # both released tokenizers declare 128k


# ------------------------------------------------------------------------------------
# Corpus: deterministic, a few hundred lines.
_OBJECTS = ("cup", "mug", "bottle", "plate", "bowl", "chair", "table", "door", "window",
            "lamp", "robot", "camera", "box", "shoe", "phone", "laptop", "book", "plant",
            "cat", "dog", "towel", "sink", "fridge", "oven", "drawer", "shelf", "sofa",
            "remote", "key", "bag")
_COLORS = ("red", "blue", "green", "white", "black", "yellow", "gray", "brown", "orange")
_PLACES = ("kitchen", "living room", "hallway", "bedroom", "garage", "office", "bathroom",
           "garden", "workshop", "dining room")
_RELATIONS = ("on the table", "next to the sink", "under the chair", "near the door",
              "in front of the camera", "behind the sofa", "on the left shelf",
              "inside the drawer", "beside the window", "on the floor")
_ACTIONS = ("pick up", "move", "open", "close", "clean", "find", "carry", "push", "grasp",
            "avoid")
_QUESTIONS = (
    "What is on the {rel}?",
    "Is there a {color} {obj} in the {place}?",
    "Where is the {obj}?",
    "How many {obj}s can you see in this image?",
    "Can the robot {act} the {obj} {rel}?",
    "What color is the {obj} {rel}?",
    "Describe the {place} in one sentence.",
    "Is the {obj} closer to the camera than the {obj2}?",
    "Which object should the robot {act} first?",
    "Is it safe for the robot to drive through the {place}?",
)
_ANSWERS = (
    "The {color} {obj} is {rel}.",
    "Yes, there is a {color} {obj} in the {place}.",
    "No, I cannot see a {obj} in this picture.",
    "I can see {n} {obj}s; the nearest one is {rel}.",
    "The robot should {act} the {obj} slowly, using both grippers.",
    "The {place} has a {color} {obj2} and a {obj} {rel}.",
    "It is about {n} meters away from the camera.",
    "The path is clear, but the {obj} {rel} may block the arm.",
)
_EXTRA = (
    "You are a helpful AI assistant.",
    "You are a helpful, highly intelligent language and vision assistant.",
    "system", "user", "assistant", "image", "question", "answer",
    "The camera captured 30 frames per second at 1280x720 pixels.",
    "Battery: 87%, temperature 21.5 C, speed 0.4 m/s.",
    "Look at the image and answer the question briefly.",
    "Please describe what you see, step by step:",
    "1. Detect objects. 2. Estimate depth. 3. Plan a path!",
    "Warning: the floor is wet; slow down near the sink.",
    "\"Stop\" means the robot must halt within 0.5 seconds.",
    "def grasp(obj): return arm.move_to(obj.pose)  # robot API",
)


# Chat-shaped samples with blank lines, for the byte-level vocabulary only (SentencePiece
# trains on single lines; Phi-3's newline is the byte piece <0x0A> anyway).
_MULTILINE = (
    "system\n\nYou are a helpful assistant.",
    "user\n\nWhat is on the table?",
    "assistant\n\nA red cup and a blue plate.\n\nThe cup is on the left.",
    "user\n\nList the objects:\n- cup\n- plate\n- robot",
)


def tiny_corpus(multiline: bool = False) -> list[str]:
    """The built-in training corpus: ~450 deterministic lines of Q&A text."""
    lines: list[str] = list(_EXTRA) + (list(_MULTILINE) * 3 if multiline else [])
    n_obj, n_col, n_pl, n_rel, n_act = (len(_OBJECTS), len(_COLORS), len(_PLACES),
                                        len(_RELATIONS), len(_ACTIONS))
    for i in range(220):   # strides co-prime with the list lengths mix the fields
        fields = dict(obj=_OBJECTS[i % n_obj], obj2=_OBJECTS[(7 * i + 3) % n_obj],
                      color=_COLORS[(3 * i + 1) % n_col], place=_PLACES[(i // 3) % n_pl],
                      rel=_RELATIONS[(5 * i + 2) % n_rel], act=_ACTIONS[(i // 2) % n_act],
                      n=str(2 + i % 9))
        lines.append(_QUESTIONS[i % len(_QUESTIONS)].format(**fields))
        lines.append(_ANSWERS[(i * 3) % len(_ANSWERS)].format(**fields))
    return lines


# ------------------------------------------------------------------------------------
def write_tiny_tokenizer(out_dir: Path, flavor: str) -> dict:
    """Write a tiny `flavor` tokenizer into `out_dir` (created if needed).

    Returns {"vocab_size": len incl. added tokens, "bos_token_id", "eos_token_id" (int for
    phi3, list for llama3 like Llama-3.1's generation config), "pad_token_id" (or None),
    "special": {token string: id}}.
    """
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown tiny tokenizer flavor '{flavor}'.",
                          f"use one of: {', '.join(FLAVORS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_phi3(out_dir) if flavor == "phi3" else _write_llama3(out_dir)


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise MissingExtraError("tokenizers", "export", "Building a tiny tokenizer") from None
    return tokenizers


def _dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_entry(content: str, *, rstrip=False, lstrip=False, special=True) -> dict:
    # The AddedToken record as tokenizer_config.json's added_tokens_decoder stores it.
    return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": rstrip,
            "single_word": False, "special": special}


def _token_map_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


# ------------------------------------------------------------------------------------
# phi3
def _train_spm(lines: list[str], vocab_size: int) -> bytes:
    """Train a Llama-2 / Phi-3 style SentencePiece BPE model in memory; returns its bytes."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise MissingExtraError("sentencepiece", "export", "Building the tiny phi3 tokenizer") from None
    buf = io.BytesIO()
    # Trained from an iterator into memory so no temp path leaks into trainer_spec.input.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
        vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def _phi3_config(added_decoder: dict) -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added_decoder,
        "bos_token": "<s>",
        # Same behaviour as the released template: system/user/assistant turns each
        # closed by <|end|>, generation prompt <|assistant|>.
        "chat_template": (
            "{% for m in messages %}"
            "{% if m['role'] == 'system' and m['content'] %}{{'<|system|>\n' + m['content'] + '<|end|>\n'}}"
            "{% elif m['role'] == 'user' %}{{'<|user|>\n' + m['content'] + '<|end|>\n'}}"
            "{% elif m['role'] == 'assistant' %}{{'<|assistant|>\n' + m['content'] + '<|end|>\n'}}"
            "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{'<|assistant|>\n'}}{% else %}{{eos_token}}{% endif %}"),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def _write_phi3(out_dir: Path) -> dict:
    from .spm_convert import tokenizer_from_spm

    model_bytes = _train_spm(tiny_corpus(), PHI3_SPM_VOCAB)
    (out_dir / "tokenizer.model").write_bytes(model_bytes)
    import sentencepiece as spm
    base = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()

    # added_tokens_decoder: ids 0..2 from the .model, then the Phi-3.5 tokens, then FUSION's.
    decoder: dict[str, dict] = {}
    for i, (piece, rstrip, special) in enumerate(PHI3_BASE_SPECIAL):
        decoder[str(i)] = _added_entry(piece, rstrip=rstrip, special=special)
    for j, (content, rstrip, special) in enumerate(PHI3_ADDED):
        decoder[str(base + j)] = _added_entry(content, rstrip=rstrip, special=special)
    for j, content in enumerate(VISION_TOKENS):
        decoder[str(base + len(PHI3_ADDED) + j)] = _added_entry(content)
    config = _phi3_config(decoder)
    _dump_json(out_dir / "tokenizer_config.json", config)
    _dump_json(out_dir / "special_tokens_map.json", {
        "bos_token": _token_map_entry("<s>"), "eos_token": _token_map_entry("<|endoftext|>"),
        "pad_token": _token_map_entry("<|endoftext|>"), "unk_token": _token_map_entry("<unk>")})

    # tokenizer.json: the released Phi-3.5 file is the Llama-2-style ("legacy") conversion
    # even though its tokenizer_config says legacy=false, so convert with legacy=True here.
    tok = tokenizer_from_spm(out_dir, legacy=True)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")

    special_ids = {e["content"]: int(i) for i, e in decoder.items()}
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "bos_token_id": special_ids["<s>"], "eos_token_id": special_ids["<|endoftext|>"],
            "pad_token_id": special_ids["<|endoftext|>"], "special": special_ids}


# ------------------------------------------------------------------------------------
# llama3
def _llama3_pipeline(tok) -> None:
    """Attach LLaMA-3's pre-tokenizer / decoder to `tok` (normalizer: none)."""
    from tokenizers import Regex, decoders, pre_tokenizers
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    # tokenizers' stub declares ByteLevel() without arguments; the class takes (and serializes) these
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)  # type: ignore[call-arg]


def _bytes_to_unicode_order() -> list[str]:
    """GPT-2's byte→symbol table, in its order: printable bytes first, then the rest."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_llama3(out_dir: Path) -> dict:
    _tokenizers()
    from tokenizers import AddedToken, Tokenizer, models, processors, trainers

    # 1. Train byte-level merges with the real LLaMA-3 pre-tokenization.
    trainer_tok = Tokenizer(models.BPE())
    _llama3_pipeline(trainer_tok)
    alphabet = _bytes_to_unicode_order()
    trainer = trainers.BpeTrainer(vocab_size=LLAMA3_BPE_VOCAB, min_frequency=2,
                                  show_progress=False, initial_alphabet=alphabet,
                                  special_tokens=[])
    trainer_tok.train_from_iterator(tiny_corpus(multiline=True), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    merges: list[tuple[str, str]] = []
    for m in trained["merges"]:            # "a b" (older tokenizers) or ["a", "b"]
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((a, b))

    # 2. Re-lay the vocab like LLaMA-3: ids 0..255 the byte alphabet in bytes_to_unicode
    #    order (id 0 == "!"), then one token per merge, in merge order.
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               fuse_unk=False, byte_fallback=False, ignore_merges=True))
    _llama3_pipeline(tok)

    # 3. Added tokens after the base vocab, then FUSION's vision tokens.
    tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False,
                               normalized=False, special=True)
                    for t in LLAMA3_ADDED + VISION_TOKENS])
    bos = "<|begin_of_text|>"
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)]),
    ])
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")

    special = {t: tok.token_to_id(t) for t in LLAMA3_ADDED + VISION_TOKENS}
    decoder = {str(i): _added_entry(t) for t, i in special.items()}
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": bos,
        "chat_template": (
            "{{ bos_token }}{% for m in messages %}"
            "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
            "{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _dump_json(out_dir / "tokenizer_config.json", config)
    _dump_json(out_dir / "special_tokens_map.json", {
        "bos_token": _token_map_entry(bos), "eos_token": _token_map_entry("<|eot_id|>")})
    # Llama-3.1's generation config stops on <|end_of_text|>, <|eom_id|>, <|eot_id|>.
    eos = [special["<|end_of_text|>"], special["<|eom_id|>"], special["<|eot_id|>"]]
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "bos_token_id": bos_id,
            "eos_token_id": eos, "pad_token_id": None, "special": special}
