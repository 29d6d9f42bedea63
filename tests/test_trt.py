"""The TensorRT target on a machine without TensorRT: trt bundles are the TensorRT-ready ONNX
graphs, gated like the onnx ones, with profiles that cover every shape the runtime feeds,
engines `pending`, a stamp check that refuses engines of another platform, and a runtime
that answers on the CPU with a notice. (Building and running engines: tests/gpu/test_tensorrt.py.)"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fusion_edge.cli import main
from fusion_edge.runtime.bundle import Bundle, sha256_file
from fusion_edge.runtime.devices import Capabilities
from fusion_edge.runtime.errors import EngineMismatchError, EnginesPendingError, PromptError, TensorRTError
from fusion_edge.runtime.pipeline import Pipeline
from fusion_edge.runtime.prompt import build_prompt
from fusion_edge.runtime.trt import stamp
from fusion_edge.runtime.trt.profiles import covers, ort_shape_strings
from fusion_edge.runtime.trt.stamp import Platform

# one xdist worker: its module fixtures export the fp16, int8 and int4 trt bundles once
pytestmark = pytest.mark.xdist_group("test_trt")

ORIN = Platform("10.3.0", "Orin", (8, 7))
QUESTION = "What is on the table?"


@pytest.fixture(scope="module")
def trt16(tiny_checkpoint, work_dir, log_lines):
    """fp16 trt bundle exported from the checkpoint and verified against the reference."""
    from fusion_edge.targets import export_bundle
    with log_lines() as lines:
        out = export_bundle(str(tiny_checkpoint("phi3", "so400m")), work_dir / "trt" / "fp16", "trt", "fp16",
                            steps=4, progress=False)
    return out, lines


@pytest.fixture(scope="module")
def calib(verified_fp32, work_dir):
    from fusion_edge.calibration.calibrate import calibrate_bundle
    out = work_dir / "trt" / "calib"
    if not out.exists():
        calibrate_bundle(verified_fp32, out, samples=2, holdout=1, progress=False)
    return out


@pytest.fixture(scope="module")
def trt_q(verified_fp32, calib, work_dir, log_lines):
    """trt_q(precision) → (int8 / int4 trt bundle gated against the fp32 pipeline, export log)."""
    from fusion_edge.targets import export_bundle
    cache: dict = {}

    def make(precision: str):
        if precision not in cache:
            with log_lines() as lines:
                out = export_bundle(str(verified_fp32), work_dir / "trt" / precision, "trt", precision, steps=12,
                                    progress=False, calib=str(calib), eval_cases=1)
            cache[precision] = (out, lines)
        return cache[precision]
    return make


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# ---- export: the same graphs and gates as the onnx target, engines pending ---------------------
@pytest.mark.slow
def test_fp16_trt_bundle_passes_the_reference_gate_with_pending_engines(trt16):
    path, log = trt16
    b = Bundle.open(path)
    assert b.target == "trt" and b.precision == "fp16" and b.verification_status == "passed"
    figures = b.manifest["verification"]
    assert figures["passed"] and figures["top1_agreement"] >= 0.66 and np.isfinite(figures["max_dlogit"])
    assert b.manifest["engines"] == {"state": "pending"}
    assert b.manifest["tensorrt"]["plan"]["target"] == "tensorrt" and b.manifest["tensorrt"]["plan"]["sm"] == "8.7"
    assert all(c.precision == "fp16" for c in b.components.values())
    assert set(b.manifest["tensorrt"]["profiles"]) == set(b.components)
    assert any("engines: pending" in line and "build-engines" in line for line in log)


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.slow
def test_quantized_trt_bundles_pass_the_fp32_gate_and_the_reference(trt_q, tiny_checkpoint, tmp_path, precision):
    path, log = trt_q(precision)
    b = Bundle.open(path)
    assert b.target == "trt" and b.precision == precision and b.verification_status == "passed"
    assert b.manifest["quantization"]["flavour"] == "trt"
    assert b.manifest["verification"]["passed"] and b.manifest["engines"]["state"] == "pending"
    assert (b.manifest["tensorrt"]["int4_min_tensorrt"] == "10.0") == (precision == "int4")
    assert any("engines: pending" in line for line in log)
    copy = _copy(path, tmp_path)                # verify rewrites the manifest
    rc, out, _ = _run(["verify", str(copy), "--model", str(tiny_checkpoint("phi3", "so400m")), "--steps", "3"])
    assert rc == 0, out
    ref = Bundle.open(copy).manifest["reference_comparison"]
    assert ref["passed"] and np.isfinite(ref["max_dlogit"]) and ref["top1_agreement"] >= 0.5


# ---- profiles cover what the runtime feeds ----------------------------------------------------
class _Binding:
    """IO binding that notes the shape of every input bound (then binds it for real)."""

    def __init__(self, inner, shapes: dict):
        self.inner, self.shapes = inner, shapes

    def bind_cpu_input(self, name, arr):
        self.shapes[name] = tuple(arr.shape)
        return self.inner.bind_cpu_input(name, arr)

    def bind_input(self, name, device, device_id, dtype, shape, ptr):
        self.shapes[name] = tuple(shape)
        return self.inner.bind_input(name, device, device_id, dtype, shape, ptr)

    def __getattr__(self, key):
        return getattr(self.inner, key)


class _Recording:
    """A real onnxruntime session whose every run notes its input shapes under the graph's name."""

    def __init__(self, sess, graph: str, calls: dict):
        self.sess, self.graph, self.calls = sess, graph, calls

    def run(self, outputs, feeds, *args):
        self.calls[self.graph].append({k: tuple(np.shape(v)) for k, v in feeds.items()})
        return self.sess.run(outputs, feeds, *args)

    def io_binding(self):
        return _Binding(self.sess.io_binding(), {})

    def run_with_iobinding(self, binding, *args):
        self.calls[self.graph].append(dict(binding.shapes))
        return self.sess.run_with_iobinding(binding.inner, *args)

    def __getattr__(self, key):
        return getattr(self.sess, key)


def _question_of_length(pipe, q: int, target: int) -> str:
    """The longest question of repeated words whose prompt (q latents) has at most `target` tokens."""
    def length(n):
        return build_prompt(pipe.tokenizer, pipe.cfg.template, " ".join(["table"] * n) + "?", pipe.image_tokens,
                            q).seq_len
    lo, hi = 1, target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if length(mid) <= target else (lo, mid - 1)
    return " ".join(["table"] * lo) + "?"


@pytest.mark.slow
def test_profiles_cover_the_shortest_and_longest_prompt_and_the_longest_context(trt_q, images, monkeypatch):
    from fusion_edge.runtime.backends import ort_session
    path, _ = trt_q("int8")
    calls: dict = defaultdict(list)
    real = ort_session.make_session
    monkeypatch.setattr(ort_session, "make_session",
                        lambda p, *a, **k: _Recording(real(p, *a, **k), Path(p).stem, calls))
    pipe = Pipeline.open(path, device="cpu")
    ctx, qs = pipe.bundle.options["max_context"], pipe.cfg.query_lens
    scene = pipe.look(images["wide"])
    pipe.ask(scene, "a", max_new_tokens=2, query_len=min(qs))                     # shortest prompt
    longest = _question_of_length(pipe, max(qs), ctx)
    layout = build_prompt(pipe.tokenizer, pipe.cfg.template, longest, pipe.image_tokens, max(qs))
    assert ctx - 8 <= layout.seq_len <= ctx
    pipe.ask(scene, longest, max_new_tokens=1, query_len=max(qs))                 # longest prompt
    shorter = build_prompt(pipe.tokenizer, pipe.cfg.template, _question_of_length(pipe, max(qs), ctx - 8),
                           pipe.image_tokens, max(qs))
    pipe.prefill(scene, shorter, ctx - shorter.seq_len + 1)                       # the longest context: decode
    while pipe.llm.length < ctx:                                                  # until the cache is full
        pipe.llm.decode(1)
    with pytest.raises(PromptError, match="context of"):
        pipe.ask(scene, longest, max_new_tokens=ctx - layout.seq_len + 2, query_len=max(qs))
    profiles = pipe.bundle.manifest["tensorrt"]["profiles"]
    assert set(calls) == set(profiles)
    def span(graph, name, axis):          # (smallest, largest) size of one axis over all runs
        sizes = [shapes[name][axis] for shapes in calls[graph] if name in shapes]
        return min(sizes), max(sizes)
    # the prefill runs the segments on an empty cache; decoding runs the decode graph, up to
    # the full context (before the decode graph, the segments covered both: (0, ctx - 1))
    assert span("segment_00", "past_k_0", 1) == (0, 0) and span("decode", "past_k_0", 1)[1] == ctx - 1
    assert span("segment_10", "hidden", 1)[1] >= ctx - 8 and span("embed", "ids", 1)[0] == 1
    assert span("align_00", "latents", 0) == (min(qs), max(qs))
    assert span("vision", "pixels", 0) == (1, 4) and span("vision", "instruct_embeds", 1)[0] == 0
    for name, runs in calls.items():
        for shapes in runs:
            assert covers(profiles[name], shapes) == [], (name, shapes)


def test_profile_option_strings_and_the_coverage_check():
    prof = {"hidden": {"min": [1, 1, 64], "opt": [1, 1, 64], "max": [1, 2048, 64]}}
    assert ort_shape_strings(prof) == {"trt_profile_min_shapes": "hidden:1x1x64",
                                       "trt_profile_opt_shapes": "hidden:1x1x64",
                                       "trt_profile_max_shapes": "hidden:1x2048x64"}
    assert covers(prof, {"hidden": (1, 2048, 64)}) == []
    assert covers(prof, {"hidden": (1, 2049, 64)}) == ["hidden: shape [1, 2049, 64] outside [[1, 1, 64], [1, 2048, 64]]"]
    assert covers(prof, {"cos": (3, 16)}) == ["cos: no profile entry"]


# ---- the engine stamp -------------------------------------------------------------------------
def _built(folder: Path, platform: Platform = ORIN) -> dict:
    """A built stamp over fake engine bytes in `folder`/engines (the stamp check is pure logic)."""
    files = {}
    for graph in ("vision", "segment_00"):
        f = folder / "engines" / graph / f"{graph}.engine"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(graph.encode() * 100)
        files[graph] = {f.relative_to(folder).as_posix(): sha256_file(f)}
    engines = stamp.pending()
    for i, (graph, fs) in enumerate(files.items()):
        engines = stamp.record_graph(engines, platform, graph, fs, i == len(files) - 1, "2026-11-30T00:00:00Z")
    return engines


def test_stamp_accepts_its_own_platform_and_refuses_every_mismatch(tmp_path):
    engines = _built(tmp_path)
    assert engines["state"] == "built" and engines["sm"] == "8.7" and set(engines["graphs"]) == {"vision", "segment_00"}
    assert stamp.check_stamp(engines, ORIN, tmp_path, sha256_file) == []
    assert "same SM 8.7" in stamp.check_stamp(engines, Platform("10.3.0", "Orin Nano", (8, 7)), tmp_path,
                                              sha256_file)[0]
    cases = [(Platform("10.4.0", "Orin", (8, 7)), "TensorRT 10.3.0; this machine has TensorRT 10.4.0"),
             (Platform("10.3.0", "RTX 3070", (8, 6)), "SM 8.7 (Orin); this GPU is SM 8.6 (RTX 3070)")]
    for platform, words in cases:
        with pytest.raises(EngineMismatchError, match=re.escape(words)) as e:
            stamp.check_stamp(engines, platform, tmp_path, sha256_file)
        assert e.value.fix == f"fusion-edge build-engines {tmp_path} --rebuild"
    engine = tmp_path / "engines" / "vision" / "vision.engine"
    engine.write_bytes(b"tampered")
    with pytest.raises(EngineMismatchError, match="does not match its sha256"):
        stamp.check_stamp(engines, ORIN, tmp_path, sha256_file)
    engine.unlink()
    with pytest.raises(EngineMismatchError, match="engines/vision/vision.engine of graph vision is missing"):
        stamp.check_stamp(engines, ORIN, tmp_path, sha256_file)
    assert stamp.check_stamp(stamp.pending(), Platform("9.0.0", "x", (7, 5)), tmp_path, sha256_file) == []


def test_a_record_from_another_platform_is_dropped_not_mixed(tmp_path):
    engines = _built(tmp_path)
    other = stamp.record_graph(engines, Platform("10.4.0", "Orin", (8, 7)), "embed", {"engines/embed/e": "00"},
                               False, "now")
    assert set(other["graphs"]) == {"embed"} and other["state"] == "partial" and other["tensorrt_version"] == "10.4.0"


@pytest.mark.slow
def test_opening_with_tensorrt_checks_the_stamp_before_any_session(trt_q, tmp_path):
    copy = _copy(trt_q("int8")[0], tmp_path)
    b = Bundle.open(copy)
    b.update_manifest(engines=_built(copy))
    here = Capabilities(("CPUExecutionProvider",), trt=Platform("10.4.1", "Orin", (8, 7)))
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.3.0; this machine has TensorRT 10.4.1"):
        Pipeline.open(copy, device="tensorrt", capabilities=here)
    with pytest.raises(EngineMismatchError, match="SM 8.7"):
        Pipeline.open(copy, capabilities=Capabilities(trt=Platform("10.3.0", "RTX 4090", (8, 9))))  # auto
    b.update_manifest(engines=stamp.pending())
    with pytest.raises(EnginesPendingError, match="--no-build") as e:
        Pipeline.open(copy, capabilities=Capabilities(trt=ORIN), no_build=True)
    assert "build-engines" in e.value.fix


# ---- no TensorRT here: the same graphs on the CPU, with a notice ------------------------------
@pytest.mark.slow
def test_ask_on_a_trt_bundle_without_tensorrt_answers_with_the_notice(trt_q, images):
    path = trt_q("int8")[0]
    rc, out, err = _run(["ask", "--bundle", str(path), "--image", str(images["wide"]), "--question", QUESTION,
                         "--max-new-tokens", "4", "--json"])
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["devices"] == {"vision": "cpu", "align": "cpu", "llm": "cpu"} and answer["token_ids"]
    assert "TensorRT is not available here" in answer["device_notice"] and "engines pending" in answer["device_notice"]
    assert err.count("notice: TensorRT is not available here") == 1
    pipe = Pipeline.open(path, device="cpu")
    assert pipe.placement.describe()["notice"] == pipe.device_notice
    asked = Pipeline.open(path, device="cpu", capabilities=Capabilities(trt=ORIN))   # TensorRT here, CPU asked for
    assert asked.devices["llm"] == "cpu" and asked.device_notice is None


def test_tensorrt_device_and_build_engines_need_tensorrt(trt_q, onnx_bundle, images):
    path = str(trt_q("int8")[0])
    rc, _, err = _run(["ask", "--bundle", path, "--image", str(images["wide"]), "--question", QUESTION,
                       "--device", "tensorrt"])
    assert rc == 2 and "error: the vision part (onnxruntime) cannot run on 'tensorrt'" in err
    assert "fix: install onnxruntime-gpu built with TensorRT" in err and "Traceback" not in err
    rc, _, err = _run(["build-engines", path])
    assert rc == 2 and "no TensorRT execution provider is usable here" in err and "fix:" in err
    rc, _, err = _run(["build-engines", str(onnx_bundle("phi3", "so400m"))])
    assert rc == 2 and "is a onnx bundle; engines are built for trt bundles" in err
    with pytest.raises(TensorRTError):
        Pipeline.open(path, llm_device="tensorrt")


# ---- placement and the TensorRT EP options ------------------------------------------------------
ONNX = {"vision": "onnxruntime", "align": "onnxruntime", "llm": "onnxruntime"}
GGUF = {"vision": "onnxruntime", "align": "onnxruntime", "llm": "llama.cpp"}
GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize("req,backends,prefer,want", [
    ({"vision": "auto", "align": "auto", "llm": "auto"}, ONNX, True, ("tensorrt", "tensorrt", "tensorrt")),
    ({"vision": "auto", "align": "auto", "llm": "auto"}, ONNX, False, ("cuda", "cuda", "cuda")),
    ({"vision": "auto", "align": "cpu", "llm": "tensorrt"}, ONNX, False, ("cuda", "cpu", "tensorrt")),
    ({"vision": "auto", "align": "auto", "llm": "auto"}, GGUF, True, ("tensorrt", "tensorrt", "cpu")),
])
def test_tensorrt_in_the_resolution_table(req, backends, prefer, want):
    from fusion_edge.runtime.devices import resolve_devices
    got = resolve_devices(req, backends, Capabilities(GPU, False, ORIN), prefer_trt=prefer)
    assert tuple(got[c] for c in ("vision", "align", "llm")) == want


def test_tensorrt_request_without_tensorrt_names_the_part_and_the_fix():
    from fusion_edge.runtime.devices import resolve_devices
    with pytest.raises(TensorRTError, match="the llm part") as e:
        resolve_devices({"vision": "cpu", "align": "cpu", "llm": "tensorrt"}, ONNX,
                        Capabilities(("CUDAExecutionProvider", "CPUExecutionProvider")))
    assert "docs/tensorrt.md" in e.value.fix
    with pytest.raises(TensorRTError, match="TensorRT runs ONNX parts only"):
        resolve_devices({"vision": "cpu", "align": "cpu", "llm": "tensorrt"}, GGUF, Capabilities(GPU, True, ORIN))


def test_each_graph_gets_its_profile_and_engine_folder(trt_q):
    from fusion_edge.runtime.backends.ort_session import provider_chain
    from fusion_edge.runtime.trt.ep import graph_chain
    b = Bundle.open(trt_q("int8")[0])
    chain = provider_chain("tensorrt", trt_provider="TensorrtExecutionProvider")
    assert [p if isinstance(p, str) else p[0] for p in chain] == list(GPU)
    providers, config = graph_chain(b, b.component("segment_03"), chain, dump_context=True)
    name, opts = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == chain[1:] and config == {}
    prof = b.manifest["tensorrt"]["profiles"]["segment_03"]
    assert opts["trt_profile_max_shapes"] == ort_shape_strings(prof)["trt_profile_max_shapes"]
    assert opts["trt_engine_cache_path"] == str(b.path / "engines" / "segment_03")
    assert opts["trt_ep_context_file_path"].endswith("engines/segment_03/segment_03_ctx.onnx")
    assert opts["trt_int8_enable"] == "1" and opts["trt_fp16_enable"] == "1" and opts["trt_timing_cache_enable"] == "1"
    runtime_opts = graph_chain(b, b.component("segment_03"), chain)[0][0][1]
    assert "trt_dump_ep_context_model" not in runtime_opts                      # opening reads the cache only
    assert graph_chain(b, b.component("vision"), provider_chain("cpu")) == (["CPUExecutionProvider"], {})


def test_build_engines_records_each_graph_resumes_and_rebuilds(trt_q, tmp_path):
    """The bookkeeping of runtime/trt/build.py. onnxruntime's TensorRT EP is absent here, so the
    session factory stands in for it: it checks the options each graph gets and leaves an
    engine file in the cache folder, as the EP does (the real build: tests/gpu/test_tensorrt.py)."""
    from fusion_edge.runtime.backends.ort_session import provider_chain
    from fusion_edge.runtime.trt.build import build_engines, ordered_graphs
    copy = _copy(trt_q("int8")[0], tmp_path)
    built: list[str] = []

    def session(path, providers, config, fail_at=None):
        name, opts = providers[0]
        graph = Path(path).stem
        assert name == "TensorrtExecutionProvider" and opts["trt_dump_ep_context_model"] == "1"
        assert opts["trt_profile_min_shapes"] and opts["trt_timing_cache_path"].endswith("engines/timing")
        if graph == fail_at:
            raise KeyboardInterrupt
        Path(opts["trt_engine_cache_path"], f"{graph}.engine").write_bytes(graph.encode() * 10)
        built.append(graph)

    chain = provider_chain("tensorrt", trt_provider="TensorrtExecutionProvider")
    graphs = ordered_graphs(Bundle.open(copy))
    quiet = {"progress": False}
    with pytest.raises(KeyboardInterrupt):
        build_engines(copy, ORIN, chain, session=lambda *a: session(*a, fail_at="align_03"), **quiet)
    first = graphs[:graphs.index("align_03")]
    engines = Bundle.open(copy).manifest["engines"]
    assert built == first and engines["state"] == "partial" and set(engines["graphs"]) == set(first)
    built.clear()
    engines = build_engines(copy, ORIN, chain, session=session, **quiet)             # resumes
    assert built == graphs[len(first):] and engines["state"] == "built" and set(engines["graphs"]) == set(graphs)
    assert Bundle.open(copy).manifest["engines"] == engines
    assert stamp.check_stamp(engines, ORIN, copy, sha256_file) == []
    built.clear()
    build_engines(copy, ORIN, chain, session=session, **quiet)                        # nothing left to do
    assert built == []
    with pytest.raises(EngineMismatchError, match="TensorRT 10.3.0; this machine has TensorRT 10.4.0"):
        build_engines(copy, Platform("10.4.0", "Orin", (8, 7)), chain, session=session, **quiet)
    build_engines(copy, Platform("10.4.0", "Orin", (8, 7)), chain, session=session, rebuild=True, **quiet)
    assert built == graphs and Bundle.open(copy).manifest["engines"]["tensorrt_version"] == "10.4.0"
