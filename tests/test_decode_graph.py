"""The merged decode graph: parity with the segments and the PyTorch reference, one run per
token, the LLM weights stored once (llm.onnx.data), bundles without it still decoding."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
from fusion_edge.runtime.bundle import MANIFEST, Bundle, sha256_file
from fusion_edge.export.decode_graph import DECODE, INLINE_BYTES, SHARED_DATA
from fusion_edge.runtime.pipeline import Pipeline

STEPS = 16
PROMPT = 12


def _prefilled(engine: OnnxLLM, embeds: np.ndarray) -> np.ndarray:
    engine.reserve(PROMPT + STEPS + 1)
    return engine.prefill(embeds)


def _without_decode_graph(src, dst):
    """A copy of the bundle as written before the decode graph existed (segments only)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    del m["components"][DECODE]
    del m["files"]["decode.onnx"]
    (dst / "decode.onnx").unlink()
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
def test_decode_graph_matches_segments_and_reference(onnx_bundle, reference, tmp_path, llm, tower):
    bundle = Bundle.open(onnx_bundle(llm, tower))
    merged = OnnxLLM(bundle, "cpu")
    segments = OnnxLLM(Bundle.open(_without_decode_graph(bundle.path, tmp_path / "old")), "cpu")
    assert merged.decode_sess is not None and segments.decode_sess is None
    # the decode graph keeps onnxruntime's CPU arena (per-run mallocs cost 60 vs 34-37 ms/token
    # at P=800); the segments do not (RSS)
    assert merged.decode_sess.get_session_options().enable_cpu_mem_arena
    assert not any(s.get_session_options().enable_cpu_mem_arena for _, s in merged.segments)
    ref = reference(llm, tower)
    embeds = np.random.default_rng(1).standard_normal((PROMPT, bundle.config.llm.hidden_size)).astype(np.float32)
    cache = ref.model.llm.empty_cache()
    with torch.no_grad():
        x = ref.model.llm.run_layers(torch.from_numpy(embeds)[None], 0, bundle.config.llm.num_layers, 0, cache)
        want = ref.model.llm.logits(x[0, -1]).numpy()
    first = _prefilled(merged, embeds)
    assert np.abs(_prefilled(segments, embeds) - first).max() == 0      # prefill: the same segments
    merged.segments = []      # decoding must not touch the segments: one decode-graph run per token
    d_ref, d_seg, tokens = 0.0, 0.0, []
    got = first
    for step in range(STEPS):
        assert int(np.argmax(got)) == int(np.argmax(want)), step
        tok = int(np.argmax(want))
        tokens.append(tok)
        want = ref.decode_step(tok, PROMPT + step, cache).numpy()
        got, seg = merged.decode(tok), segments.decode(tok)
        d_ref, d_seg = max(d_ref, np.abs(got - want).max()), max(d_seg, np.abs(got - seg).max())
    print(f"{llm}/{tower}: decode graph vs reference {d_ref:.2e}, vs segments {d_seg:.2e}, tokens {tokens}")
    # the decode graph attends through GroupQueryAttention, the segments through MatMul/Softmax:
    # fp32 sums in another order (2.7e-5 / 1.9e-5 here, the segments' own distance to the
    # reference is 2.3e-5 / 3.1e-5), so both meet the fidelity gate rather than bit equality
    assert merged.head_major and not segments.head_major
    assert d_ref <= 1e-4 and d_seg <= 1e-4
    assert merged.length == segments.length == PROMPT + STEPS


def test_argmax_output_is_the_greedy_token(onnx_bundle):
    bundle = Bundle.open(onnx_bundle("phi3", "so400m"))
    engine = OnnxLLM(bundle, "cpu")
    comp = bundle.component(DECODE)
    assert comp.outputs[:2] == ["logits", "token"]
    c = bundle.config.llm
    rng = np.random.default_rng(2)
    feeds = {"hidden": rng.standard_normal((1, 1, c.hidden_size)).astype(np.float32),
             "cos_cache": np.ones((8, c.head_dim // 2), np.float32), "sin_cache": np.zeros((8, c.head_dim // 2), np.float32),
             "seqlens_k": np.array([3], np.int32), "total_sequence_length": np.array(4, np.int32)}
    assert set(comp.inputs) == set(feeds) | {f"past_{k}_{i}" for k in "kv" for i in range(c.num_layers)}
    for i in range(c.num_layers):       # the whole (1,kv,C,hd) cache, 3 rows cached
        for kind in "kv":
            feeds[f"past_{kind}_{i}"] = rng.standard_normal((1, c.num_kv_heads, 8, c.head_dim)).astype(np.float32)
    logits, token = engine.decode_sess.run(["logits", "token"], feeds)
    assert token.dtype == np.int64 and token.shape == (1,) and int(token[0]) == int(np.argmax(logits[0]))


def test_llm_weights_are_stored_once(onnx_bundle):
    """Segments and decode graph reference the same bytes of llm.onnx.data; the manifest lists
    and hashes both files."""
    path = onnx_bundle("phi3", "so400m")
    bundle = Bundle.open(path)
    m = bundle.manifest
    assert m.components[DECODE].files == ("decode.onnx", SHARED_DATA)
    segs = [m.components[n] for n in bundle.component_names("segment_")]
    assert all(c.files[1:] == (SHARED_DATA,) for c in segs)
    for f in ("decode.onnx", SHARED_DATA):
        assert m.files[f]["sha256"] == sha256_file(path / f)

    def ranges(file):
        model = onnx.load(str(path / file), load_external_data=False)
        ext, inline = set(), 0
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                assert info["location"] == SHARED_DATA
                ext.add((int(info["offset"]), int(info["length"])))
            else:
                assert len(t.raw_data) < INLINE_BYTES, t.name     # only shapes and small vectors inline
                inline += 1
        return ext, inline
    decode_ranges, _ = ranges("decode.onnx")
    seg_ranges = set().union(*(ranges(c.file)[0] for c in segs))
    assert decode_ranges == seg_ranges and decode_ranges
    # the shared file holds each weight once (plus page alignment), not a second copy
    weights = sum(n for _, n in seg_ranges)
    size = (path / SHARED_DATA).stat().st_size
    assert weights <= size < weights + 4096 * len(seg_ranges)
    graphs = sum((path / f).stat().st_size for f in ["decode.onnx"] + [c.file for c in segs])
    assert graphs < 0.5 * size      # the graph files carry structure, not the weights again


def test_tampered_shared_weights_are_refused(onnx_bundle, tmp_path):
    from fusion_edge.runtime.errors import BundleFileError
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle("phi3", "so400m"), dst)
    with open(dst / SHARED_DATA, "r+b") as f:
        f.seek(8192)
        byte = f.read(1)
        f.seek(8192)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleFileError, match=SHARED_DATA):
        Bundle.open(dst)


@pytest.mark.slow
def test_bundle_without_decode_graph_answers_the_same(onnx_bundle, images, tmp_path):
    new = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    old = Pipeline.open(_without_decode_graph(onnx_bundle("phi3", "so400m"), tmp_path / "old"), device="cpu")
    assert new.llm.decode_sess is not None and old.llm.decode_sess is None
    q = "What is on the left?"
    assert new.ask(new.look(images["wide"]), q, max_new_tokens=12) == \
        old.ask(old.look(images["wide"]), q, max_new_tokens=12)
    assert new.last_result.token_ids == old.last_result.token_ids


def test_greedy_steps_take_the_graphs_argmax(onnx_bundle):
    """decode_greedy (the in-graph argmax, logits left where they ran) gives the argmax of
    decode()'s logits at every step, and advances the cache the same way."""
    from fusion_edge.runtime.backends import GreedyDecode
    bundle = Bundle.open(onnx_bundle("phi3", "so400m"))
    greedy, full = OnnxLLM(bundle, "cpu"), OnnxLLM(bundle, "cpu")
    assert isinstance(greedy, GreedyDecode)
    embeds = np.random.default_rng(3).standard_normal((PROMPT, bundle.config.llm.hidden_size)).astype(np.float32)
    tok = int(np.argmax(_prefilled(greedy, embeds)))
    assert tok == int(np.argmax(_prefilled(full, embeds)))
    tokens = []
    for _ in range(STEPS):
        want = int(np.argmax(full.decode(tok)))
        tok = greedy.decode_greedy(tok)
        assert tok == want
        tokens.append(tok)
    assert greedy.length == full.length == PROMPT + STEPS and len(set(tokens)) > 1


@pytest.mark.slow
def test_greedy_ask_decodes_through_the_argmax_only(onnx_bundle, images, monkeypatch):
    """A greedy ask never asks the engine for logits after the prefill; sampling does."""
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    scene, q = pipe.look(images["wide"]), "What is on the left?"
    want = pipe.ask(scene, q, max_new_tokens=8)
    ids = pipe.last_result.token_ids
    assert len(ids) > 1       # decode steps happened

    def no_logits(token_id):
        raise AssertionError("greedy decoding asked for the logits")
    monkeypatch.setattr(pipe.llm, "decode", no_logits)
    assert pipe.ask(scene, q, max_new_tokens=8) == want and pipe.last_result.token_ids == ids
    with pytest.raises(AssertionError, match="asked for the logits"):
        pipe.ask(scene, q, max_new_tokens=8, temperature=0.7, seed=1)
