"""Per-component device placement (runtime/devices.py), the CUDA EP options, the device
flags, and the device map where users see it (Pipeline, ask --json, verify). Runs on the
CPU; the GPU side is tests/gpu/."""
from __future__ import annotations

import json

import pytest

from fusion_edge.cli import main
from fusion_edge.runtime.backends.ort_session import (cuda_options, import_ort, make_session, provider_chain,
                                                      provider_name)
from fusion_edge.runtime.devices import Capabilities, Placement, llama_cpp_tf32, requests, resolve_devices
from fusion_edge.runtime.errors import DeviceError

CPU = ("CPUExecutionProvider",)
GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")
ONNX = {"vision": "onnxruntime", "align": "onnxruntime", "llm": "onnxruntime"}
GGUF = {"vision": "onnxruntime", "align": "onnxruntime", "llm": "llama.cpp"}
ORT_HAS_CUDA = "CUDAExecutionProvider" in import_ort().get_available_providers()


def devs(v, a, l):
    return {"vision": v, "align": a, "llm": l}


# (request, backends, onnxruntime providers, llama.cpp offload) → map
TABLE = [
    (requests("auto"), ONNX, CPU, False, devs("cpu", "cpu", "cpu")),
    (requests("auto"), ONNX, GPU, False, devs("cuda", "cuda", "cuda")),
    (requests("cpu"), ONNX, GPU, True, devs("cpu", "cpu", "cpu")),
    (requests("cuda"), ONNX, GPU, False, devs("cuda", "cuda", "cuda")),
    # the GGUF case: onnxruntime without CUDA, llama.cpp with it
    (requests("auto"), GGUF, CPU, True, devs("cpu", "cpu", "cuda")),
    (requests("auto", vision="cpu", align="cpu", llm="cuda"), GGUF, CPU, True, devs("cpu", "cpu", "cuda")),
    (requests("auto"), GGUF, GPU, False, devs("cuda", "cuda", "cpu")),
    (requests("auto"), GGUF, GPU, True, devs("cuda", "cuda", "cuda")),
    (requests("cuda", align="cpu"), GGUF, GPU, True, devs("cuda", "cpu", "cuda")),
    (requests("cpu", llm="auto"), ONNX, GPU, False, devs("cpu", "cpu", "cuda")),
    (requests("cpu", vision="cuda"), ONNX, GPU, False, devs("cuda", "cpu", "cpu")),
]


@pytest.mark.parametrize("req,backends,providers,llama_gpu,want", TABLE)
def test_resolution_table(req, backends, providers, llama_gpu, want):
    assert resolve_devices(req, backends, Capabilities(providers, llama_gpu)) == want


@pytest.mark.parametrize("req,backends,providers,llama_gpu,part,words", [
    (requests("cuda"), ONNX, CPU, True, "vision", "no CUDA execution provider"),
    (requests("cuda"), GGUF, CPU, True, "vision", "onnxruntime-gpu"),
    (requests("cpu", llm="cuda"), GGUF, GPU, False, "llm", "GGML_CUDA"),
    (requests("auto", align="cuda"), ONNX, CPU, False, "align", "--align-device cpu"),
])
def test_cuda_where_a_part_cannot_run_names_the_part_and_the_fix(req, backends, providers, llama_gpu, part, words):
    with pytest.raises(DeviceError) as e:
        resolve_devices(req, backends, Capabilities(providers, llama_gpu))
    assert f"the {part} part" in e.value.problem and e.value.fix
    assert words in f"{e.value.problem} {e.value.fix}"


def test_unknown_device_is_refused():
    with pytest.raises(DeviceError, match="gpu0"):
        requests("gpu0")
    with pytest.raises(DeviceError, match="for llm"):
        requests("auto", llm="tpu")


def test_cuda_ep_options_keep_tf32_off_unless_asked():
    assert cuda_options() == {"device_id": "0", "use_tf32": "0"}
    assert cuda_options(tf32=True)["use_tf32"] == "1"
    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    chain = provider_chain("cuda")
    assert chain == [("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    assert [provider_name(p) for p in chain] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("cuda", tf32=True)[0][1]["use_tf32"] == "1"


def test_placement_describes_devices_providers_and_options():
    p = Placement(devs("cpu", "cpu", "cuda"), True, {"vision": provider_chain("cpu"), "llm": provider_chain("cuda")})
    d = json.loads(json.dumps(p.describe()))
    assert d["devices"] == devs("cpu", "cpu", "cuda") and d["tf32"] is True and p.summary == "mixed"
    assert d["providers"]["llm"][0] == {"name": "CUDAExecutionProvider",
                                        "options": {"device_id": "0", "use_tf32": "0"}}
    assert Placement(devs("cpu", "cpu", "cpu")).summary == "cpu"


@pytest.mark.skipif(ORT_HAS_CUDA, reason="checks the refusal where onnxruntime has no CUDA EP")
def test_a_session_that_falls_back_to_cpu_is_a_device_error(onnx_bundle):
    from fusion_edge.runtime.bundle import Bundle
    b = Bundle.open(onnx_bundle("phi3", "so400m"))
    with pytest.raises(DeviceError, match="could not start CUDAExecutionProvider"):
        make_session(b.file(b.component("embed").file), provider_chain("cuda"))


def test_pipeline_reports_its_device_map_and_tf32(onnx_bundle, images):
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu", llm_device="auto",
                         vision_device="cpu" if not ORT_HAS_CUDA else "cuda")
    want_cuda = "cuda" if ORT_HAS_CUDA else "cpu"
    assert pipe.devices == devs(want_cuda, "cpu", want_cuda)
    assert pipe.tf32 is False and pipe.placement.describe()["providers"]["align"] == ["CPUExecutionProvider"]
    pipe.ask(pipe.look(images["wide"]), "What is on the table?", max_new_tokens=2)
    assert pipe.last_stats["devices"] == pipe.devices and pipe.last_stats["tf32"] is False


@pytest.mark.skipif(ORT_HAS_CUDA, reason="checks the refusal where onnxruntime has no CUDA EP")
@pytest.mark.parametrize("flags,part", [(["--device", "cuda"], "vision"), (["--device", "cpu", "--align-device",
                                                                              "cuda"], "align")])
def test_ask_with_a_device_a_part_cannot_use_is_error_and_fix(onnx_bundle, images, capsys, flags, part):
    rc = main(["ask", "--bundle", str(onnx_bundle("phi3", "so400m")), "--image", str(images["wide"]),
               "--question", "What?", "--json", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: the {part} part (onnxruntime) cannot run on 'cuda'" in err
    assert "fix:" in err and "Traceback" not in err


def test_ask_json_reports_the_device_map(onnx_bundle, images, capsys):
    rc = main(["ask", "--bundle", str(onnx_bundle("phi3", "so400m")), "--image", str(images["wide"]),
               "--question", "What is on the table?", "--json", "--max-new-tokens", "2",
               "--device", "cpu", "--llm-device", "cpu", "--tf32"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["devices"] == devs("cpu", "cpu", "cpu") and out["tf32"] is True
    assert out["timings"]["devices"] == out["devices"]


@pytest.mark.slow
def test_verify_records_the_placement_it_measured_on(tiny_checkpoint, onnx_bundle, tmp_path, capsys):
    import shutil

    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.fidelity import figures_key
    bundle = tmp_path / "b"                     # a copy: verify rewrites the manifest of the session bundle
    shutil.copytree(onnx_bundle("phi3", "so400m"), bundle)
    rc = main(["verify", str(bundle), "--model", str(tiny_checkpoint("phi3", "so400m")), "--steps", "2", "--json",
               "--device", "auto"])
    figures = json.loads(capsys.readouterr().out)
    want = "cuda" if ORT_HAS_CUDA else "cpu"
    assert rc == 0 and figures["device"] == want
    assert figures["placement"]["devices"] == devs(want, want, want) and figures["placement"]["tf32"] is False
    b = Bundle.open(bundle)
    assert b.manifest[figures_key(b.target, b.precision)]["placement"] == figures["placement"]


@pytest.mark.skipif(ORT_HAS_CUDA, reason="checks the refusal where onnxruntime has no CUDA EP")
def test_verify_on_cuda_without_a_cuda_ep_is_error_and_fix(tiny_checkpoint, onnx_bundle, capsys):
    rc = main(["verify", str(onnx_bundle("phi3", "so400m")), "--model", str(tiny_checkpoint("phi3", "so400m")),
               "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot run on 'cuda'" in err and "fix:" in err


def test_every_bundle_command_takes_the_per_part_flags(capsys):
    for cmd in ("ask", "verify", "camera", "bench"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        for flag in ("--device", "--vision-device", "--align-device", "--llm-device", "--tf32"):
            assert flag in text, (cmd, flag)


def test_gate_lines_say_which_device_the_figures_hold_for():
    from fusion_edge.runtime.fidelity import placement_lines
    cpu = placement_lines(Placement(devs("cpu", "cpu", "cpu")).describe())
    assert cpu[0] == "  measured on: vision cpu, align cpu, llm cpu"
    assert "verify BUNDLE --model CKPT --device cuda" in cpu[1]
    gpu = placement_lines(Placement(devs("cpu", "cpu", "cuda"), tf32=True).describe())
    assert gpu == ["  measured on: vision cpu, align cpu, llm cuda (TF32 on)"]
    assert placement_lines(None) == []


@pytest.mark.parametrize("device,capability,forced", [
    ("cuda", (8, 0), True), ("cuda", (8, 7), True), ("cuda", (9, 0), True),     # A100, Jetson Orin, H100/H200
    ("cuda", (7, 5), False), ("cuda", (6, 1), False), ("cpu", (9, 0), False), ("cuda", None, False)])
def test_llama_cpp_on_ampere_or_newer_is_recorded_as_tf32(device, capability, forced):
    """ggml-cuda computes F32 products in TF32 from compute capability 8.0 (docs/gpu.md)."""
    why = llama_cpp_tf32(device, capability)
    assert (why is not None) == forced
    if forced:
        assert "TF32" in why and f"{capability[0]}.{capability[1]}" in why


def test_forced_tf32_shows_in_the_placement_the_gate_lines_and_the_gate():
    from fusion_edge.runtime.fidelity import gate_reference, placement_lines
    why = llama_cpp_tf32("cuda", (8, 7))
    p = Placement(devs("cpu", "cpu", "cuda"), False, {"vision": provider_chain("cpu")}, None, {"llm": why})
    d = json.loads(json.dumps(p.describe()))
    assert d["forced_tf32"] == {"llm": why} and d["tf32_parts"] == ["llm"] and d["tf32"] is False
    assert placement_lines(d)[0].endswith("llm cuda (TF32 forced by its backend: llm)")
    drift = {"max_dlogit": 1.2e-2, "greedy_agreement": 1.0, "top1_agreement": 1.0}
    ok, reasons = gate_reference(drift, "fp32", "gguf", d)
    assert not ok and reasons[0].startswith("max_dlogit = 0.012 (needs ≤ 0.001)")
    assert "the llm part ran in TF32" in reasons[1] and "--llm-device cpu" in reasons[1]
    assert gate_reference({**drift, "max_dlogit": 2e-5}, "fp32", "gguf", d) == (True, [])
    assert gate_reference(drift, "fp32", "gguf", Placement(devs("cpu", "cpu", "cpu")).describe())[1] == \
        reasons[:1]


def test_tf32_opt_in_counts_only_for_parts_on_the_cuda_ep():
    from fusion_edge.runtime.fidelity import gate_reference
    chains = {"vision": provider_chain("cuda", True), "align": provider_chain("cpu", True)}
    p = Placement(devs("cuda", "cpu", "cuda"), True, chains).describe()
    assert p["tf32_parts"] == ["vision"] and p["forced_tf32"] == {}
    _, reasons = gate_reference({"max_dlogit": 0.02, "greedy_agreement": 1.0}, "fp32", "onnx", p)
    assert reasons[-1] == "TF32 was turned on (--tf32) for vision; without it the CUDA EP computes in fp32"


def test_bench_device_column_marks_tf32_from_either_source():
    from fusion_edge.bench.report import devices_text
    d = devs("cpu", "cpu", "cuda")
    assert devices_text({"devices": d, "tf32": False, "tf32_parts": []}) == "cpu/cpu/cuda"
    assert devices_text({"devices": d, "tf32": False, "tf32_parts": ["llm"]}) == "cpu/cpu/cuda+tf32"
    assert devices_text({"devices": d, "tf32": True}) == "cpu/cpu/cuda+tf32"
