"""vision.gguf (export/vision_gguf.py): the native runtime's tower, projectors and alignment."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gguf", reason="the gguf extra (gguf) is not installed")
pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is not installed")

from fusion_edge.export.checkpoint import open_checkpoint
from fusion_edge.export.weight_map import (
    projector_entries,
    sampler_entries,
    tower_entries,
)
from fusion_edge.runtime.errors import ExportError


def _read(path):
    import gguf
    r = gguf.GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def _field(r, key):
    f = r.fields[key]
    if f.types and f.types[0].name == "STRING":
        return bytes(f.parts[-1]).decode()
    if f.types and f.types[0].name == "ARRAY":
        return [int(f.parts[i][0]) for i in f.data]
    return f.parts[-1][0].item()


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
def test_vision_gguf_holds_every_vision_weight_and_the_hyperparameters(llm, tower, gguf_bundle, tiny_checkpoint):
    folder = gguf_bundle(llm, tower)
    ckpt = open_checkpoint(tiny_checkpoint(llm, tower))
    cfg = ckpt.config
    r, tensors = _read(folder / "vision.gguf")
    entries = tower_entries(cfg) + projector_entries(cfg) + sampler_entries(cfg)
    assert set(tensors) == {e.name for e in entries}
    for e in entries:
        t = tensors[e.name]
        assert t.tensor_type.name == "F32", e.name
        want = ckpt.canonical(e).astype(np.float32)
        got = np.asarray(t.data).reshape(want.shape)       # GGUF shape is reversed, data row-major
        assert np.array_equal(got, want), e.name
    t = cfg.tower
    assert _field(r, "general.architecture") == "fusion-vision"
    assert _field(r, "fusion.tower.type") == tower
    assert _field(r, "fusion.tower.hidden_size") == t.hidden_size
    assert _field(r, "fusion.tower.num_layers") == t.num_layers
    assert _field(r, "fusion.tower.early_layers") == t.early_layers
    assert _field(r, "fusion.llm.hidden_size") == cfg.llm.hidden_size
    assert _field(r, "fusion.align.llm_layers") == list(cfg.interaction_layers)
    assert _field(r, "fusion.window_size") == cfg.window_size
    assert _field(r, "fusion.projector.depth") == cfg.projector_depth
    manifest = json.loads((folder / "fusion_bundle.json").read_text())
    comp = manifest["components"]["native_vision"]
    assert comp["files"] == ["vision.gguf"] and comp["quant"] == "F32"
    assert "vision.gguf" in manifest["files"]      # hashed like every bundle file


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
def test_vision_gguf_reduced_types_dequantize_close_to_the_checkpoint(quant, gguf_bundle, tiny_checkpoint):
    import gguf
    folder = gguf_bundle("phi3", "so400m", vision_quant=quant)
    ckpt = open_checkpoint(tiny_checkpoint("phi3", "so400m"))
    _, tensors = _read(folder / "vision.gguf")
    reduced = 0
    for e in tower_entries(ckpt.config) + sampler_entries(ckpt.config):
        t = tensors[e.name]
        want = ckpt.canonical(e).astype(np.float32)
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
        if t.tensor_type.name != "F32":
            reduced += 1
            assert t.tensor_type.name in (quant, "F16"), e.name
            tol = 1e-3 if t.tensor_type.name == "F16" else 1.5e-2
            assert np.max(np.abs(got - want)) <= tol * max(1.0, float(np.max(np.abs(want)))), e.name
        else:
            assert np.array_equal(got, want) and (want.ndim != 2 or e.name == "vision.pos"), e.name
    assert reduced > 0


@pytest.mark.slow
def test_vision_gguf_unknown_type_is_refused(tiny_checkpoint, tmp_path):
    from fusion_edge.export.gguf_bundle import export_gguf_bundle
    with pytest.raises(ExportError, match="vision.gguf type 'Q4_0'"):
        export_gguf_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path / "b", "gguf", "fp32", verify=False,
                           progress=False, vision_quant="Q4_0")
