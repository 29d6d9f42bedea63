"""The benchmark harness (bench/): one run measures the reference and a bundle in worker
processes and writes a complete JSON and a PNG. No speed is asserted here: only that
every figure exists, is positive and finite, and that the derived figures (ratios,
fraction of the bandwidth bound) are computed from the same run's numbers.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion_edge.bench.bandwidth import measure_bandwidth
from fusion_edge.bench.report import format_report
from fusion_edge.bench.runner import FIGURES, SCALARS, BenchError, Settings, derive, run_worker
from fusion_edge.bench.weights import bundle_llm_bytes_per_token, torch_llm_bytes_per_token
from fusion_edge.cli import main
from fusion_edge.runtime.errors import BundleError, MissingExtraError

# one xdist worker: its module fixture runs the benchmark once
pytestmark = pytest.mark.xdist_group("test_bench")

FAST = ["--cases", "1", "--questions-per-image", "2", "--max-new-tokens", "3", "--repeats", "1",
        "--warmup", "0", "--threads", "2", "--bandwidth-mib", "16"]


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def bench_run(tiny_checkpoint, onnx_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    ckpt, bundle = tiny_checkpoint("phi3", "so400m"), onnx_bundle("phi3", "so400m")
    rc = main(["bench", "--model", str(ckpt), "--bundles", str(bundle), *FAST,
               "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")])
    return rc, out


@pytest.mark.slow
def test_bench_writes_every_figure_for_every_backend(bench_run):
    rc, out = bench_run
    assert rc == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["threads"] == 2 and _positive(result["bandwidth"]["bytes_per_s"])
    assert [b["kind"] for b in result["backends"]] == ["reference", "bundle"]
    assert [b["name"] for b in result["backends"]] == ["pytorch-reference", "onnx-fp32"]
    for b in result["backends"]:
        assert b["ok"] and b["threads"] == 2, b.get("error")
        for key in FIGURES:
            fig = b["figures"][key]
            assert fig is not None, key
            assert fig["n"] == len(fig["samples"]) >= 1
            assert all(_positive(v) for v in fig["samples"]), key
            assert fig["min"] <= fig["median"] <= fig["max"]
        for key in SCALARS + ("rss_after_load_bytes", "decode_bound_tokens_per_s", "decode_fraction_of_bound"):
            assert _positive(b[key]), key
        assert b["peak_rss_bytes"] >= b["rss_after_load_bytes"]
        # 1 image x 2 questions: one fresh-image TTFT, one follow-up, two of each per-question figure
        assert b["figures"]["ttft_s"]["n"] == b["figures"]["followup_ttft_s"]["n"] == 1
        assert b["figures"]["prefill_s"]["n"] == 2
        assert len(b["answers"]) == 2 and all(a["token_ids"] for a in b["answers"])


def test_ratios_and_bound_come_from_the_same_run(bench_run):
    result = json.loads((bench_run[1] / "bench.json").read_text())
    ref, onnx = result["backends"]
    bw = result["bandwidth"]["bytes_per_s"]
    assert bw == max(result["bandwidth"]["samples_bytes_per_s"])
    for b in (ref, onnx):
        for key in FIGURES:
            assert b["ratios"][key] == pytest.approx(b["figures"][key]["median"] / ref["figures"][key]["median"],
                                                     rel=1e-12)
            best = "max" if key == "decode_tokens_per_s" else "min"
            assert b["ratios_best"][key] == pytest.approx(b["figures"][key][best] / ref["figures"][key][best],
                                                          rel=1e-12)
        for key in SCALARS:
            assert b["ratios"][key] == pytest.approx(b[key] / ref[key], rel=1e-12)
        bound = bw / b["llm_bytes_per_token"]
        assert b["decode_bound_tokens_per_s"] == pytest.approx(bound, rel=1e-12)
        assert b["decode_fraction_of_bound"] == pytest.approx(
            b["figures"]["decode_tokens_per_s"]["median"] / bound, rel=1e-12)
        read_bound = result["bandwidth_read"]["bytes_per_s"] / b["llm_bytes_per_token"]
        assert result["bandwidth_read"]["mode"] == "read"
        assert b["decode_read_bound_tokens_per_s"] == pytest.approx(read_bound, rel=1e-12)
        assert b["decode_fraction_of_read_bound"] == pytest.approx(
            b["figures"]["decode_tokens_per_s"]["median"] / read_bound, rel=1e-12)
    assert all(v == pytest.approx(1.0) for v in ref["ratios"].values())
    # the fresh-image TTFT contains the look, so it is never below the vision + prefill parts
    f = onnx["figures"]
    assert f["ttft_s"]["min"] >= f["vision_global_s"]["min"] + f["preprocess_s"]["min"]


def test_fidelity_against_the_reference_is_reported(bench_run):
    result = json.loads((bench_run[1] / "bench.json").read_text())
    ref, onnx = result["backends"]
    assert ref["fidelity"]["max_dlogit"] == 0.0
    assert onnx["fidelity"]["questions"] == 2
    assert onnx["fidelity"]["max_dlogit"] < 1e-3           # fp32 bundle of the same checkpoint
    assert onnx["fidelity"]["greedy_agreement"] == 1.0
    assert [a["token_ids"] for a in onnx["answers"]] == [a["token_ids"] for a in ref["answers"]]


def test_an_unverified_bundle_is_flagged_in_the_report(bench_run):
    from fusion_edge.bench.report import format_report
    result = json.loads((bench_run[1] / "bench.json").read_text())
    onnx = result["backends"][1]                 # the session bundle is exported with --no-verify
    assert onnx["verification"] == "skipped" and "exported with --no-verify" in onnx["verification_warning"]
    text = format_report(result)
    assert "UNVERIFIED" in text and onnx["verification_warning"] in text


def test_plot_is_a_png(bench_run):
    with Image.open(bench_run[1] / "bench.png") as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 150


def test_report_table_names_backends_and_figures(bench_run):
    result = json.loads((bench_run[1] / "bench.json").read_text())
    text = format_report(result)
    for word in ("pytorch-reference", "onnx-fp32", "TTFT follow-up", "bound tok/s", "ratio to the reference"):
        assert word in text


def test_bench_reports_the_device_map_of_each_backend(bench_run):
    result = json.loads((bench_run[1] / "bench.json").read_text())
    cpu = {"vision": "cpu", "align": "cpu", "llm": "cpu"}
    assert [(b["devices"], b["tf32"]) for b in result["backends"]] == [(cpu, False), (cpu, False)]
    text = format_report(result)
    assert "devices v/a/l" in text and text.count("cpu/cpu/cpu ") >= 2


def test_llm_bytes_per_token(reference, onnx_bundle):
    # reference: the decoder's fp32 parameters by the config's formula, + norm, lm_head, one embedding row
    c = reference("phi3", "so400m").cfg.llm
    H, F, hd = c.hidden_size, c.intermediate_size, c.head_dim
    layer = (c.num_heads + 2 * c.num_kv_heads) * hd * H + H * c.num_heads * hd + 2 * F * H + H * F + 2 * H
    want = 4 * (c.num_layers * layer + H + c.vocab_size * H + H)
    assert torch_llm_bytes_per_token(reference("phi3", "so400m").model.llm) == want
    # the fp32 bundle stores the same weights: its files hold them plus graph overhead
    bundle = onnx_bundle("phi3", "so400m")
    got = bundle_llm_bytes_per_token(bundle, json.loads((bundle / "fusion_bundle.json").read_text()))
    assert want <= got["bytes"] < 1.3 * want


def test_gguf_weight_bytes_count_one_embedding_row(tmp_path):
    gguf = pytest.importorskip("gguf")
    V, H = 100, 16
    w = gguf.GGUFWriter(str(tmp_path / "llm.gguf"), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((V, H), np.float32))
    w.add_tensor("output.weight", np.ones((V, H), np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((H, H), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = (tmp_path / "llm.gguf").stat().st_size
    manifest = {"files": {"llm.gguf": {"bytes": size}, "vision.onnx": {"bytes": 10 ** 9},
                          "vision.gguf": {"bytes": 10 ** 9}},
                "fusion": {"llm": {"vocab_size": V}}, "components": {}}
    got = bundle_llm_bytes_per_token(tmp_path, manifest)
    assert got["bytes"] == pytest.approx(size - V * H * 4 + H * 4)       # vision.gguf is not read per token
    assert "embedding" in got["method"]
    manifest["components"]["llm"] = {"files": ["llm.gguf"]}
    assert bundle_llm_bytes_per_token(tmp_path, manifest)["bytes"] == pytest.approx(got["bytes"])


def test_a_failing_backend_is_reported_not_hidden(onnx_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(onnx_bundle("phi3", "so400m"), broken)
    vision = broken / "vision.onnx"
    data = bytearray(vision.read_bytes())
    data[-1] ^= 0xFF                                       # same size, different sha256
    vision.write_bytes(bytes(data))
    images = [str(tmp_path / "x.jpg")]
    Image.new("RGB", (64, 48), (10, 200, 30)).save(images[0])
    raw = run_worker(("--bundle", str(broken)), images, Settings("unused", [str(broken)], threads=1),
                     tmp_path / "w")
    rec = derive(raw, 1e10)
    assert not rec["ok"] and "vision.onnx" in rec["error"] and "sha256" in rec["error"]


def test_bad_settings_fail_before_measuring(tiny_checkpoint, onnx_bundle, tmp_path, capsys):
    ckpt = str(tiny_checkpoint("phi3", "so400m"))
    assert main(["bench", "--model", ckpt, "--bundles", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(BenchError, match="max-new-tokens"):
        Settings(ckpt, [str(onnx_bundle("phi3", "so400m"))], max_new_tokens=1).check()


def test_bundle_from_another_checkpoint_is_refused(tiny_checkpoint, onnx_bundle):
    from fusion_edge.bench.runner import run_bench
    other = tiny_checkpoint("phi3", "so400m", query_len="4,16,36")   # another config → fingerprint
    with pytest.raises(BundleError, match="different checkpoint"):
        run_bench(Settings(str(other), [str(onnx_bundle("phi3", "so400m"))]))


def test_bandwidth_probe_is_best_of_its_samples():
    r = measure_bandwidth(8 << 20, repeats=3, threads=2)
    assert len(r["samples_bytes_per_s"]) == 3 and all(_positive(v) for v in r["samples_bytes_per_s"])
    assert r["bytes_per_s"] == max(r["samples_bytes_per_s"]) and r["array_bytes"] == 8 << 20
    with pytest.raises(ValueError):
        measure_bandwidth(1024)


def test_read_only_bandwidth_probe_reads_the_whole_array_once():
    r = measure_bandwidth(8 << 20, repeats=3, threads=2, mode="read")
    assert r["mode"] == "read" and r["array_bytes"] == 8 << 20 and len(r["samples_bytes_per_s"]) == 3
    assert r["bytes_per_s"] == max(r["samples_bytes_per_s"]) and all(_positive(v) for v in r["samples_bytes_per_s"])
    with pytest.raises(ValueError, match="copy, read"):
        measure_bandwidth(8 << 20, mode="write")


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    from fusion_edge.bench.plot import _pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # import matplotlib → ImportError
    with pytest.raises(MissingExtraError, match=r"fusion-edge\[bench\]"):
        _pyplot()


def test_streamed_checkpoint_writer_matches_the_in_memory_one(tmp_path):
    """The real-size maker (bench/export_memory.py) streams tensors; same bytes as the preset path."""
    from fusion_edge.export.tiny import SIZES, make_tiny_checkpoint
    kw = dict(llm="llama3", tower="siglip2", shards=3, dtype="BF16")
    a = make_tiny_checkpoint(tmp_path / "a", **kw)
    b = make_tiny_checkpoint(tmp_path / "b", size=SIZES["tiny"], **kw)
    names = sorted(p.name for p in a.glob("model*"))
    assert names == sorted(p.name for p in b.glob("model*")) and len(names) == 4
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_real_size_preset_has_the_released_dimensions():
    from fusion_edge.export.tiny import preset_size
    s = preset_size("phi3.5-mini", "siglip2")
    assert (s.hidden, s.heads, s.intermediate, s.layers, s.vocab) == (3072, 32, 8192, 32, 32064)
    assert (s.tower_hidden, s.tower_heads, s.tower_mlp) == (1536, 16, 6144)


def test_memory_sampler_sees_a_child_allocation(tmp_path):
    pytest.importorskip("psutil")
    from fusion_edge.bench.export_memory import run_sampled
    code = "import numpy as np, time; a = np.ones(300 << 17); time.sleep(1.0)"   # 300 MiB, held 1 s
    r = run_sampled([sys.executable, "-c", code], tmp_path / "log")
    assert r["returncode"] == 0 and r["wall_s"] >= 1.0
    assert r["peak_rss_tree_bytes"] > 300 << 20 and r["maxrss_process_bytes"] > 300 << 20
    assert run_sampled([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log")["returncode"] == 3


def test_worker_peak_rss_is_its_own_not_the_parents():
    """ru_maxrss of a forked child starts at the parent's RSS; the worker must not report that."""
    import subprocess
    ballast = np.ones(400 << 17)      # 400 MiB resident in this (parent) process
    code = "from fusion_edge.bench.worker import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 0 < int(out) < 300 << 20, int(out) >> 20
    del ballast


def test_passes_are_pooled_per_backend():
    from fusion_edge.bench.runner import merge_passes
    def one(pass_no, rss):
        return {"ok": True, "backend": {"name": "x"}, "threads": 2, "load_s": 1.0 + pass_no, "peak_rss_bytes": rss,
                "rss_after_load_bytes": rss - 10, "samples": {"prefill_s": [0.1 * (pass_no + 1)]},
                "prompt_tokens": [50], "new_tokens": [4], "answers": [{"token_ids": [pass_no]}]}
    merged = merge_passes([one(0, 100), one(1, 300), one(2, 200)])
    assert merged["samples"]["prefill_s"] == pytest.approx([0.1, 0.2, 0.3])
    assert merged["peak_rss_bytes"] == 300 and merged["rss_after_load_bytes"] == 290
    assert merged["load_s"] == 2.0 and merged["passes"] == 3 and merged["new_tokens"] == [4, 4, 4]
    assert merged["answers"] == [{"token_ids": [0]}]           # fidelity from the first pass
    failed = {"ok": False, "error": {"type": "X", "message": "boom"}}
    assert merge_passes([one(0, 100), failed]) is failed


def test_gpu_check_table_lists_gpu_tests_with_reasons_and_bench_devices(bench_run, tmp_path):
    """scripts/gpu_check.sh's table, from a real run of tests/gpu (skips here) and this bench."""
    from fusion_edge.bench.gpu_check import main as table_main
    junit = tmp_path / "gpu.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                        "--junitxml", str(junit)], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode in (0, 5) and junit.exists(), r.stdout[-2000:]
    out = tmp_path / "table.txt"
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        rc = table_main(["--junit", str(junit), "--bench", str(bench_run[1] / "bench.json")])
    text = out.read_text()
    assert "test_fp32_on_cuda_matches_the_reference_with_tf32_off" in text
    assert "bench onnx-fp32" in text and "devices cpu/cpu/cpu" in text and "TTFT" in text
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert "SKIP" in text and "no CUDAExecutionProvider" in text
    assert rc == (1 if " FAIL " in text else 0)


def test_gpu_check_fails_a_bench_backend_whose_fidelity_misses_its_gate(bench_run, tmp_path):
    """Issue 24: the table marked every bench backend PASS whatever its drift. The real run's fp32
    bundle passes; the same record with a TF32-sized drift (1.9e-2) or a changed greedy token
    fails, with the gate's reason; a bundle without fidelity figures fails; against a bf16
    reference it is not judged (SKIP)."""
    from fusion_edge.bench.gpu_check import bench_rows
    result = json.loads((bench_run[1] / "bench.json").read_text())

    def row(edit=None, ref_precision=None) -> list[str]:
        data = json.loads(json.dumps(result))
        ref, b = data["backends"]
        if ref_precision:
            ref["precision"] = ref_precision
        if edit is not None:
            b["fidelity"] = edit(b["fidelity"])
        path = tmp_path / "bench.json"
        path.write_text(json.dumps(data))
        return bench_rows(str(path))[1]
    assert row()[:2] == ["bench onnx-fp32", "PASS"]
    drift = row(lambda f: {**f, "max_dlogit": 1.9e-2})
    assert drift[1] == "FAIL" and "max_dlogit = 0.019" in drift[2]
    token = row(lambda f: {**f, "greedy_agreement": 0.75})
    assert token[1] == "FAIL" and "greedy_agreement" in token[2]
    assert row(lambda f: None)[1] == "FAIL"
    assert row(lambda f: {**f, "max_dlogit": 1.9e-2}, ref_precision="bf16")[1] == "SKIP"


@pytest.mark.slow
def test_bf16_reference_is_the_same_model_at_half_the_bytes(tiny_checkpoint, reference, tmp_path):
    """--reference-dtype bf16 (real-size runs, where fp32 does not fit): loaded tensor by tensor
    in bfloat16, it answers, weighs half per token, and its first-step logits follow the fp32
    reference's (cosine; bfloat16 keeps ~3 significant digits)."""
    from fusion_edge.bench.cases import questions_for
    ckpt = tiny_checkpoint("phi3", "so400m")
    image = tmp_path / "x.jpg"
    Image.new("RGB", (320, 240), (10, 200, 30)).save(image)
    s = Settings(str(ckpt), ["unused"], threads=1, max_new_tokens=2, questions_per_image=1, warmup=0,
                 reference_dtype="bf16")
    raw = run_worker(("--reference", str(ckpt)), [str(image)], s, tmp_path / "w")
    assert raw["ok"], raw.get("error")
    info = raw["backend"]
    fp32 = reference("phi3", "so400m")
    assert info["precision"] == "bf16" and info["name"] == "pytorch-reference-bf16"
    assert info["llm_bytes_per_token"] == torch_llm_bytes_per_token(fp32.model.llm) // 2
    want = fp32.ask(fp32.look(str(image)), questions_for(0, 1)[0], max_new_tokens=1).first_logits
    got = raw["first_logits"][0]
    assert np.isfinite(got).all()
    assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.99


def test_real_size_script_steps_are_valid_commands(tmp_path):
    """bench/real_size.py runs for hours: every step's command must parse with today's CLI
    (a renamed flag would otherwise surface an hour into a run). As in a run, each step's output
    exists before the next step is parsed (the types check that --calib names an existing path)."""
    from fusion_edge.bench import real_size
    from fusion_edge.cli import _parser
    names = []
    for name, out, cmd in real_size.steps(tmp_path, calib_samples=2, threads=2):
        names.append(name)
        assert out.parent == tmp_path
        if name == "checkpoint":
            assert cmd[1:3] == ["-m", "fusion_edge.bench.real_size"] and "--make-checkpoint" in cmd
            out.mkdir()
            continue
        args = _parser().parse_args(cmd[3:])            # after [python, -c, code]
        out.mkdir()
        assert args.command in ("export", "calibrate")
        if args.command == "export":
            assert args.no_verify and args.out == str(out)
    assert names[:3] == ["checkpoint", "onnx-fp32", "calibrate"]
    assert set(real_size.BUNDLES) <= set(names)
