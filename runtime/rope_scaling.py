"""The rope scaling kinds the runtime computes (runtime/rope.py), and the check of a config's
`rope_scaling` against them. A leaf module: config.py checks a checkpoint's rope scaling
while parsing it, without importing the numpy tables of rope.py.
"""
from __future__ import annotations

from .errors import ConfigError

# rope scaling kinds (config.json `rope_scaling.rope_type` or `.type`) → the one fusion-edge name
ROPE_KINDS = {None: "default", "default": "default", "longrope": "longrope", "su": "longrope", "llama3": "llama3"}


def rope_scaling_kind(scaling, where: str = "config.json") -> str:
    """default | longrope | llama3, from a config's rope_scaling (None, or an object);
    ConfigError otherwise."""
    s = scaling or {}
    if not isinstance(s, dict):
        raise ConfigError(f"{where}: rope_scaling is {s!r}, not an object.",
                          "use the checkpoint's original config.json (a FUSION checkpoint)")
    kind = s.get("rope_type", s.get("type"))
    if kind not in ROPE_KINDS:
        raise ConfigError(f"{where}: rope scaling '{kind}' is not supported.",
                          f"supported: {', '.join(sorted(k for k in ROPE_KINDS if k))} (or none)")
    return ROPE_KINDS[kind]
