"""INT8 bundles of a tiny checkpoint: `fusion-export --precision int8`, sizes, figures, the gate.

One int8 bundle is built through the command line from the session's fp32 bundle and a
small recording; the broken-quantization test copies it, forces its weight scales wrong
and runs the real gate on it.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest

from fusion_edge.calibration.builtin import builtin_pairs
from fusion_edge.quantize import agreement, graph_io
from fusion_edge.runtime.bundle import Bundle, BundleWriter
from fusion_edge.runtime.errors import ExportError
from fusion_edge.runtime.pipeline import Pipeline

# one xdist worker: its module fixtures export the int8 bundle once
pytestmark = pytest.mark.xdist_group("test_quantize")

STEPS = 6
# W8A8 weights are int8 in every flavour since d59cb5e (uint8 before it); either is one byte.
ONE_BYTE_WEIGHTS = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)


@pytest.fixture(scope="module")
def fp32(verified_fp32):
    return verified_fp32                  # quantized bundles are built only from a verified fp32 bundle


@pytest.fixture(scope="module")
def q8(fp32, recording, tmp_path_factory):
    """`fusion-export <fp32 bundle> --target onnx --precision int8 --calib <recording>` → (bundle, stdout)."""
    import contextlib
    import io

    from fusion_edge.cli import main
    out = tmp_path_factory.mktemp("q8b") / "q8"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", str(fp32), "--target", "onnx", "--precision", "int8", "--calib", str(recording.path),
                   "--eval-cases", "1", "--verify-steps", str(STEPS), "-o", str(out), "--quiet"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.mark.slow
def test_cli_export_prints_plan_sizes_and_figures(q8):
    out, text = q8
    assert "precision plan for onnxruntime-cpu" in text
    assert "weight bytes, fp32 → quantized" in text
    assert "agreement with the fp32 pipeline on 1 held-out cases" in text and "gate: passed" in text
    assert f"bundle written to {out}" in text


def test_int8_bundle_loads_and_answers(q8, images):
    out, _ = q8
    b = Bundle.open(out)                                # every file hashed and present
    assert b.precision == "int8" and b.target == "onnx"
    comps = b.components
    assert comps["vision"]["precision"] == "int8" and comps["segment_04"]["precision"] == "int8"
    assert comps["embed"]["precision"] == "int8-weight"
    pipe = Pipeline.open(out, device="cpu")
    text = pipe.ask(pipe.look(images["wide"]), "What is in the picture?", max_new_tokens=5)
    assert isinstance(text, str) and 1 <= len(pipe.last_result.token_ids) <= 5
    assert np.isfinite(pipe.last_result.first_logits).all()


def _weight_elements(model, op_type: str, index: int, types: tuple | None = None) -> int:
    """Elements of the initializers that feed input `index` of every `op_type` node (of `types`, if given)."""
    inits = {t.name: t for t in model.graph.initializer}
    return sum(int(np.prod(inits[n.input[index]].dims)) for n in model.graph.node
               if n.op_type == op_type and n.input[index] in inits
               and (types is None or inits[n.input[index]].data_type in types))


def test_int8_weights_are_a_quarter(q8, fp32):
    out, _ = q8
    q = json.loads((out / "fusion_bundle.json").read_text())["quantization"]
    totals = q["weight_bytes_total"]
    assert totals["llm"]["fp32"] / totals["llm"]["quantized"] > 3.5          # int8 + fp32 norms and scales
    assert totals["align"]["fp32"] / totals["align"]["quantized"] > 3.4
    assert totals["embed"]["fp32"] / totals["embed"]["quantized"] > 3.7
    # tiny tower: pos. embeddings and the patch Conv stay fp32 (dynamic int8 leaves the Conv float: raw pixels);
    # every projection's weight is int8, one byte per fp32 element (below)
    assert totals["vision"]["fp32"] / totals["vision"]["quantized"] > 2.3
    vsrc, vdst = graph_io.load(fp32 / "vision.onnx"), graph_io.load(out / "vision.onnx")
    vision_int8 = _weight_elements(vdst, "MatMulInteger", 1, (onnx.TensorProto.INT8,))
    assert vision_int8 == _weight_elements(vsrc, "MatMul", 1) > 0
    # the int8 weights of a segment hold exactly the fp32 MatMul weights' elements, one byte each
    src, dst = graph_io.load(fp32 / "segment_05.onnx"), graph_io.load(out / "segment_05.onnx")
    fp32_matmul = _weight_elements(src, "MatMul", 1)
    assert _weight_elements(dst, "DequantizeLinear", 0, ONE_BYTE_WEIGHTS) == fp32_matmul
    # on disk (graph file + its part of llm.onnx.data): ~3 bytes less per weight (tiny graphs: the node
    # structure is a fixed cost)
    saved = graph_io.stored_bytes(fp32 / "segment_05.onnx") - graph_io.stored_bytes(out / "segment_05.onnx")
    assert saved > 0.75 * 3 * fp32_matmul


def test_figures_and_exclusions_in_the_manifest(q8):
    out, _ = q8
    m = Bundle.open(out).manifest
    v = m["verification"]
    assert v["passed"] and not v["forced"] and v["cases"] == 1 and v["tokens_compared"] >= 1
    assert v["thresholds"] == agreement.GATES["int8"]
    assert 0.9 <= v["top1_agreement"] <= 1.0 and 0.99 <= v["logit_cosine_mean"] <= 1.0
    graphs = {"embed", "vision_global", "vision_main", *(f"align_{k:02d}" for k in range(10)),
              *(f"segment_{k:02d}" for k in range(11))}
    assert set(v["per_graph"]) == graphs
    assert all(0.99 < d["cosine_min"] <= 1.0 + 1e-9 and d["rel_error_max"] < 0.1 for d in v["per_graph"].values())
    seg = m["components"]["segment_10"]["quantization"]
    reasons = " ".join(e["reason"] for e in seg["excluded"])
    assert "activation × activation" in reasons and "lm_head" in reasons
    assert seg["weight_only_int8"] == ["/lm_head/MatMul"]
    assert m["quantization"]["calibration"]["samples"] == 2
    assert m["quantization"]["plan"]["components"]["llm"]["precision"] == "int8"


def test_agreement_with_the_pytorch_reference_is_recorded_and_gated_too(q8):
    """Beside the fp32 pipeline, the export compares the int8 bundle, teacher-forced, with the
    PyTorch reference of the checkpoint, and gates it with the same bounds."""
    out, stdout = q8
    v = Bundle.open(out).manifest["verification"]
    r = v["pytorch_reference"]
    assert "PyTorch reference" in r["reference"] and "fp32 ONNX pipeline" in v["reference"]
    assert r["passed"] and r["gate"] == [] and r["thresholds"] == v["thresholds"] == agreement.GATES["int8"]
    assert r["cases"] == v["cases"] == 1 and r["tokens_compared"] >= 1
    assert all(r[k] >= bound for k, bound in agreement.GATES["int8"].items())
    # the fp32 pipeline is the reference within 3e-5, so both see the same quantization error
    assert abs(r["logit_cosine_mean"] - v["logit_cosine_mean"]) < 1e-4
    assert "agreement with the PyTorch reference on 1 held-out cases" in stdout


def _force_scales_wrong(folder, factor: float = 8.0) -> int:
    """Multiply the weight scales of segments 00–09 by `factor` (a broken quantization)."""
    from onnx import numpy_helper
    n = 0
    for k in range(10):
        path = folder / f"segment_{k:02d}.onnx"
        model = graph_io.load(path)
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if (node.op_type == "DequantizeLinear" and node.input[0] in inits
                    and inits[node.input[0]].data_type in ONE_BYTE_WEIGHTS):
                t = inits[node.input[1]]
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
                n += 1
        graph_io.save(model, path)
    return n


def _broken_copy(good, w) -> dict:
    """Fill writer `w` with a copy of bundle `good` whose scales are forced wrong → manifest."""
    shutil.copytree(good, w.tmp, dirs_exist_ok=True)
    manifest = {k: v for k, v in Bundle.open(good).manifest.items()
                if k not in ("format", "format_version", "created", "files", "verification")}
    assert _force_scales_wrong(w.tmp) > 0
    return w.write_manifest(manifest)


@pytest.mark.slow
def test_gate_rejects_broken_scales_and_leaves_no_bundle(q8, fp32, tmp_path, caplog):
    from fusion_edge.quantize.onnx_quant import gate_folder
    from fusion_edge.targets import reference_answer
    good, _ = q8
    cases = [(img, q) for _, img, q in builtin_pairs("eval", 1)]
    caplog.set_level(logging.INFO, logger="fusion_edge")
    out = tmp_path / "broken"
    with pytest.raises(ExportError) as e:
        with BundleWriter(out) as w:                     # as quantize_bundle does
            _broken_copy(good, w)
            gate_folder(w.tmp, fp32, "int8", cases, STEPS, None, False, None, False, reference_answer(fp32))
            w.commit()
    assert "top1_agreement" in e.value.problem or "logit_cosine_mean" in e.value.problem
    assert "vs the PyTorch reference: " in e.value.problem       # both comparisons refuse it
    assert "--force" in e.value.fix
    assert sum("gate: FAILED" in line for line in caplog.messages) == 2
    assert not out.exists() and not list(tmp_path.glob(".broken.partial-*"))
    # --force keeps it, marked as below the gate
    with BundleWriter(tmp_path / "forced") as w:
        manifest = _broken_copy(good, w)
        figures = gate_folder(w.tmp, fp32, "int8", cases, STEPS, None, True, None, False)
        Bundle(w.tmp, manifest).update_manifest(verification=figures)
        kept = w.commit()
    v = Bundle.open(kept).manifest["verification"]
    assert v["forced"] and not v["passed"] and v["gate"]
    assert v["top1_agreement"] < agreement.GATES["int8"]["top1_agreement"] or \
        v["logit_cosine_mean"] < agreement.GATES["int8"]["logit_cosine_mean"]


def test_vision_tower_is_dynamic_int8_and_gated(q8):
    """The default int8 tower of the cpu flavour is dynamic int8 (no calibration; quantize/dynamic_int8.py):
    the manifest records the method in the plan and the component, the float nodes with their reasons, and
    the gate's per-graph figures for both of the tower's modes."""
    out, text = q8
    m = Bundle.open(out).manifest
    q = m["components"]["vision"]["quantization"]
    assert m["components"]["vision"]["precision"] == "int8"
    assert q["method"] == "dynamic" and q["calibration_samples"] == 0 and q["quantized_weights"] > 0
    reasons = " ".join(e["reason"] for e in q["excluded"])
    assert "activation × activation" in reasons and "patch embedding Conv" in reasons
    assert m["quantization"]["plan"]["components"]["vision"]["method"] == "dynamic"
    assert m["quantization"]["plan"]["components"]["align"]["method"] == "static"
    assert m["components"]["align_00"]["quantization"]["method"] == "static"
    assert "dynamic int8" in text                              # the printed plan says so
    per_graph = m["verification"]["per_graph"]
    for mode in ("vision_global", "vision_main"):              # closer than the static tower's ~3.5 % here
        assert per_graph[mode]["cosine_min"] > 0.999 and per_graph[mode]["rel_error_max"] < 0.05, per_graph[mode]


def _break_vision_scales(folder, factor: float = 8.0) -> int:
    """Multiply the dynamic int8 tower's weight scales by `factor` (a broken quantization) → count."""
    from onnx import numpy_helper
    path = folder / "vision.onnx"
    model = graph_io.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    n = 0
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            t = inits[node.input[1].removesuffix("_quantized") + "_scale"]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
            n += 1
    graph_io.save(model, path)
    return n


@pytest.mark.slow
def test_gate_rejects_a_broken_int8_tower(q8, fp32, tmp_path):
    """The int8 tower is gated like every quantized graph: its weight scales forced ×8 (everything else the
    good bundle's), the end-to-end gate refuses the bundle and the per-graph record shows the tower off."""
    from fusion_edge.quantize.onnx_quant import gate_folder
    good, _ = q8
    cases = [(img, q) for _, img, q in builtin_pairs("eval", 1)]
    with BundleWriter(tmp_path / "broken-tower") as w:
        shutil.copytree(good, w.tmp, dirs_exist_ok=True)
        manifest = {k: v for k, v in Bundle.open(good).manifest.items()
                    if k not in ("format", "format_version", "created", "files", "verification")}
        assert _break_vision_scales(w.tmp) > 0
        w.write_manifest(manifest)
        figures = gate_folder(w.tmp, fp32, "int8", cases, STEPS, None, True, None, False)
    assert not figures["passed"] and figures["forced"] and figures["gate"]
    assert figures["per_graph"]["vision_main"]["rel_error_max"] > 0.2
    assert figures["per_graph"]["segment_00"]["rel_error_max"] < 0.1      # the rest is the good bundle's


def test_gate_function_thresholds():
    f = {"top1_agreement": 0.95, "logit_cosine_mean": 0.995, "max_dlogit_first": 2.0}
    assert agreement.gate(f, "int8")[0]
    ok, reasons, bounds = agreement.gate(f, "int4", {"top1_agreement": 0.99, "max_dlogit_first": 1.0})
    assert not ok and len(reasons) == 2 and bounds["logit_cosine_mean"] == agreement.GATES["int4"]["logit_cosine_mean"]
    assert agreement.cosine([1, 0], [0, 1]) == 0.0 and agreement.rel_error([2, 0], [1, 0]) == 0.5


def test_cpu_int8_weights_are_signed_for_the_vnni_kernels(q8):
    """The cpu flavour is U8S8: uint8 activations × int8 weights, the only form onnxruntime's
    VNNI/AMX GEMM kernels take (U8U8, this flavour until 2026-12-07, ran at fp32 speed: 389 vs
    54 ms per 640×3072·3072×8192 product). A uint8 weight here is a speed regression; CPUs
    without VNNI stay exact through session.x64quantprecision (test below)."""
    out, _ = q8
    m = Bundle.open(out).manifest
    for name in ("vision", "align_00", "segment_00", "segment_10"):
        model = graph_io.load(out / m["components"][name]["files"][0])
        inits = {t.name: t for t in model.graph.initializer}
        weights = [inits[n.input[0]] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2
                   and inits[n.input[0]].data_type in ONE_BYTE_WEIGHTS]
        # the vision tower is dynamic int8 (DynamicQuantizeLinear → MatMulInteger): its weights are MatMulInteger's B
        weights += [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
        assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights), name
        assert not m["components"][name]["exact_qdq_on_cpu"]
    assert "int8 symmetric weights" in m["components"]["vision"]["quantization"]["scheme"]


@pytest.mark.slow
def test_the_non_vnni_path_computes_the_same_int8_logits(q8, images, monkeypatch):
    """The exact path of x86 CPUs without VNNI (session.x64quantprecision, forced here) gives the
    logits of the path this machine detects: both sum int8 products exactly in int32."""
    from fusion_edge.runtime import cpu_features
    from fusion_edge.runtime.pipeline import Pipeline
    from test_cpu_features import precise_entry
    out, _ = q8

    def first_logits(path: str):
        monkeypatch.setenv(cpu_features.ENV, path)
        pipe = Pipeline.open(out, device="cpu")
        try:
            assert precise_entry(pipe.llm.segments[0][1]) == ("1" if path == "precise" else "")
            pipe.ask(pipe.look(str(images["wide"])), "What is on the table?", max_new_tokens=2)
            return np.asarray(pipe.last_result.first_logits)
        finally:
            pipe.llm.close()
    detected = cpu_features.int8_path()
    precise = first_logits("precise")
    monkeypatch.delenv(cpu_features.ENV)
    assert cpu_features.int8_path() == detected
    np.testing.assert_allclose(precise, first_logits(detected if detected in ("vnni", "precise") else "precise"),
                               rtol=0, atol=1e-5)


def test_an_unverified_fp32_bundle_is_not_quantized(onnx_bundle, tmp_path, capsys):
    """The session's fp32 bundle is exported with --no-verify: int8 from it is refused, nothing written."""
    from fusion_edge.cli import main
    out = tmp_path / "q8"
    rc = main(["export", str(onnx_bundle("phi3", "so400m")), "--target", "onnx", "--precision", "int8",
               "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "quantized bundles are built only from a verified fp32 pipeline" in err and "fix:" in err
    assert not out.exists()


@pytest.mark.slow
def test_vision_precision_fp32_keeps_the_tower_and_quantizes_the_rest(fp32, recording, tmp_path, capsys):
    """--vision-precision fp32: the vision graph is the fp32 bundle's, byte for byte; alignment
    and LLM are int8 as planned. (Ungated here: the structure is under test; the gate is the
    same code as every int8 bundle's, and 1 case × 6 steps on the tiny model is one token from
    failing either way.)"""
    from fusion_edge.cli import main
    out = tmp_path / "q8v"
    rc = main(["export", str(fp32), "--target", "onnx", "--precision", "int8", "--calib", str(recording.path),
               "--vision-precision", "fp32", "--no-verify", "-o", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "unchanged fp32 graph" in text
    m, src = Bundle.open(out).manifest, Bundle.open(fp32).manifest
    assert m["components"]["vision"]["precision"] == "fp32"
    assert m["components"]["align_00"]["precision"] == "int8" and m["components"]["segment_04"]["precision"] == "int8"
    for f in src["components"]["vision"]["files"]:
        assert m["files"][f]["sha256"] == src["files"][f]["sha256"]
    assert m["quantization"]["plan"]["components"]["vision"]["precision"] == "fp32"


def test_segments_with_shared_weights_are_quantized_as_external_data(fp32):
    """The segments keep their weights in the shared llm.onnx.data, not in segment_NN.onnx.data:
    onnxruntime's calibrator must be told to write external data, or a segment above 2 GB
    (FUSION-X-3B's last one: 2.05 GB) fails to serialize."""
    assert graph_io.has_external_data(fp32 / "segment_01.onnx")
    assert not list(fp32.glob("segment_01.onnx*.data"))
    assert not graph_io.has_external_data(fp32 / "embed.onnx")


@pytest.mark.slow
def test_no_verify_quantizes_an_unverified_fp32_bundle_and_marks_it_unverified(onnx_bundle, recording, tmp_path,
                                                                               capsys):
    """--no-verify: no gate, so the source need not be verified (models whose fp32 reference does
    not fit the machine, bench/real_size.py); the int8 bundle is marked skipped and --strict
    refuses it."""
    from fusion_edge.cli import main
    from fusion_edge.runtime.errors import UnverifiedBundleError
    out = tmp_path / "q8nv"
    rc = main(["export", str(onnx_bundle("phi3", "so400m")), "--target", "onnx", "--precision", "int8",
               "--calib", str(recording.path), "--no-verify", "-o", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    b = Bundle.open(out)
    assert b.precision == "int8" and b.verification_status == "skipped"
    assert "gate" not in capsys.readouterr().out
    assert "exported with --no-verify" in Pipeline.open(out, device="cpu").verification_warning
    with pytest.raises(UnverifiedBundleError):
        Pipeline.open(out, device="cpu", strict=True)


def test_int8_decode_graph_is_chained_from_the_int8_segments(q8, decode_parity, tmp_path):
    out, _ = q8
    diff, (merged, segments), comp = decode_parity(out, tmp_path)
    assert comp["precision"] == "int8" and comp["files"] == ["decode.onnx", "llm.onnx.data"]
    assert comp["attention"] == "GroupQueryAttention" and comp["kv_layout"] == "BNSH"      # CPU flavour
    assert not (out / "segment_04.onnx.data").exists() and (out / "llm.onnx.data").is_file()
    assert diff <= 1e-5 and merged == segments
