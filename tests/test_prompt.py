"""Prompt layout (docs/fusion.md §3) for both templates, against expectations built by hand:
the rendered text typed out, and chunk ids from independent encoders (the slow-tokenizer
restatement for Phi-3, the tokenizer.json file itself for LLaMA-3)."""
from __future__ import annotations

import numpy as np
import pytest
import tokenizers

from fusion_edge.runtime.errors import PromptError
from fusion_edge.runtime.prompt import (IMAGE_SLOT, LATENT_SLOT, TEMPLATES, build_prompt,
                                        render_prompt, stop_token_ids)

try:
    from .conftest_tokenizers import (llama3_dir, llama3_info, llama3_tok, phi3_dir,  # noqa: F401
                                      phi3_info, phi3_slow_ref, phi3_tok, tiny_tokenizers)
except ImportError:
    from conftest_tokenizers import (llama3_dir, llama3_info, llama3_tok, phi3_dir,  # noqa: F401
                                     phi3_info, phi3_slow_ref, phi3_tok, tiny_tokenizers)

N, Q = 9, 4          # image tokens, latents (small so the arrays stay readable)
QUESTION = "What is on the table?"
PHI_TEXT = ("<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n"
            "<vision_start><latent_image><vision_end><vision_start><image><vision_end>\n"
            "What is on the table?<|end|>\n<|assistant|>\n")
LLAMA_SYSTEM = ("You are a helpful, highly intelligent language and vision assistant. You are "
                "able to understand the visual content that the user provides, and assist the "
                "user with a variety of tasks using natural language. Whenever an image is "
                "present in the conversation, very carefully examine it and consider its "
                "content when formulating your response.")
LLAMA_TEXT = ("<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA_SYSTEM + "<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n"
              "<vision_start><latent_image><vision_end><vision_start><image><vision_end>\n"
              "What is on the table?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def _llama_file(folder) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


def _expected(chunks: list[list[int]], n: int, q: int, bos: int | None) -> list[int]:
    """chunk0 [N image] chunk1 [q latents] chunk2, later chunks without their BOS."""
    a, b, c = chunks
    if bos is not None:
        assert a[0] == bos and b[0] == bos and c[0] == bos
        b, c = b[1:], c[1:]
    return a + [IMAGE_SLOT] * n + b + [LATENT_SLOT] * q + c


# ---------------------------------------------------------------------------- rendering
def test_rendered_text_exact():
    assert render_prompt("phi_3", QUESTION) == PHI_TEXT
    assert render_prompt("llama_3", QUESTION) == LLAMA_TEXT
    assert set(TEMPLATES) == {"phi_3", "llama_3"}


def test_question_used_verbatim_but_instruct_stripped(llama3_tok, llama3_dir):
    q = "  What is on the table?  "
    layout = build_prompt(llama3_tok, "llama_3", q, N, Q)
    assert "<vision_end>\n  What is on the table?  <|eot_id|>" in layout.text
    ref = _llama_file(llama3_dir)
    assert layout.instruct_ids.tolist() == ref.encode("What is on the table?").ids


# ---------------------------------------------------------------------------- phi_3 layout
def test_phi3_layout(phi3_tok, phi3_slow_ref):
    layout = build_prompt(phi3_tok, "phi_3", QUESTION, N, Q)
    assert layout.text == PHI_TEXT
    chunks = [phi3_slow_ref.encode(c) for c in (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<vision_start>",
        "<vision_end><vision_start>",
        "<vision_end>\nWhat is on the table?<|end|>\n<|assistant|>\n")]
    expected = _expected(chunks, N, Q, bos=None)
    assert layout.input_ids.dtype == np.int64
    assert layout.input_ids.tolist() == expected
    assert layout.image_start == len(chunks[0])
    assert layout.latent_start == len(chunks[0]) + N + len(chunks[1])
    assert layout.seq_len == len(expected) and layout.instruct_pos == len(expected) - 1
    ids = layout.input_ids
    assert (ids == IMAGE_SLOT).sum() == N and (ids == LATENT_SLOT).sum() == Q
    assert ids[layout.image_start - 1] == phi3_tok.token_to_id("<vision_start>")
    assert np.all(ids[layout.image_start:layout.image_start + N] == IMAGE_SLOT)
    assert np.all(ids[layout.latent_start:layout.latent_start + Q] == LATENT_SLOT)
    assert layout.vision_positions.tolist() == list(range(layout.latent_start, layout.latent_start + Q))
    # Phi-3 chat tokens strip the "\n" after them: the prompt ends with <|assistant|>
    assert ids[-1] == phi3_tok.token_to_id("<|assistant|>")
    assert ids[-2] == phi3_tok.token_to_id("<|end|>")


def test_phi3_slow_tokenizer_quirks_in_layout(phi3_tok):
    """Reference (slow, legacy=false) behaviour: a "▁" token leads each chunk that starts
    with an added token other than bos/eos/unk/pad, so one precedes <|system|> and one each
    <vision_end>; no BOS."""
    layout = build_prompt(phi3_tok, "phi_3", QUESTION, N, Q)
    ids = layout.input_ids.tolist()
    sp = phi3_tok.token_to_id("▁")
    assert ids[:2] == [sp, phi3_tok.token_to_id("<|system|>")]
    after_image = layout.image_start + N
    assert ids[after_image:after_image + 3] == [sp, phi3_tok.token_to_id("<vision_end>"),
                                                phi3_tok.token_to_id("<vision_start>")]
    after_latent = layout.latent_start + Q
    assert ids[after_latent:after_latent + 3] == [sp, phi3_tok.token_to_id("<vision_end>"),
                                                  phi3_tok.token_to_id("<0x0A>")]
    assert phi3_tok.bos_token_id not in ids


def test_phi3_instruct_ids_no_bos(phi3_tok, phi3_slow_ref):
    layout = build_prompt(phi3_tok, "phi_3", QUESTION, N, Q)
    assert layout.instruct_ids.dtype == np.int64
    assert layout.instruct_ids.tolist() == phi3_slow_ref.encode("What is on the table?")
    assert layout.instruct_ids[0] != phi3_tok.bos_token_id
    assert phi3_tok.id_to_token(int(layout.instruct_ids[0])) == "▁What"


# ---------------------------------------------------------------------------- llama_3 layout
def test_llama3_layout(llama3_tok, llama3_dir):
    layout = build_prompt(llama3_tok, "llama_3", QUESTION, N, Q)
    assert layout.text == LLAMA_TEXT
    ref = _llama_file(llama3_dir)
    bos = ref.token_to_id("<|begin_of_text|>")
    chunks = [ref.encode(c).ids for c in (
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<vision_start>",
        "<vision_end><vision_start>",
        "<vision_end>\nWhat is on the table?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")]
    expected = _expected(chunks, N, Q, bos=bos)
    assert layout.input_ids.tolist() == expected
    assert expected.count(bos) == 1 and expected[0] == bos
    assert layout.image_start == len(chunks[0])
    assert layout.latent_start == len(chunks[0]) + N + len(chunks[1]) - 1
    assert layout.instruct_pos == layout.seq_len - 1 == len(expected) - 1
    ids = layout.input_ids.tolist()
    assert ids[layout.image_start - 1] == ref.token_to_id("<vision_start>")
    assert ids[layout.image_start + N] == ref.token_to_id("<vision_end>")
    assert ids[layout.latent_start + Q] == ref.token_to_id("<vision_end>")
    assert layout.vision_positions.dtype == np.int64
    assert layout.image_positions.tolist() == list(range(layout.image_start, layout.image_start + N))


def test_llama3_instruct_ids_with_bos(llama3_tok, llama3_dir):
    layout = build_prompt(llama3_tok, "llama_3", QUESTION, N, Q)
    ref = _llama_file(llama3_dir)
    bos = ref.token_to_id("<|begin_of_text|>")
    assert layout.instruct_ids.tolist() == [bos] + ref.encode(QUESTION, add_special_tokens=False).ids


def test_llama3_question_with_id0_token(llama3_tok, llama3_dir):
    """'!' is id 0 in LLaMA-3: it must stay in the prompt and in the instruct ids (the vision
    encoder masks instruct ids equal to 0 — the reference's quirk, not the prompt's)."""
    q = "Stop! Is the cup on the table?"
    layout = build_prompt(llama3_tok, "llama_3", q, N, Q)
    ref = _llama_file(llama3_dir)
    assert layout.instruct_ids.tolist() == ref.encode(q).ids
    assert 0 in layout.instruct_ids.tolist()
    tail = ref.encode("<vision_end>\n" + q + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n").ids[1:]
    assert layout.input_ids[layout.latent_start + Q:].tolist() == tail
    assert 0 in tail


# ---------------------------------------------------------------------------- <image-placeholder>
@pytest.mark.parametrize("flavor, template", [("phi3", "phi_3"), ("llama3", "llama_3")])
def test_image_placeholder_replaced_in_place(request, flavor, template):
    tok = request.getfixturevalue(f"{flavor}_tok")
    q = "Look at <image-placeholder> and tell me: what is on the table?"
    layout = build_prompt(tok, template, q, N, Q)
    user_role = TEMPLATES[template].user_role
    assert (user_role + "<vision_start><latent_image><vision_end>Look at "
            "<vision_start><image><vision_end> and tell me: what is on the table?"
            + TEMPLATES[template].sep) in layout.text
    assert "<image-placeholder>" not in layout.text
    bare = "Look at  and tell me: what is on the table?"      # block removed, then stripped
    assert layout.instruct_ids.tolist() == tok.encode(bare)
    assert (layout.input_ids == IMAGE_SLOT).sum() == N and (layout.input_ids == LATENT_SLOT).sum() == Q
    assert layout.image_start < layout.latent_start


def test_image_placeholder_chunks_phi3(phi3_tok, phi3_slow_ref):
    q = "Look at <image-placeholder> closely."
    layout = build_prompt(phi3_tok, "phi_3", q, N, Q)
    chunks = [phi3_slow_ref.encode(c) for c in (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<vision_start>",
        "<vision_end>Look at <vision_start>",
        "<vision_end> closely.<|end|>\n<|assistant|>\n")]
    assert layout.input_ids.tolist() == _expected(chunks, N, Q, bos=None)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_empty_question_rejected(phi3_tok, question):
    with pytest.raises(PromptError, match="empty"):
        build_prompt(phi3_tok, "phi_3", question, N, Q)


@pytest.mark.parametrize("reserved", ["<image>", "<latent_image>"])
def test_reserved_strings_rejected(llama3_tok, reserved):
    with pytest.raises(PromptError) as e:
        build_prompt(llama3_tok, "llama_3", f"What is {reserved} here?", N, Q)
    assert reserved in str(e.value) and "fix:" in str(e.value)


def test_two_placeholders_and_marker_only_rejected(phi3_tok):
    with pytest.raises(PromptError, match="image-placeholder"):
        build_prompt(phi3_tok, "phi_3", "<image-placeholder> vs <image-placeholder>", N, Q)
    with pytest.raises(PromptError, match="no text"):
        build_prompt(phi3_tok, "phi_3", "<vision_start><vision_end>", N, Q)


def test_too_long_names_both_numbers(llama3_tok):
    full = build_prompt(llama3_tok, "llama_3", QUESTION, N, Q).seq_len
    assert build_prompt(llama3_tok, "llama_3", QUESTION, N, Q, max_length=full).seq_len == full
    with pytest.raises(PromptError) as e:
        build_prompt(llama3_tok, "llama_3", QUESTION, N, Q, max_length=full - 1)
    msg = str(e.value)
    assert str(full) in msg and str(full - 1) in msg
    assert "shorter question" in msg and "query_len" in msg


def test_unknown_template_lists_known(phi3_tok):
    with pytest.raises(PromptError) as e:
        build_prompt(phi3_tok, "vicuna_v1", QUESTION, N, Q)
    assert "phi_3" in str(e.value) and "llama_3" in str(e.value)


# ---------------------------------------------------------------------------- stop tokens
def test_stop_token_ids(phi3_tok, phi3_info, llama3_tok, llama3_info):
    s = phi3_info["special"]
    assert stop_token_ids(phi3_tok, "phi_3") == (s["<|end|>"], s["<|endoftext|>"])
    s = llama3_info["special"]
    assert stop_token_ids(llama3_tok, "llama_3") == (s["<|eot_id|>"], s["<|end_of_text|>"])
