"""Every shipped graph gated (issue 24): the decode graph's CUDA twin against the decode graph,
vision.gguf against the checkpoint's vision side, TensorRT engines' figures refused below the
gate (runtime/graph_gates.py, export/vision_gguf_gate.py, export/trt_engines.py)."""
from __future__ import annotations

import argparse
import json
import logging
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fusion_edge.runtime.bundle import MANIFEST, Bundle, sha256_file
from fusion_edge.export.decode_graph import DECODE, DECODE_CONCAT, SHARED_DATA
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.graph_gates import GRAPH_GATES, TWIN_KEY, VISION_KEY, gate_decode_twin

# one xdist worker: its module fixture measures the engines' figures once
pytestmark = pytest.mark.xdist_group("test_graph_gates")


# ---- the decode graph's twin --------------------------------------------------------------------
def _break_twin(src, dst, scale: float = 1.5):
    """A copy of the bundle whose decode_concat.onnx holds one MatMul weight of its last layer
    scaled, inline (decode.onnx and the segments keep the shared, unchanged bytes)."""
    shutil.copytree(src, dst)
    path = dst / f"{DECODE_CONCAT}.onnx"
    model = onnx.load(str(path), load_external_data=False)
    weights = [t for t in model.graph.initializer if t.external_data and len(t.dims) == 2]
    t = weights[-2]                                  # a projection, not the lm_head (the last one)
    onnx.external_data_helper.load_external_data_for_tensor(t, str(dst))
    arr = numpy_helper.to_array(t) * np.float32(scale)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save_model(model, str(path))
    assert {x.external_data[0].value for x in model.graph.initializer if x.external_data} == {SHARED_DATA}
    m = json.loads((dst / MANIFEST).read_text())
    m["files"][path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (dst / MANIFEST).write_text(json.dumps(m))
    return Bundle.open(dst)


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
def test_twin_decodes_like_the_decode_graph(onnx_bundle, llm, tower):
    bundle = Bundle.open(onnx_bundle(llm, tower))
    f = gate_decode_twin(bundle)
    print(f"{llm}/{tower} fp32 twin vs decode graph: max |Δlogit| {f['max_dlogit']:.2e} per step "
          f"{['%.1e' % d for d in f['per_step_max_dlogit']]}, top-1 {f['top1_agreement']:.0%}")
    assert f["passed"] and f["steps"] == 8 and f["cases"] == 2
    assert f["max_dlogit"] <= GRAPH_GATES["decode_twin"]["fp32"]["max_dlogit"] and f["top1_agreement"] == 1.0


def test_a_broken_twin_is_refused_and_forced_figures_say_so(onnx_bundle, tmp_path):
    broken = _break_twin(onnx_bundle("phi3", "so400m"), tmp_path / "broken")
    with pytest.raises(ExportError, match="decode_concat.onnx .* does not decode like decode.onnx: max_dlogit"):
        gate_decode_twin(broken)
    f = gate_decode_twin(broken, force=True)
    print(f"twin with one weight × 1.5: max |Δlogit| {f['max_dlogit']:.3g}, top-1 {f['top1_agreement']:.0%}")
    assert not f["passed"] and f["max_dlogit"] > 1e3 * GRAPH_GATES["decode_twin"]["fp32"]["max_dlogit"]
    assert f["gate"][0].startswith("max_dlogit")


def test_export_records_the_twin_figures_and_folds_a_forced_twin(onnx_bundle, tmp_path):
    """fill → manifest: the exported bundle's twin record keeps its gated figures; a forced
    failure turns the verification into "forced" (fold_into)."""
    from fusion_edge.runtime.graph_gates import fold_into, gate_decode_twin_fields, recorded_gate
    src = onnx_bundle("phi3", "so400m")
    fields = {k: v for k, v in json.loads((src / MANIFEST).read_text()).items()
              if k not in ("format", "format_version", "created", "files")}
    figures = gate_decode_twin_fields(src, fields)
    assert fields["components"][DECODE_CONCAT][TWIN_KEY] is figures and figures["passed"]
    no_twin = {**fields, "components": {n: c for n, c in fields["components"].items() if n != DECODE_CONCAT}}
    assert gate_decode_twin_fields(src, no_twin) is None
    broken = _break_twin(src, tmp_path / "broken")
    forced = gate_decode_twin(broken, force=True)
    broken.update_manifest(components={**{n: c.to_dict() for n, c in broken.components.items()},
                                       DECODE_CONCAT: {**broken.component(DECODE_CONCAT).to_dict(), TWIN_KEY: forced}})
    verification = {"passed": True, "gate": []}
    folded = fold_into(verification, recorded_gate(broken.path, DECODE_CONCAT, TWIN_KEY), DECODE_CONCAT)
    assert folded["passed"] is False and folded["gate"][0].startswith("decode_concat: max_dlogit")
    assert fold_into(verification, figures, DECODE_CONCAT) is verification


@pytest.mark.slow
def test_fp32_export_with_verification_gates_the_twin(tiny_checkpoint, tmp_path, caplog):
    from fusion_edge.export.bundle_export import export_bundle
    caplog.set_level(logging.INFO, logger="fusion_edge")
    out = export_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path / "b", "onnx", "fp32", steps=4,
                        progress=False)
    lines = caplog.messages
    bundle = Bundle.open(out)
    twin = bundle.component(DECODE_CONCAT)[TWIN_KEY]
    assert twin["passed"] and twin["against"] == DECODE and twin["bounds"] == GRAPH_GATES["decode_twin"]["fp32"]
    assert bundle.verification_status == "passed"
    assert any(line.startswith(f"{DECODE_CONCAT} vs {DECODE}") for line in lines)


# ---- vision.gguf --------------------------------------------------------------------------------
def _vision_gate(tiny_checkpoint, path, quant, force=False, llm="phi3", tower="so400m"):
    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.export.vision_gguf_gate import gate_vision_gguf
    ckpt = open_checkpoint(tiny_checkpoint(llm, tower))
    return gate_vision_gguf(ckpt, path, quant, ckpt.tokenizer(), force)


@pytest.mark.parametrize("quant,llm,tower", [("F32", "phi3", "so400m"), ("F32", "llama3", "siglip2"),
                                             ("F16", "phi3", "so400m"), ("Q8_0", "phi3", "so400m"),
                                             ("Q8_0", "llama3", "siglip2")])
@pytest.mark.slow
def test_vision_gguf_matches_the_checkpoint_vision_side(gguf_bundle, tiny_checkpoint, quant, llm, tower):
    folder = gguf_bundle(llm, tower, vision_quant=quant)
    f = _vision_gate(tiny_checkpoint, folder / "vision.gguf", quant, llm=llm, tower=tower)
    print(f"{llm}/{tower} vision.gguf {quant}: cosine ≥ {f['cosine_min']:.7f}, rel. error ≤ {f['max_rel_error']:.2e} "
          + str({n: (round(d['cosine_min'], 7), float('%.2e' % d['rel_error_max'])) for n, d in f["per_graph"].items()}))
    assert f["passed"] and not f["metadata_mismatches"]
    assert {"vision_global", "vision_main", "align_00"} <= set(f["per_graph"])
    if quant == "F32":      # the same bytes as the checkpoint
        assert f["max_rel_error"] == 0.0
    else:
        assert 0.0 < f["max_rel_error"] <= GRAPH_GATES["vision_gguf"][quant]["max_rel_error"]


def _corrupt(src_folder, dst, tensor: str, how):
    """A copy of vision.gguf with `tensor`'s stored data changed in place by how(array view)."""
    import gguf
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_folder / "vision.gguf", dst)
    reader = gguf.GGUFReader(str(dst), "r+")
    t = next(t for t in reader.tensors if t.name == tensor)
    how(t.data)
    reader.data.flush()
    return dst


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
@pytest.mark.slow
def test_a_corrupted_vision_gguf_tensor_is_refused(gguf_bundle, tiny_checkpoint, tmp_path, quant):
    folder = gguf_bundle("phi3", "so400m", vision_quant=quant)

    def negate(data):
        if data.dtype == np.float32:
            data[...] = -data
        else:                                  # Q8_0 blocks: the int8 quants after each f16 scale
            blocks = data.reshape(-1, 34)
            blocks[:, 2:] = (blocks[:, 2:].view(np.int8) * -1).view(np.uint8)
    bad = _corrupt(folder, tmp_path / quant / "vision.gguf", "vision.layers.0.fc1.weight", negate)
    with pytest.raises(ExportError, match=rf"vision.gguf \({quant}\) does not match the checkpoint"):
        _vision_gate(tiny_checkpoint, bad, quant)
    f = _vision_gate(tiny_checkpoint, bad, quant, force=True)
    print(f"vision.gguf {quant}, vision.layers.0.fc1.weight negated: cosine ≥ {f['cosine_min']:.4f}, "
          f"rel. error ≤ {f['max_rel_error']:.3g}")
    assert not f["passed"] and f["per_graph"]["vision_global"]["rel_error_max"] > 0.1


@pytest.mark.slow
def test_vision_gguf_with_other_hyperparameters_is_refused(gguf_bundle, tiny_checkpoint, tmp_path):
    import gguf
    bad = tmp_path / "vision.gguf"
    shutil.copyfile(gguf_bundle("phi3", "so400m") / "vision.gguf", bad)
    reader = gguf.GGUFReader(str(bad), "r+")
    reader.fields["fusion.window_size"].parts[-1][0] += 1
    reader.data.flush()
    with pytest.raises(ExportError, match="hyperparameters differ: fusion.window_size"):
        _vision_gate(tiny_checkpoint, bad, "F32")


@pytest.mark.slow
def test_gguf_export_with_verification_records_the_vision_gguf_figures(tiny_checkpoint, tmp_path):
    pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is not installed")
    from fusion_edge.export.gguf_bundle import export_gguf_bundle
    out = export_gguf_bundle(str(tiny_checkpoint("phi3", "so400m")), tmp_path / "g", "gguf", "fp32", steps=4,
                             progress=False)
    bundle = Bundle.open(out)
    f = bundle.component("native_vision")[VISION_KEY]
    assert f["passed"] and f["bounds"] == GRAPH_GATES["vision_gguf"]["F32"] and f["max_rel_error"] == 0.0
    assert bundle.verification_status == "passed"


# ---- TensorRT engines ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_figures(onnx_bundle, reference, tmp_path_factory):
    """Real figures of the shape verify_on_engines gets (export/verify.py verify_gated), measured
    on the CPU: the bundle as exported (within the gate), and a copy that decodes through a
    broken twin (greedy tokens differ: below the gate)."""
    from fusion_edge.export.verify import verify_gated
    from fusion_edge.runtime.pipeline import Pipeline
    good_path = onnx_bundle("phi3", "so400m")
    bad_path = tmp_path_factory.mktemp("engines") / "bad"
    broken = _break_twin(good_path, bad_path, scale=4.0)
    comps = {n: c.to_dict() for n, c in broken.components.items()}
    comps[DECODE] = {**comps[DECODE_CONCAT], "name": DECODE}          # the broken twin decodes
    broken.update_manifest(components=comps)
    out = {}
    for name, path in (("good", good_path), ("bad", bad_path)):
        pipe = Pipeline.open(path, device="cpu")
        out[name] = verify_gated(pipe, reference("phi3", "so400m"), "fp32", "trt", steps=6)
    assert out["good"]["passed"] and not out["bad"]["passed"]
    return out


@pytest.mark.slow
def test_engine_status_decision(engine_figures):
    from fusion_edge.export.trt_engines import engine_status
    assert engine_status(engine_figures["good"], force=False) is None
    assert engine_status(engine_figures["good"], force=True) is None
    assert engine_status(engine_figures["bad"], force=False) == "failed"
    assert engine_status(engine_figures["bad"], force=True) == "forced"


@pytest.mark.slow
def test_engines_below_the_gate_mark_the_bundle_failed_and_are_refused(onnx_bundle, engine_figures, tmp_path):
    from fusion_edge.export.trt_engines import record_engine_figures
    for name in ("good", "bad", "forced"):
        shutil.copytree(onnx_bundle("phi3", "so400m"), tmp_path / name)
    before = Bundle.open(tmp_path / "good").verification_status
    assert record_engine_figures(Bundle.open(tmp_path / "good"), engine_figures["good"]) == before
    with pytest.raises(ExportError, match="TensorRT engines .* do not match the reference .*greedy_agreement"):
        record_engine_figures(Bundle.open(tmp_path / "bad"), engine_figures["bad"])
    bad = Bundle.open(tmp_path / "bad")
    assert bad.verification_status == "failed" and bad.manifest["verification_tensorrt"]["passed"] is False
    assert record_engine_figures(Bundle.open(tmp_path / "forced"), engine_figures["bad"], force=True) == "forced"
    assert Bundle.open(tmp_path / "forced").verification_status == "forced"


def test_build_engines_takes_force():
    from fusion_edge.export.trt_engines import add_args
    p = argparse.ArgumentParser()
    add_args(p)
    assert p.parse_args(["b", "--model", "m", "--force"]).force and not p.parse_args(["b"]).force
