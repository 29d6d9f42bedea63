"""The LLM architecture registry: one `ArchSpec` per supported config.json `model_type`.

An entry says everything fusion-edge keys on the architecture: the conversation template
(runtime/prompt.py), the rope scaling its checkpoints use (runtime/rope.py), how the
checkpoint stores a decoder layer's attention and MLP projections (export/weight_map.py
builds the weight table from it), how the decoder maps onto llama.cpp (export/gguf_writer.py)
and what `fusion-edge make-tiny --llm NAME` writes into config.json (export/tiny.py).
The config itself is parsed by runtime/config.py `parse_llm` (the Hugging Face decoder
fields every entry shares). A new architecture is one entry here plus its tests; an
unknown `model_type` fails listing the supported ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str                # config.json model_type
    tiny_name: str                 # `make-tiny --llm` name (also the tiny tokenizer's flavour)
    template: str                  # conversation template name (runtime/prompt.py TEMPLATES)
    rope: str                      # rope scaling of its checkpoints (runtime/rope.py ROPE_KINDS)
    gguf_arch: str                 # llama.cpp architecture name
    qkv: tuple[str, ...]           # layer keys concatenated (dim 0) into q|k|v: one = fused
    gate_up: tuple[str, ...]       # layer keys concatenated (dim 0) into gate|up: one = fused
    gguf_permute_qk: bool          # Q/K rows → llama.cpp's interleaved rope (split q/k/v only)
    tiny_config: Callable[[int, int, int], dict]   # (heads, kv_heads, head_dim) → config.json fields

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1

    @property
    def fused_gate_up(self) -> bool:
        return len(self.gate_up) == 1


def _phi3_tiny(heads: int, kv_heads: int, hd: int) -> dict:
    """Phi-3.5-mini's fields (no GQA), LongRoPE factors drawn from a fixed seed."""
    rng = np.random.default_rng(1234)
    return {
        "architectures": ["FusionPhi3ForCausalLM"], "model_type": "fusion_phi",
        "num_key_value_heads": heads, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "sliding_window": 262144, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "rope_scaling": {"type": "longrope",
                         "short_factor": np.round(1 + 0.5 * rng.random(hd // 2), 4).tolist(),
                         "long_factor": np.round(np.linspace(1.0, 30.0, hd // 2), 4).tolist()}}


def _llama3_tiny(heads: int, kv_heads: int, hd: int) -> dict:
    """LLaMA-3.1-8B-Instruct's fields (GQA, llama3 frequency smoothing)."""
    return {
        "architectures": ["FusionLlamaForCausalLM"], "model_type": "fusion_llama",
        "num_key_value_heads": kv_heads, "head_dim": hd, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "mlp_bias": False, "attention_bias": False,
        "pretraining_tp": 1,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


ARCHITECTURES: dict[str, ArchSpec] = {
    # Phi-3.5: fused qkv_proj / gate_up_proj; llama.cpp `phi3` keeps them fused (NEOX rope).
    "fusion_phi": ArchSpec(
        "fusion_phi", tiny_name="phi3", template="phi_3", rope="longrope", gguf_arch="phi3",
        qkv=("self_attn.qkv_proj.weight",), gate_up=("mlp.gate_up_proj.weight",),
        gguf_permute_qk=False, tiny_config=_phi3_tiny),
    # LLaMA-3.1: separate projections; llama.cpp `llama` wants Q/K rows interleaved.
    "fusion_llama": ArchSpec(
        "fusion_llama", tiny_name="llama3", template="llama_3", rope="llama3", gguf_arch="llama",
        qkv=("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        gate_up=("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        gguf_permute_qk=True, tiny_config=_llama3_tiny),
}


def arch_spec(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' is not supported by fusion-edge.",
            f"supported model_type values: {', '.join(sorted(ARCHITECTURES))} "
            "(the released FUSION / FUSION-X checkpoints)",
        ) from None


def tiny_names() -> list[str]:
    """`make-tiny --llm` choices, in registry order."""
    return [a.tiny_name for a in ARCHITECTURES.values()]


def by_tiny_name(name: str) -> ArchSpec:
    for a in ARCHITECTURES.values():
        if a.tiny_name == name:
            return a
    raise ValueError(f"--llm must be one of {sorted(tiny_names())}")
