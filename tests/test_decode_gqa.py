"""The decode graph's attention as onnxruntime's GroupQueryAttention over the shared KV cache
(issue 13, export/decode_attention.py): one op per layer and nothing else reading the cache,
parity with the PyTorch reference at several cache lengths up to a full cache, the new rows
written in place into the head-major cache, and bundles whose decode graph still has the
Concat attention decoding as before."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from engine_helpers import greedy_tokens

from fusion_edge.runtime import rope
from fusion_edge.runtime.backends.kv_cache import HeadMajorCache, HostCache
from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
from fusion_edge.runtime.bundle import MANIFEST, Bundle, sha256_file
from fusion_edge.export.decode_attention import OP
from fusion_edge.export.decode_graph import DECODE, DECODE_CONCAT, SHARED_DATA, write_decode_graph

CASES = [("phi3", "so400m"), ("llama3", "siglip2")]       # kv heads = heads, and grouped (4 / 2)
# non-constant nodes per token after onnxruntime's optimizer: 452 on both tiny models and the
# bench preset (14 per layer: norms, projections, the op, residuals, the SiLU gate); the op
# with the graph's own rotary: 41 per layer, the Concat attention: 46 (bench preset)
NODES_PER_LAYER = 15


def _reference_cache(ref, embeds: np.ndarray, layers: int):
    cache = ref.model.llm.empty_cache()
    with torch.no_grad():
        ref.model.llm.run_layers(torch.from_numpy(embeds)[None], 0, layers, 0, cache)
    return cache


@pytest.mark.parametrize("llm,tower", CASES)
def test_decode_graph_attends_through_group_query_attention(onnx_bundle, tmp_path, llm, tower):
    path = onnx_bundle(llm, tower)
    bundle = Bundle.open(path)
    comp, L = bundle.component(DECODE), bundle.config.llm.num_layers
    assert comp["attention"] == OP and comp["kv_layout"] == "BNSH"
    graph = onnx.load(str(path / "decode.onnx"), load_external_data=False).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops[OP] == L and ops["Softmax"] == 0
    for i in range(L):          # the cache goes into the op and nowhere else; present_* come out of it
        for kind in "kv":
            readers = [n for n in graph.node if f"past_{kind}_{i}" in n.input]
            assert [n.op_type for n in readers] == [OP]
            assert f"present_{kind}_{i}" in readers[0].output
    assert not any(o.name.startswith("new_") for o in graph.output)
    # the op rotates q and k itself, from the position tables: no per-token cos/sin inputs
    assert {"cos_cache", "sin_cache"} <= set(comp.inputs) and not {"cos", "sin"} & set(comp.inputs)
    assert all(next(a.i for a in n.attribute if a.name == "do_rotary") == 1 for n in graph.node if n.op_type == OP)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    ort.InferenceSession(str(path / "decode.onnx"), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node
    nodes = sum(n.op_type != "Constant" for n in optimized)
    print(f"{llm}: {nodes} nodes per token after onnxruntime's optimizer ({nodes / L:.1f} per layer)")
    assert nodes <= NODES_PER_LAYER * L + 4


@pytest.mark.parametrize("llm,tower", CASES)
def test_parity_with_the_reference_up_to_a_full_cache(onnx_bundle, reference, llm, tower):
    """One decode step after P prompt rows, P from 1 to capacity − 1 (the step writes the
    cache's last row): logits within 1e-4 of PyTorch, the same greedy token; the cache never
    grows (capacity 256)."""
    bundle = Bundle.open(onnx_bundle(llm, tower))
    engine, ref = OnnxLLM(bundle, "cpu"), reference(llm, tower)
    c = bundle.config.llm
    engine.reserve(256)
    assert engine.capacity == 256 and isinstance(engine.cache, HeadMajorCache)
    buffers = [b.__array_interface__["data"][0] for b in engine.cache.k + engine.cache.v]
    rng = np.random.default_rng(5)
    worst = 0.0
    for P in (1, 37, 200, 255):
        embeds = rng.standard_normal((P, c.hidden_size)).astype(np.float32)
        tok = int(np.argmax(engine.prefill(embeds)))
        got = engine.decode(tok)
        cache = _reference_cache(ref, embeds, c.num_layers)
        want = ref.decode_step(tok, P, cache).numpy()
        d = float(np.abs(got - want).max())
        worst = max(worst, d)
        assert d <= 1e-4, (P, d)
        assert int(np.argmax(got)) == int(np.argmax(want)), P
        assert engine.length == P + 1
    print(f"{llm}/{tower}: decode step vs reference at P = 1, 37, 200, 255: max |Δlogit| {worst:.2e}")
    assert engine.capacity == 256
    assert [b.__array_interface__["data"][0] for b in engine.cache.k + engine.cache.v] == buffers


def test_cache_rows_are_written_in_place(onnx_bundle, reference):
    """The prefill's rows land in the (1,kv,C,hd) buffers in the head-major layout, each decode
    step writes row P of every head into the same buffers (the op's present_* is its past_*),
    the rows before P are untouched and the rows after stay empty."""
    llm, tower = "llama3", "siglip2"
    bundle = Bundle.open(onnx_bundle(llm, tower))
    c = bundle.config.llm
    engine, ref = OnnxLLM(bundle, "cpu"), reference(llm, tower)
    engine.reserve(64)
    P = 10
    embeds = np.random.default_rng(6).standard_normal((P, c.hidden_size)).astype(np.float32)
    tok = int(np.argmax(engine.prefill(embeds)))
    cache = _reference_cache(ref, embeds, c.num_layers)
    arrays = list(engine.cache.k) + list(engine.cache.v)
    for i in range(c.num_layers):
        for buf, want in ((engine.cache.k[i], cache[i][0]), (engine.cache.v[i], cache[i][1])):
            assert buf.shape == (1, c.num_kv_heads, engine.capacity, c.head_dim)
            assert np.abs(buf[:, :, :P] - want.numpy()).max() <= 1e-5
            assert not buf[:, :, P:].any()
    before = [b.copy() for b in arrays]
    for step in range(3):
        ref.decode_step(tok, P + step, cache)
        tok = engine.decode_greedy(tok)
        row = P + step
        for i in range(c.num_layers):
            for buf, want, old in ((engine.cache.k[i], cache[i][0], before[i]),
                                   (engine.cache.v[i], cache[i][1], before[c.num_layers + i])):
                assert np.array_equal(buf[:, :, :P], old[:, :, :P])
                assert np.abs(buf[:, :, row] - want.numpy()[:, :, row]).max() <= 1e-5
                assert buf[:, :, row].all()
                assert not buf[:, :, row + 1:].any()
    assert all(a is b for a, b in zip(arrays, list(engine.cache.k) + list(engine.cache.v)))


def test_segments_decode_over_the_head_major_cache(onnx_bundle):
    """Decoding through the segments with the head-major cache (their past rows transposed out,
    their new rows transposed in) gives the decode graph's tokens."""
    bundle = Bundle.open(onnx_bundle("llama3", "siglip2"))
    graph, segments = OnnxLLM(bundle, "cpu"), OnnxLLM(bundle, "cpu")
    for engine in (graph, segments):
        engine.reserve(40)
    segments.decode_sess = None           # cache already head-major: the segments bind copies
    assert isinstance(segments.cache, HeadMajorCache)
    embeds = np.random.default_rng(7).standard_normal((12, bundle.config.llm.hidden_size)).astype(np.float32)
    a, b = int(np.argmax(graph.prefill(embeds))), int(np.argmax(segments.prefill(embeds)))
    diff = 0.0
    for _ in range(8):
        la, lb = graph.decode(a), segments.decode(b)
        diff = max(diff, float(np.abs(la - lb).max()))
        a, b = int(np.argmax(la)), int(np.argmax(lb))
        assert a == b
    assert diff <= 1e-4
    for x, y in zip(graph.cache.k + graph.cache.v, segments.cache.k + segments.cache.v):
        assert np.abs(x - y).max() <= 1e-4


def _with_concat_decode_graph(src, dst):
    """A copy of the bundle as exported before GroupQueryAttention: decode.onnx chained from
    the same segments with their Concat attention, no `attention` / `kv_layout` keys."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    names = sorted(n for n in m["components"] if n.startswith("segment_"))
    models = [onnx.load(str(dst / m["components"][n]["files"][0]), load_external_data=False) for n in names]
    graph = write_decode_graph(models, dst)
    rec = m["components"][DECODE]
    for key in ("attention", "kv_layout"):
        del rec[key]
    rec.update(inputs=[v.name for v in graph.input], outputs=[v.name for v in graph.output])
    m["files"]["decode.onnx"] = {"sha256": sha256_file(dst / "decode.onnx"), "bytes": (dst / "decode.onnx").stat().st_size}
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


def test_concat_twin_for_cuda_shares_the_weights_and_decodes_the_same_tokens(onnx_bundle, tmp_path):
    """Beside the GroupQueryAttention graph the bundle keeps its Concat twin (onnxruntime's CUDA
    op is float16/bfloat16 only; OnnxLLM opens the twin on CUDA). The twin reads the same
    llm.onnx.data, has no contrib op, and — run here as the decode graph of a copy — decodes
    the same tokens over the row-major cache."""
    path = onnx_bundle("phi3", "so400m")
    bundle = Bundle.open(path)
    twin = bundle.component(DECODE_CONCAT)
    assert twin.files == (f"{DECODE_CONCAT}.onnx", SHARED_DATA) and "attention" not in twin
    graph = onnx.load(str(path / f"{DECODE_CONCAT}.onnx"), load_external_data=False).graph
    assert not any(n.op_type == OP for n in graph.node)
    assert {t.external_data[0].value for t in graph.initializer if t.external_data} == {SHARED_DATA}
    assert OnnxLLM(bundle, "cpu").gqa                       # the CPU opens the op's graph
    copy = tmp_path / "twin"
    shutil.copytree(path, copy)
    m = json.loads((copy / MANIFEST).read_text())
    m["components"][DECODE] = {**m["components"][DECODE_CONCAT], "name": DECODE}
    (copy / MANIFEST).write_text(json.dumps(m))
    engines = (OnnxLLM(bundle, "cpu"), OnnxLLM(Bundle.open(copy, check_hashes=False), "cpu"))
    assert not engines[1].gqa and engines[1].decode_sess is not None
    toks = [greedy_tokens(engine, seed=9) for engine in engines]
    assert toks[0] == toks[1] and len(set(toks[0])) > 1


def test_bundle_with_the_concat_decode_graph_still_decodes(onnx_bundle, tmp_path):
    """Back compat: a decode graph without the op (bundles exported before it) binds the
    row-major cache past/new as before, and decodes the same tokens."""
    path = onnx_bundle("llama3", "siglip2")
    new = OnnxLLM(Bundle.open(path), "cpu")
    old_bundle = Bundle.open(_with_concat_decode_graph(path, tmp_path / "old"))
    old = OnnxLLM(old_bundle, "cpu")
    assert "attention" not in old_bundle.component(DECODE) and old.decode_sess is not None
    assert not any(n.op_type == OP for n in onnx.load(str(tmp_path / "old" / "decode.onnx"),
                                                      load_external_data=False).graph.node)
    toks = [greedy_tokens(engine, seed=8) for engine in (new, old)]
    assert isinstance(new.cache, HeadMajorCache) and isinstance(old.cache, HostCache)
    assert old.cache.k[0].shape == (1, old.capacity, 2, 16)      # (1,C,kv,hd): rows bound as views
    assert toks[0] == toks[1] and len(set(toks[0])) > 1


@pytest.mark.parametrize("llm,tower", CASES)
def test_position_tables_are_the_decode_rows_of_cos_sin(onnx_bundle, llm, tower):
    """Row p of the op's tables is the first half of rope.cos_sin(c, p, 1), the row a decode
    step at position p used before (both halves of it are equal, the op's non-interleaved
    rotary reads one); for longrope across original_max_position_embeddings too."""
    c = Bundle.open(onnx_bundle(llm, tower)).config.llm
    orig = c.original_max_position_embeddings or (c.rope_scaling or {}).get("original_max_position_embeddings")
    rows = (orig or 256) + 64
    cos, sin = rope.position_tables(c, rows)
    assert cos.shape == sin.shape == (rows, c.head_dim // 2) and cos.flags.c_contiguous
    half = c.head_dim // 2
    for p in sorted({0, 1, 17, rows // 2, rows - 66, rows - 65, rows - 64, rows - 63, rows - 1}):
        want_cos, want_sin = rope.cos_sin(c, p, 1)
        assert np.array_equal(want_cos[0, :half], want_cos[0, half:]) and np.array_equal(want_sin[0, :half], want_sin[0, half:])
        assert np.array_equal(cos[p], want_cos[0, :half]) and np.array_equal(sin[p], want_sin[0, :half]), p
    if rope.rope_kind(c) == "longrope":        # rows before orig: short factors, not one block's long ones
        assert not np.array_equal(cos[:orig], rope.cos_sin(c, 0, rows)[0][:orig, :half])


def test_unpacked_form_matches_the_packed_one(onnx_bundle):
    """The fallback (q, k, v after the graph's own rotary, do_rotary = 0, per-token cos/sin)
    and the packed form with the op's rotary give the same layer outputs and cache rows."""
    from fusion_edge.export.decode_attention import attention_to_gqa
    path = onnx_bundle("llama3", "siglip2")
    bundle = Bundle.open(path)
    c = bundle.config.llm
    seg = bundle.component("segment_01")
    a, b = (int(x) for x in seg["layers"])
    forms = {}
    for packed in (True, False):
        model = onnx.load(str(path / seg.file), load_external_data=False)
        attention_to_gqa(model, packed=packed)
        ops = [n for n in model.graph.node if n.op_type == OP]
        assert len(ops) == b - a
        assert all(next(x.i for x in n.attribute if x.name == "do_rotary") == int(packed) for n in ops)
        onnx.save_model(model, str(path / f".gqa-{packed}.onnx"))
        try:
            forms[packed] = ort.InferenceSession(str(path / f".gqa-{packed}.onnx"), providers=["CPUExecutionProvider"])
        finally:
            (path / f".gqa-{packed}.onnx").unlink()
    assert {"cos", "sin"} <= {i.name for i in forms[False].get_inputs()}
    rng = np.random.default_rng(9)
    P, C = 5, 16
    hidden = rng.standard_normal((1, 1, c.hidden_size)).astype(np.float32)
    caches = {i: [rng.standard_normal((1, c.num_kv_heads, C, c.head_dim)).astype(np.float32) for _ in "kv"]
              for i in range(a, b)}
    out = {}
    for packed, sess in forms.items():
        cos, sin = rope.cos_sin(c, P, 1)
        tables = rope.position_tables(c, C)
        feeds = {"hidden": hidden, "seqlens_k": np.array([P], np.int32), "total_sequence_length": np.array(P + 1, np.int32),
                 **({"cos_cache": tables[0], "sin_cache": tables[1]} if packed else {"cos": cos, "sin": sin})}
        bufs = {i: [x.copy() for x in kv] for i, kv in caches.items()}
        io = sess.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        io.bind_output("hidden_out", "cpu")
        for i, (k, v) in bufs.items():
            for kind, buf in (("k", k), ("v", v)):
                ptr = buf.__array_interface__["data"][0]
                io.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, list(buf.shape), ptr)
                io.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, list(buf.shape), ptr)
        sess.run_with_iobinding(io)
        out[packed] = (io.get_outputs()[0].numpy(), bufs)
    assert np.abs(out[True][0] - out[False][0]).max() <= 1e-5
    for i in range(a, b):
        for j in range(2):
            x, y = out[True][1][i][j], out[False][1][i][j]
            assert np.abs(x - y).max() <= 1e-5 and not np.array_equal(x[:, :, P], caches[i][j][:, :, P])
            assert np.array_equal(x[:, :, :P], caches[i][j][:, :, :P]) and np.array_equal(x[:, :, P + 1:], caches[i][j][:, :, P + 1:])


def test_graph_of_another_form_keeps_the_concat_attention(onnx_bundle):
    """A segment whose attention is not the exported form (here: an Identity between the
    past input and its Transpose) is refused by the rewrite, and build_shared's chain then
    keeps every segment's Concat attention rather than mixing forms."""
    from onnx import helper

    from fusion_edge.export.decode_attention import NotRewritable, attention_to_gqa
    from fusion_edge.export.decode_graph import _with_gqa
    path = onnx_bundle("phi3", "so400m")
    bundle = Bundle.open(path)
    names = bundle.component_names("segment_")
    models = [onnx.load(str(path / bundle.component(n).file), load_external_data=False) for n in names[:2]]
    assert _with_gqa(models) is not None
    graph = models[1].graph
    reader = next(n for n in graph.node if n.op_type == "Transpose" and n.input[0].startswith("past_k_"))
    past = reader.input[0]
    reader.input[0] = past + "/copy"
    graph.node.insert(0, helper.make_node("Identity", [past], [past + "/copy"]))
    assert _with_gqa(models) is None
    with pytest.raises(NotRewritable, match="Identity"):
        attention_to_gqa(models[1])
