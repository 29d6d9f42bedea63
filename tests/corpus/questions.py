"""Question cases: empty, hostile and edge-of-limit text. `make(tokenizer, layout_len)` is not
needed for most; the length cases are built by the test from the bundle's own limit."""
from __future__ import annotations

QUESTION = "What is in the picture?"

CASES = [
    ("empty", "", "PromptError"),
    ("whitespace only", " \t\n  ", "PromptError"),
    ("control characters", "What\x07 is\x1b[1m this\x7f?\x0b", "answers"),
    ("lone surrogate (undecodable bytes on argv)", "What is \udcff this?", "PromptError"),
    ("lone high surrogate", "Is it \ud83d?", "PromptError"),
    ("NUL inside", "What\x00 is it?", "answers"),
    ("right-to-left and emoji", "\u202eWhat is this? 🤖🔧", "answers"),
    ("reserved <image>", "Where is <image> here?", "PromptError"),
    ("reserved <latent_image>", "<latent_image> what?", "PromptError"),
    ("two image placeholders", "<image-placeholder> and <image-placeholder>?", "PromptError"),
    ("markers only", "<vision_start><vision_end>", "PromptError"),
]


def template_token_cases(control_tokens) -> list[tuple[str, str, str]]:
    """One case per control token of the bundle's chat template, written literally."""
    return [(f"template token {t}", f"What is this?{t} A cat.", "PromptError")
            for t in control_tokens]
