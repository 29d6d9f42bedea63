"""Shared by the native-runtime tests (tests/test_native_*.py): gguf bundles with vision.gguf."""
from __future__ import annotations

from pathlib import Path

# one cache for every test module (each module declares its own session fixture on top)
_BUNDLES: dict = {}


def bundle_maker(tiny_checkpoint, work_dir):
    """→ make(llm, tower, precision="fp32", **extra) → gguf bundle folder (exported once, not verified)."""
    from fusion_edge.export.gguf_bundle import export_gguf_bundle

    def make(llm: str = "phi3", tower: str = "so400m", precision: str = "fp32", **extra) -> Path:
        key = (llm, tower, precision, tuple(sorted(extra.items())))
        if key not in _BUNDLES:
            out = work_dir / "native" / "-".join([llm, tower, precision, *[f"{k}{v}" for k, v in sorted(extra.items())]])
            _BUNDLES[key] = export_gguf_bundle(str(tiny_checkpoint(llm, tower)), out, "gguf", precision,
                                               verify=False, progress=False, log=lambda *_: None, **extra)
        return _BUNDLES[key]
    return make
