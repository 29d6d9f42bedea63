"""Checkpoint loading: single / sharded / bf16, hub offline, and every broken-checkpoint error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from fusion_edge.export.checkpoint import open_checkpoint
from fusion_edge.export.safetensors_io import SafetensorsFile, save_file
from fusion_edge.export.tiny import make_tiny_checkpoint
from fusion_edge.runtime.errors import (CheckpointError, CorruptCheckpointError, HubUnavailableError,
                                        MissingWeightError, UnsupportedArchitectureError, WeightShapeError)


@pytest.fixture()
def ckpt_copy(tiny_checkpoint, tmp_path):
    def copy(llm="phi3", tower="so400m"):
        dst = tmp_path / f"{llm}-{tower}"
        shutil.copytree(tiny_checkpoint(llm, tower), dst)
        return dst
    return copy


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
def test_single_file_loads_with_config_facts(tiny_checkpoint, llm, tower):
    ck = open_checkpoint(tiny_checkpoint(llm, tower))
    cfg = ck.config
    assert cfg.llm.model_type == {"phi3": "fusion_phi", "llama3": "fusion_llama"}[llm]
    assert cfg.tower.num_patches == {"so400m": 729, "siglip2": 576}[tower]
    assert cfg.tower.num_layers == {"so400m": 26, "siglip2": 39}[tower]
    assert cfg.tower.early_layers == {"so400m": 13, "siglip2": 19}[tower]
    assert cfg.interaction_layers == tuple(range(0, 28, 3))
    assert cfg.query_lens == (4, 16, 36, 64, 144) and cfg.default_query_len == 36
    state = ck.state_dict()
    assert state["llm.embed.weight"].dtype == np.float32
    if llm == "llama3":   # q, k, v concatenated from three checkpoint tensors
        c = cfg.llm
        assert state["llm.layers.0.qkv.weight"].shape == ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.hidden_size)
        q = ck.tensor("model.layers.0.self_attn.q_proj.weight")
        np.testing.assert_array_equal(state["llm.layers.0.qkv.weight"][:q.shape[0]], q)


def test_sharded_and_bf16_checkpoints_give_the_same_weights(tiny_checkpoint, tmp_path):
    single = open_checkpoint(tiny_checkpoint("phi3", "so400m")).state_dict()
    sharded_dir = make_tiny_checkpoint(tmp_path / "sharded", "phi3", "so400m", shards=3)
    assert len(list(sharded_dir.glob("model-0000*-of-00003.safetensors"))) == 3
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    sharded = open_checkpoint(sharded_dir).state_dict()
    assert sharded.keys() == single.keys()
    for k in single:
        np.testing.assert_array_equal(sharded[k], single[k])
    bf16 = open_checkpoint(make_tiny_checkpoint(tmp_path / "bf16", "phi3", "so400m", dtype="BF16")).state_dict()
    w, w16 = single["llm.layers.3.qkv.weight"], bf16["llm.layers.3.qkv.weight"]
    assert not np.array_equal(w, w16)
    np.testing.assert_allclose(w16, w, rtol=2 ** -8)          # bf16 keeps 8 bits of mantissa
    assert np.all((w16.view(np.uint32) & 0xFFFF) == 0)          # truly bf16 values


def test_hub_id_offline_fails_fast_with_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(HubUnavailableError) as e:
        open_checkpoint("starriver030515/FUSION-X-Phi3.5-3B")
    assert time.time() - t0 < 20
    assert "huggingface-cli download starriver030515/FUSION-X-Phi3.5-3B" in str(e.value)


def test_hub_unreachable_endpoint_fails_fast(tmp_path):
    """Not offline-flagged, but no hub can be reached: still a clear error, never a hang."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_DOWNLOAD_TIMEOUT": "3"}
    code = ("from fusion_edge.export.checkpoint import open_checkpoint\n"
            "from fusion_edge.runtime.errors import HubUnavailableError\n"
            "try:\n    open_checkpoint('fusion-x-phi3.5-3b')\n"
            "except HubUnavailableError as e:\n    print('OK', e)\n")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("OK"), out.stdout + out.stderr
    assert "starriver030515/FUSION-X-Phi3.5-3B" in out.stdout
    assert time.time() - t0 < 90


def _rewrite(path, drop=None, reshape=None):
    f = SafetensorsFile(path)
    tensors = {k: f.get(k) for k in f.keys() if k != drop}
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    del f
    save_file(tensors, path)


def test_missing_key_is_named(ckpt_copy):
    d = ckpt_copy()
    key = "model.vision_sampler_layers.4.layers.0.proj_in.weight"
    _rewrite(d / "model.safetensors", drop=key)
    with pytest.raises(MissingWeightError, match=key.replace(".", r"\.")):
        open_checkpoint(d)


def test_wrong_shape_is_named_with_both_shapes(ckpt_copy):
    d = ckpt_copy("llama3", "siglip2")
    key = "model.layers.5.mlp.up_proj.weight"
    _rewrite(d / "model.safetensors", reshape=key)
    with pytest.raises(WeightShapeError) as e:
        open_checkpoint(d)
    assert key in str(e.value) and "(127, 64)" in str(e.value) and "(128, 64)" in str(e.value)


def test_unknown_model_type_lists_supported(ckpt_copy):
    d = ckpt_copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "fusion_qwen"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as e:
        open_checkpoint(d)
    assert "fusion_qwen" in str(e.value) and "fusion_llama" in str(e.value) and "fusion_phi" in str(e.value)


def test_truncated_safetensors(ckpt_copy):
    d = ckpt_copy()
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        open_checkpoint(d)


def test_missing_shard_and_pickled_weights(tiny_checkpoint, tmp_path):
    d = make_tiny_checkpoint(tmp_path / "sh", "phi3", "so400m", shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="model-00002-of-00002"):
        open_checkpoint(d)
    for f in list(d.glob("model*")):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="never loaded"):
        open_checkpoint(d)


def test_tower_preset_checked_against_weight_shapes(ckpt_copy):
    """mm_vision_tower naming the real so400m preset: its Dv=1152 disagrees with the tiny weights."""
    d = ckpt_copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["mm_vision_tower"] = "google/siglip-so400m-patch14-384"
    cfg.pop("mm_hidden_size")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightShapeError) as e:
        open_checkpoint(d)
    assert "mm_vision_tower" in str(e.value) and "1152" in str(e.value)


def test_tokenizer_model_only_is_converted(ckpt_copy, tiny_checkpoint):
    d = ckpt_copy()
    (d / "tokenizer.json").unlink()
    converted = open_checkpoint(d).tokenizer()
    original = open_checkpoint(tiny_checkpoint("phi3", "so400m")).tokenizer()
    for text in ("What is on the table?", " two  spaces\nnewline", "<|user|>\nhello<|end|>"):
        assert converted.encode(text) == original.encode(text)


def test_fingerprint_covers_the_weight_bytes_and_is_cached(tiny_checkpoint, tmp_path, monkeypatch):
    """Two checkpoints that differ in one weight value (same config, same headers) have
    different fingerprints, and a bundle of one is refused for the other; the per-file hash
    is cached by size and mtime."""
    import os
    import shutil

    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.errors import BundleMismatchError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = tiny_checkpoint("phi3", "so400m")
    b = tmp_path / "finetune"
    shutil.copytree(a, b)
    weights = b / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(x ^ 0x55 for x in data[-4:])            # the last weight value changes
    weights.write_bytes(bytes(data))
    ca, cb = open_checkpoint(str(a)), open_checkpoint(str(b))
    assert ca.fingerprint("headers") == cb.fingerprint("headers")   # the old fingerprint could not tell
    assert ca.fingerprint() != cb.fingerprint()
    manifest = {"source": {"model": "a", "fingerprint": ca.fingerprint(), "fingerprint_kind": "weights"}}
    bundle = Bundle.__new__(Bundle)
    bundle.path, bundle.manifest = tmp_path, manifest
    bundle.check_source(ca.fingerprint)
    with pytest.raises(BundleMismatchError, match="different checkpoint"):
        bundle.check_source(cb.fingerprint)
    # cached: same size and mtime → the stored hash, even if the bytes changed behind its back
    before = cb.fingerprint()
    st = weights.stat()
    data[-4:] = bytes(x ^ 0x55 for x in data[-4:])
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_checkpoint(str(b)).fingerprint() == before
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))      # touched: hashed again
    assert open_checkpoint(str(b)).fingerprint() == ca.fingerprint()


def test_a_bundle_that_recorded_the_old_header_fingerprint_still_matches(tiny_checkpoint, tmp_path):
    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.runtime.bundle import Bundle
    ckpt = open_checkpoint(str(tiny_checkpoint("phi3", "so400m")))
    bundle = Bundle.__new__(Bundle)
    bundle.path, bundle.manifest = tmp_path, {"source": {"model": "a", "fingerprint": ckpt.fingerprint("headers")}}
    assert bundle.fingerprint_kind == "headers"
    bundle.check_source(ckpt.fingerprint)
