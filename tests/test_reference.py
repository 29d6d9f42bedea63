"""Reference internals (docs/fusion.md §4–§6, §8): the quirks the released weights depend on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_edge.export.ref_vision import EncoderLayer
from fusion_edge.runtime.config import TowerConfig


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    t = TowerConfig("so400m", 16, 2, 32, 26, 14, 384)
    m = EncoderLayer(t).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def _attn_probs(layer, x, key_mask, uniform_from):
    """Recompute the layer's attention probabilities by hand (same weights)."""
    B, K, D = x.shape
    q, k, _ = layer.qkv(layer.ln1(x)).view(B, K, 3, layer.heads, D // layer.heads).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) * (D // layer.heads) ** -0.5
    if key_mask is not None:
        s = s + key_mask
    if uniform_from is not None:
        s[:, :, uniform_from:, :] = torch.finfo(s.dtype).min
    return torch.softmax(s, -1)


@torch.no_grad()
def test_early_layer_instruct_rows_are_uniform_over_all_keys(layer):
    N, T = 6, 3
    x = torch.randn(1, N + T, 16)
    keep = torch.tensor([[True, False, True]])      # one padding (id 0) instruct token
    mask = torch.zeros(1, N + T).masked_fill(~torch.cat([torch.ones(1, N, dtype=torch.bool), keep], 1),
                                             torch.finfo(torch.float32).min)[:, None, None, :]
    p = _attn_probs(layer, x, mask, N)
    torch.testing.assert_close(p[0, :, N:, :], torch.full((2, T, N + T), 1 / (N + T)))   # masked key included
    assert float(p[0, :, :N, N + 1].max()) < 1e-30                                   # padding key masked for vision
    assert float(p[0, :, :N, N].min()) > 1e-4                                        # vision rows see text
    # the layer's output for an instruct row = out-proj of the mean value over all keys
    out = layer._attention(layer.ln1(x), mask, N)
    v = layer.qkv(layer.ln1(x))[..., 32:]
    torch.testing.assert_close(out[0, N:], layer.out(v[0].mean(0, keepdim=True)).expand(T, 16), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_vision_rows_depend_on_text_in_both_early_and_late_layers(layer):
    N, T = 6, 3
    x = torch.randn(1, N + T, 16)
    y = x.clone()
    y[0, N:] += torch.randn(T, 16)        # (a constant shift would vanish in LayerNorm)
    for uniform in (N, None):      # early, late
        a = layer(x, None, uniform)[0, :N]
        b = layer(y, None, uniform)[0, :N]
        assert float((a - b).abs().max()) > 1e-3


def test_kv_cache_decode_equals_full_recompute(reference, images):
    ref = reference("llama3", "siglip2")
    ref.interactions_enabled = False
    try:
        scene = ref.look(images["wide"])
        res = ref.ask(scene, "What is on the table?", max_new_tokens=4)
        lay = res.layout
        lat, _ = ref.pooled(scene, lay.num_latents)
        img = ref.encode_main(scene.tiles.main, lay.instruct_ids)
        emb = ref.embed_prompt(lay, img, lat)
        llm = ref.model.llm
        with torch.no_grad():
            logits, cache = ref.prefill(emb, lay, None)
            step = [ref.decode_step(t, lay.seq_len + i, cache) for i, t in enumerate(res.token_ids[:3])]
            full = torch.cat([emb, llm.embed(torch.tensor([res.token_ids[:3]]))], 1)
            x = llm.run_layers(full, 0, ref.cfg.llm.num_layers, 0, llm.empty_cache())
            recompute = llm.logits(x[0, -4:])
        torch.testing.assert_close(torch.stack([logits] + step), recompute, atol=2e-4, rtol=1e-4)
    finally:
        ref.interactions_enabled = True


def test_interactions_run_only_in_the_prefill_and_matter(reference, images):
    ref = reference("phi3", "so400m")
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in ref.model.align]
    try:
        scene = ref.look(images["tall"])
        on = ref.ask(scene, "How many boxes?", max_new_tokens=6)
        assert len(calls) == 10                     # 10 interaction layers, once each, in the prefill
        ref.interactions_enabled = False
        off = ref.ask(scene, "How many boxes?", max_new_tokens=1)
    finally:
        ref.interactions_enabled = True
        for h in hooks:
            h.remove()
    assert len(calls) == 10
    assert float(np.abs(on.first_logits - off.first_logits).max()) > 0.1


def test_query_len_and_fusion_l_change_the_layout(reference, images):
    ref = reference("phi3", "so400m")
    scene = ref.look(images["wide"])
    r16 = ref.ask(scene, "What color is it?", max_new_tokens=1, query_len=16)
    r36 = ref.ask(scene, "What color is it?", max_new_tokens=1, query_len=36)
    assert r16.layout.num_latents == 16 and r36.layout.num_latents == 36
    assert r36.layout.seq_len - r16.layout.seq_len == 20
    assert ref.pooled(scene, 16)[0].shape == (16, 64) and ref.pooled(scene, 16)[1].shape == (144, 64)
    assert float(np.abs(r16.first_logits - r36.first_logits).max()) > 1e-3
    rl = ref.ask(scene, "What color is it?", max_new_tokens=1, image_tokens=144)
    assert rl.layout.num_image_tokens == 144 and r36.layout.num_image_tokens == 729
    from fusion_edge.runtime.errors import ConfigError
    with pytest.raises(ConfigError, match="4, 16, 36, 64, 144"):
        ref.ask(scene, "What color is it?", max_new_tokens=1, query_len=25)


def test_image_changes_the_answer_logits(reference, images):
    ref = reference("phi3", "so400m")
    a = ref.answer(images["wide"], "What is this?", max_new_tokens=1)
    b = ref.answer(images["strip"], "What is this?", max_new_tokens=1)
    assert float(np.abs(a.first_logits - b.first_logits).max()) > 1e-2


def test_sampling_is_seeded_and_greedy_is_default(reference, images):
    ref = reference("phi3", "so400m")
    scene = ref.look(images["wide"])
    g1 = ref.ask(scene, "Describe it.", max_new_tokens=8)
    g2 = ref.ask(scene, "Describe it.", max_new_tokens=8, temperature=0.0)
    s1 = ref.ask(scene, "Describe it.", max_new_tokens=8, temperature=1.5, top_p=0.95, seed=3)
    s2 = ref.ask(scene, "Describe it.", max_new_tokens=8, temperature=1.5, top_p=0.95, seed=3)
    assert g1.token_ids == g2.token_ids and s1.token_ids == s2.token_ids
