"""Session fixtures shared by the native-runtime tests (tests/test_native_*.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

# one cache for every test module that imports the fixture (each import registers its own copy)
_BUNDLES: dict = {}


@pytest.fixture(scope="session")
def native_bundle(tiny_checkpoint, work_dir):
    """native_bundle(llm, tower, precision="fp32", **extra) → gguf bundle folder (with vision.gguf)."""
    from fusion_edge.export.gguf_bundle import export_gguf_bundle
    cache = _BUNDLES

    def make(llm: str = "phi3", tower: str = "so400m", precision: str = "fp32", **extra) -> Path:
        key = (llm, tower, precision, tuple(sorted(extra.items())))
        if key not in cache:
            out = work_dir / "native" / "-".join([llm, tower, precision, *[f"{k}{v}" for k, v in sorted(extra.items())]])
            cache[key] = export_gguf_bundle(str(tiny_checkpoint(llm, tower)), out, "gguf", precision,
                                            verify=False, progress=False, log=lambda *_: None, **extra)
        return cache[key]
    return make
