"""Prompt building: the one implementation of docs/fusion.md §3 (single turn).

The rendered text is `system + sep + user_role + <vision_start><latent_image><vision_end>
+ message + sep + assistant_role` (the reference's phi_3 / llama_3 templates), where the
message is `<vision_start><image><vision_end>\\n{question}` (or the question with its
`<image-placeholder>` replaced by that block). The text is cut at `<image>` and, inside each
piece, at `<latent_image>`; every chunk is tokenised on its own with the tokenizer's default
special tokens and a chunk's leading BOS is kept only for the very first chunk (the
reference's tokenizer_image_token / tokenizer_latent_token). The two placeholders are then
expanded in text order: the first (`<latent_image>`) into the N image-token rows, the second
(`<image>`) into the q latent rows — the reference fills placeholders in order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import PromptError

IMAGE_SLOT = -200    # expanded id of an image-token row
LATENT_SLOT = -300   # expanded id of a latent row

IMAGE_TOKEN = "<image>"
LATENT_TOKEN = "<latent_image>"
IM_START = "<vision_start>"
IM_END = "<vision_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
IMAGE_BLOCK = IM_START + IMAGE_TOKEN + IM_END        # in the user message
LATENT_BLOCK = IM_START + LATENT_TOKEN + IM_END      # inserted by the template
RESERVED = (IMAGE_TOKEN, LATENT_TOKEN)
_MARK = {LATENT_TOKEN: -1, IMAGE_TOKEN: -2}          # placeholder marks before expansion


@dataclass(frozen=True)
class ChatTemplate:
    """A single-turn conversation template (the reference's MPT / LLAMA_3 styles agree here)."""
    name: str
    system: str
    user_role: str
    assistant_role: str
    sep: str
    stop_tokens: tuple[str, ...]      # generation ends on these (plus the tokenizer's EOS)

    def render(self, message: str) -> str:
        return (self.system + self.sep + self.user_role + LATENT_BLOCK + message + self.sep
                + self.assistant_role)

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """The template's `<|...|>` markers: a question holding one would be tokenised as that
        control token (a forged turn or an early stop), so questions may not."""
        text = "".join((self.system, self.user_role, self.assistant_role, self.sep, *self.stop_tokens))
        return tuple(dict.fromkeys(re.findall(r"<\|[^|<>]+\|>", text)))


TEMPLATES: dict[str, ChatTemplate] = {
    "phi_3": ChatTemplate(
        name="phi_3",
        system="<|system|>\nYou are a helpful AI assistant.",
        user_role="\n<|user|>\n", assistant_role="\n<|assistant|>\n", sep="<|end|>",
        stop_tokens=("<|end|>", "<|endoftext|>")),
    "llama_3": ChatTemplate(
        name="llama_3",
        system=("<|start_header_id|>system<|end_header_id|>\n\n"
                "You are a helpful, highly intelligent language and vision assistant. "
                "You are able to understand the visual content that the user provides, and "
                "assist the user with a variety of tasks using natural language. Whenever an "
                "image is present in the conversation, very carefully examine it and consider "
                "its content when formulating your response."),
        user_role="<|start_header_id|>user<|end_header_id|>\n\n",
        assistant_role="<|start_header_id|>assistant<|end_header_id|>\n\n", sep="<|eot_id|>",
        stop_tokens=("<|eot_id|>", "<|end_of_text|>")),
}


@dataclass(frozen=True)
class PromptLayout:
    text: str                  # rendered template text with the literal placeholders
    input_ids: np.ndarray      # int64 (S,): N entries IMAGE_SLOT, q entries LATENT_SLOT
    image_start: int           # first of the N image-token rows (the `<latent_image>` slot)
    num_image_tokens: int
    latent_start: int          # first of the q latent rows (the `<image>` slot)
    num_latents: int
    instruct_pos: int          # S-1, the last prompt token
    instruct_ids: np.ndarray   # int64 (T,): the bare question, default special tokens

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def vision_positions(self) -> np.ndarray:
        """int64 (q,): the latent rows, rewritten by the interaction layers."""
        return np.arange(self.latent_start, self.latent_start + self.num_latents, dtype=np.int64)

    @property
    def image_positions(self) -> np.ndarray:
        """int64 (N,): the image-token rows."""
        return np.arange(self.image_start, self.image_start + self.num_image_tokens, dtype=np.int64)


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    if isinstance(template, ChatTemplate):
        return template
    try:
        return TEMPLATES[template]
    except (KeyError, TypeError):
        raise PromptError(f"unknown conversation template {template!r}.",
                          f"use one of: {', '.join(sorted(TEMPLATES))}") from None


def user_message(question: str) -> str:
    """The user turn: the image block before the question, or at its `<image-placeholder>`."""
    if IMAGE_PLACEHOLDER in question:
        return question.replace(IMAGE_PLACEHOLDER, IMAGE_BLOCK)
    return IMAGE_BLOCK + "\n" + question


def instruct_text(message: str) -> str:
    """The bare question of a user message: image-block strings removed, then stripped."""
    return message.replace(IMAGE_TOKEN, "").replace(IM_START, "").replace(IM_END, "").strip()


def render_prompt(template: str | ChatTemplate, question: str) -> str:
    tpl = get_template(template)
    _check_question(question, tpl)
    return tpl.render(user_message(question))


def _check_question(question: str, template: ChatTemplate) -> None:
    if not isinstance(question, str):
        raise PromptError(f"the question must be text, got {type(question).__name__}.",
                          "pass the question as a str")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptError(f"the question is not valid Unicode text (a lone surrogate at character {e.start}).",
                          "send UTF-8 text; decode received bytes with errors='replace'") from None
    if not question.strip():
        raise PromptError("the question is empty.", "ask a question about the image, e.g. "
                          "\"What is on the table?\"")
    for token in template.control_tokens:
        if token in question:
            raise PromptError(f"the question contains the chat-template control token {token!r}.",
                              f"remove {token!r} from the question (it would be read as a turn marker)")
    for reserved in RESERVED:
        if reserved in question:
            raise PromptError(f"the question contains the reserved string {reserved!r}.",
                              f"remove {reserved!r} from the question; to place the image "
                              f"inside the text write {IMAGE_PLACEHOLDER!r} once")
    if question.count(IMAGE_PLACEHOLDER) > 1:
        raise PromptError(f"the question contains {IMAGE_PLACEHOLDER!r} "
                          f"{question.count(IMAGE_PLACEHOLDER)} times; one image is one block.",
                          f"keep a single {IMAGE_PLACEHOLDER!r}")


def _join_chunks(chunks: list[list[int]], mark: int, bos: int | None) -> list[int]:
    """Join separately tokenised chunks with one `mark` between them.

    When the first chunk starts with BOS, every chunk loses its first token (each one was
    tokenised with BOS) and one BOS leads the result — the reference's rule.
    """
    offset = 1 if chunks and chunks[0] and bos is not None and chunks[0][0] == bos else 0
    out = [bos] if offset else []
    for k, chunk in enumerate(chunks):
        if k:
            out.append(mark)
        out.extend(chunk[offset:])
    return out


def _tokenize_with_marks(tokenizer, text: str) -> list[int]:
    bos = tokenizer.bos_token_id
    pieces = [
        _join_chunks([list(tokenizer.encode(c)) for c in part.split(LATENT_TOKEN)],
                     _MARK[LATENT_TOKEN], bos)
        for part in text.split(IMAGE_TOKEN)]
    return _join_chunks(pieces, _MARK[IMAGE_TOKEN], bos)


def build_prompt(tokenizer, template: str | ChatTemplate, question: str, num_image_tokens: int,
                 num_latents: int, max_length: int | None = None) -> PromptLayout:
    """Render, tokenise and expand one question (docs/fusion.md §3). Raises PromptError."""
    tpl = get_template(template)
    _check_question(question, tpl)
    if num_image_tokens < 1 or num_latents < 1:
        raise PromptError(f"need at least one image token and one latent, got "
                          f"{num_image_tokens} and {num_latents}.",
                          "pass the tower's token count N and a trained query_len q")
    message = user_message(question)
    bare = instruct_text(message)
    if not bare:
        raise PromptError("the question has no text besides image markers.",
                          "ask a question about the image, e.g. \"What is on the table?\"")
    text = tpl.render(message)
    marked = _tokenize_with_marks(tokenizer, text)
    marks = [i for i, t in enumerate(marked) if t in (_MARK[LATENT_TOKEN], _MARK[IMAGE_TOKEN])]
    if [marked[i] for i in marks] != [_MARK[LATENT_TOKEN], _MARK[IMAGE_TOKEN]]:
        raise PromptError("the rendered prompt does not hold exactly one latent and one image "
                          "placeholder, in that order.", "check the question and template")

    # Expand: first placeholder → N image rows, second → q latent rows.
    first, second = marks
    image_start = first
    latent_start = second - 1 + num_image_tokens
    ids = (marked[:first] + [IMAGE_SLOT] * num_image_tokens + marked[first + 1:second]
           + [LATENT_SLOT] * num_latents + marked[second + 1:])
    seq_len = len(ids)
    if max_length is not None and seq_len > max_length:
        raise PromptError(
            f"the prompt expands to {seq_len} tokens, more than the model's limit of "
            f"{max_length} (tokenizer_model_max_length).",
            "ask a shorter question, or choose a smaller query_len / the FUSION-L mode")
    return PromptLayout(
        text=text, input_ids=np.asarray(ids, dtype=np.int64),
        image_start=image_start, num_image_tokens=int(num_image_tokens),
        latent_start=latent_start, num_latents=int(num_latents),
        instruct_pos=seq_len - 1,
        instruct_ids=np.asarray(tokenizer.encode(bare), dtype=np.int64))


def stop_token_ids(tokenizer, template: str | ChatTemplate) -> tuple[int, ...]:
    """The template's end tokens, then the tokenizer's EOS ids (deduplicated, in order)."""
    tpl = get_template(template)
    ids = [tokenizer.token_to_id(t) for t in tpl.stop_tokens]
    ids += list(tokenizer.eos_token_ids)
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def check_max_new_tokens(max_new_tokens: int, context: int | None = None,
                         what: str = "the model's context", name: str = "max_new_tokens",
                         option: str = "--max-new-tokens") -> None:
    """max_new_tokens is a whole number ≥ 1 and, given `context`, leaves room for a prompt: the
    check that needs no prompt, so that it can run before any work (a prompt has at least one
    token and the last new token is never fed back, so max_new_tokens ≤ context). `name` and
    `option`: what the caller calls it (serve's --max-tokens, verify's --steps)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise PromptError(f"{name} must be a whole number of at least 1, got {max_new_tokens!r}.",
                          "pass a positive number")
    if context is not None and max_new_tokens > context:
        raise PromptError(f"{name} {max_new_tokens} exceeds {what} of {context} positions.",
                          f"lower {option} below {context}: the prompt takes positions too")


def check_room(prompt_tokens: int, max_new_tokens: int, context: int, what: str = "the model's context",
               option: str = "--max-new-tokens") -> None:
    """max_new_tokens is a whole number ≥ 1, and the prompt plus the new tokens fit `context`
    positions (the last new token is never fed back, hence the - 1). `what` names the limit:
    the model's positions, or a trt bundle's engine profiles ("the bundle's context"); `option`
    what the fix lowers (serve: the request's max_tokens)."""
    check_max_new_tokens(max_new_tokens)
    if prompt_tokens + max_new_tokens - 1 > context:
        fix = (f"lower {option} to {context - prompt_tokens + 1} or ask a shorter question"
               if prompt_tokens <= context else "ask a shorter question: the prompt alone does not fit")
        raise PromptError(f"the prompt ({prompt_tokens} tokens) and {max_new_tokens} new tokens pass {what} "
                          f"of {context} positions.", fix)
