"""The node's parameters: defaults, meanings, and the check each new value must pass.

`check(name, value, pipe)` raises PromptError / OptionError with the reason a value is refused; the node
turns that into the reason of a refused `ros2 param set`. Values are read again for every
question, so an accepted change takes effect on the next one.
"""
from __future__ import annotations

from fusion_edge.runtime.errors import FusionEdgeError, PromptError
from fusion_edge.runtime.option_types import check_float, check_int
from fusion_edge.runtime.prompt import check_max_new_tokens
from fusion_edge.runtime.sampling import Sampler

# name → (default, description). The default's type is the parameter's ROS type.
PARAMS: dict[str, tuple] = {
    "bundle": ("", "exported bundle folder (fixed while the node runs)"),
    "device": ("auto", "auto | cpu | cuda (fixed while the node runs)"),
    "vision_device": ("", "device of the vision part only: auto | cpu | cuda; empty = device (fixed)"),
    "align_device": ("", "device of the alignment part only; empty = device (fixed)"),
    "llm_device": ("", "device of the LLM part only; empty = device (fixed)"),
    "tf32": (False, "let onnxruntime's CUDA EP run fp32 MatMuls in TF32 (fixed)"),
    "max_new_tokens": (64, "most tokens per answer"),
    "temperature": (0.0, "sampling temperature; 0 = greedy"),
    "query_len": (0, "latent count, one the checkpoint was trained with; 0 = the bundle's"),
    "image_tokens": (0, "image tokens: 0 = the bundle's; other values must match the bundle"),
    "watch_question": ("", "standing question: asked on new frames every watch_period_s, and by ~/ask"),
    "watch_period_s": (0.0, "seconds between watch answers; 0 = watch mode off"),
    "max_image_age_s": (0.0, "refuse to answer about a frame older than this; 0 = any age"),
    "max_question_chars": (500, "longest question accepted"),
}
FIXED = ("bundle", "device", "vision_device", "align_device", "llm_device", "tf32")
MAX_TOKENS = 4096


def check(name: str, value, pipe) -> None:
    """Raise PromptError / OptionError when `value` is not acceptable for parameter `name` on this
    pipeline: the runtime's own checks (max_new_tokens against the context, the sampler's
    temperature, runtime/option_types.py for the rest), then the node's limits (4096 tokens,
    temperature 10). pipe None (before the model loads): what needs no pipeline."""
    if name not in PARAMS:
        raise PromptError(f"the node has no parameter '{name}'.", f"parameters: {', '.join(PARAMS)}")
    if name == "max_new_tokens":
        if pipe is not None:
            context, what = pipe.context_limit()
            check_max_new_tokens(value, context, what, option="max_new_tokens")
        else:
            check_max_new_tokens(value, option="max_new_tokens")
        if value > MAX_TOKENS:
            raise PromptError(f"max_new_tokens must be 1..{MAX_TOKENS}, not {value}.", "pick a smaller number")
    if name == "temperature":
        Sampler(value)                  # finite and >= 0
        if value > 10.0:
            raise PromptError(f"temperature must be 0..10, not {value:g}.", "0 = greedy; 0.7 is a common choice")
    if name in ("watch_period_s", "max_image_age_s"):
        check_float(value, name, 0.0, fix="a finite number of seconds; 0 turns it off")
    if name == "max_question_chars":
        check_int(value, name, 1, fix="500 is the default")
    if name == "query_len" and value != 0 and pipe is not None:
        try:
            pipe.cfg.check_query_len(value)
        except FusionEdgeError as e:
            raise PromptError(e.problem, e.fix) from None
    if name == "image_tokens" and pipe is not None and value not in (0, pipe.image_tokens):
        raise PromptError(f"the bundle was exported with {pipe.image_tokens} image tokens, not {value}.",
                          "re-export the bundle with --image-tokens and start the node on it")


def refuse_fixed(name: str) -> PromptError:
    return PromptError(f"{name} cannot change while the node runs (the model is loaded once).",
                       f"restart the node with -p {name}:=NEW_VALUE")
