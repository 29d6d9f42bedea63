"""The node's parameters: defaults, meanings, and the check each new value must pass.

`check(name, value, pipe)` raises PromptError with the reason a value is refused; the node
turns that into the reason of a refused `ros2 param set`. Values are read again for every
question, so an accepted change takes effect on the next one.
"""
from __future__ import annotations

from fusion_edge.runtime.errors import FusionEdgeError, PromptError

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
    """Raise PromptError when `value` is not acceptable for parameter `name` on this pipeline."""
    if name not in PARAMS:
        raise PromptError(f"the node has no parameter '{name}'.", f"parameters: {', '.join(PARAMS)}")
    if name == "max_new_tokens" and not 1 <= value <= MAX_TOKENS:
        raise PromptError(f"max_new_tokens must be 1..{MAX_TOKENS}, not {value}.", "pick a positive number")
    if name == "temperature" and not 0.0 <= value <= 10.0:
        raise PromptError(f"temperature must be 0..10, not {value:g}.", "0 = greedy; 0.7 is a common choice")
    if name == "query_len" and value != 0:
        try:
            pipe.cfg.check_query_len(value)
        except FusionEdgeError as e:
            raise PromptError(e.problem, e.fix) from None
    if name == "image_tokens" and value not in (0, pipe.image_tokens):
        raise PromptError(f"the bundle was exported with {pipe.image_tokens} image tokens, not {value}.",
                          "re-export the bundle with --image-tokens and start the node on it")
    if name in ("watch_period_s", "max_image_age_s") and value < 0:
        raise PromptError(f"{name} must be 0 or more, not {value:g}.", "0 turns it off")
    if name == "max_question_chars" and value < 1:
        raise PromptError(f"max_question_chars must be positive, not {value}.", "500 is the default")


def refuse_fixed(name: str) -> PromptError:
    return PromptError(f"{name} cannot change while the node runs (the model is loaded once).",
                       f"restart the node with -p {name}:=NEW_VALUE")
