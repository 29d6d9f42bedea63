"""ONNX target: per-graph and end-to-end parity with the PyTorch reference, scene cache,
query_len / FUSION-L options, fp16 agreement."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusion_edge.export.verify import verify
from fusion_edge.runtime.pipeline import Pipeline


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
@pytest.mark.slow
def test_fp32_parity_per_graph_and_end_to_end(onnx_bundle, reference, llm, tower):
    pipe = Pipeline.open(onnx_bundle(llm, tower), device="cpu")
    f = verify(pipe, reference(llm, tower), steps=16)
    print(json.dumps(f, indent=1))
    assert set(f["per_graph_max_abs"]) >= {"vision_global", "vision_main", "align_00", "align_09",
                                           "segment_00", "segment_10"}
    # measured (CPU, onnxruntime 1.32): per graph ≤ 1.5e-5 (segment_10), max |Δlogit| 2.1e-5 (phi3) /
    # 2.7e-5 (llama3); bounds about 2x that
    for name, d in f["per_graph_max_abs"].items():
        assert d <= 3e-5, (name, d)
    assert f["max_dlogit"] <= 6e-5
    assert f["greedy_agreement"] == 1.0 and f["greedy_prefix_min"] == 16


@pytest.mark.slow
def test_fp16_bundle_agreement_is_reported(onnx_bundle, reference):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m", precision="fp16"), device="cpu")
    f = verify(pipe, reference("phi3", "so400m"), steps=16)
    print("fp16 figures:", json.dumps(f, indent=1))
    assert pipe.bundle.precision == "fp16"
    assert f["top1_agreement"] == 1.0            # first greedy token identical on the tiny checkpoint
    assert 0 < f["max_dlogit"] < 1.0             # fp16 differs, but not wildly


@pytest.mark.slow
def test_scene_cache_skips_global_encoder(onnx_bundle, images):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    scene = pipe.look(images["wide"])
    assert pipe.vision.calls["vision_global"] == 1
    a1 = pipe.ask(scene, "What is on the table?", max_new_tokens=8)
    b1 = pipe.ask(scene, "Is there a person?", max_new_tokens=8)
    assert pipe.vision.calls["vision_global"] == 1 and pipe.vision.calls["vision_main"] == 2
    fresh = pipe.look(images["wide"])
    assert pipe.ask(fresh, "Is there a person?", max_new_tokens=8) == b1
    assert pipe.ask(scene, "What is on the table?", max_new_tokens=8) == a1
    assert pipe.vision.calls["vision_global"] == 2
    stats = pipe.last_stats
    for key in ("preprocess_s", "vision_global_s", "vision_main_s", "prefill_s", "decode_s", "ttft_s"):
        assert stats[key] >= 0
    assert stats["new_tokens"] == 8 and stats["prompt_tokens"] > 729


@pytest.mark.slow
def test_streaming_equals_full_text(onnx_bundle, images):
    pipe = Pipeline.open(onnx_bundle("llama3", "siglip2"), device="cpu")
    scene = pipe.look(images["strip"])
    pieces = list(pipe.ask(scene, "Describe the scene.", stream=True, max_new_tokens=12))
    assert "".join(pieces) == pipe.last_result.text == pipe.ask(scene, "Describe the scene.", max_new_tokens=12)


@pytest.mark.slow
def test_query_len_and_fusion_l_survive_export(onnx_bundle, reference, images):
    b16 = onnx_bundle("phi3", "so400m", query_len=16)
    pipe = Pipeline.open(b16, device="cpu")
    assert pipe.bundle.options["query_len"] == 16
    scene = pipe.look(images["wide"])
    pipe.ask(scene, "What color?", max_new_tokens=4)
    assert pipe.last_result.layout.num_latents == 16
    ref = reference("phi3", "so400m")
    want = ref.answer(images["wide"], "What color?", max_new_tokens=4, query_len=16)
    assert pipe.last_result.token_ids == want.token_ids
    np.testing.assert_allclose(pipe.last_result.first_logits, want.first_logits, atol=1e-4)
    pipe.ask(scene, "What color?", max_new_tokens=4, query_len=64)          # runtime override
    assert pipe.last_result.layout.num_latents == 64
    want64 = ref.answer(images["wide"], "What color?", max_new_tokens=4, query_len=64)
    assert pipe.last_result.token_ids == want64.token_ids

    bl = Pipeline.open(onnx_bundle("phi3", "so400m", image_tokens=144), device="cpu")
    assert bl.bundle.options["image_tokens"] == 144
    bl.ask(bl.look(images["wide"]), "What color?", max_new_tokens=4)
    assert bl.last_result.layout.num_image_tokens == 144
    want_l = ref.answer(images["wide"], "What color?", max_new_tokens=4, image_tokens=144)
    assert bl.last_result.token_ids == want_l.token_ids
    np.testing.assert_allclose(bl.last_result.first_logits, want_l.first_logits, atol=1e-4)


@pytest.mark.slow
def test_kv_cache_is_preallocated_once(onnx_bundle, images):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    scene = pipe.look(images["wide"])
    pipe.ask(scene, "One?", max_new_tokens=10)
    buffers = [id(b) for b in pipe.llm.k]
    cap = pipe.llm.capacity
    pipe.ask(scene, "Two?", max_new_tokens=10)
    assert [id(b) for b in pipe.llm.k] == buffers and pipe.llm.capacity == cap


@pytest.mark.slow
def test_bundle_cli_ask_matches_reference(onnx_bundle, tiny_checkpoint, images, capsys):
    from fusion_edge.cli import main
    args = ["--image", str(images["tall"]), "--question", "Where is the box?", "--max-new-tokens", "8", "--json"]
    assert main(["ask", "--bundle", str(onnx_bundle("llama3", "siglip2")), *args]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["ask", "--model", str(tiny_checkpoint("llama3", "siglip2")), *args]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["token_ids"] == want["token_ids"] and got["prompt"] == want["prompt"]
    assert got["backend"] == "onnx-fp32"


def _has_cuda_ep() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_ep(), reason="needs onnxruntime-gpu with a CUDA device (not on CI)")
def test_cuda_pipeline_matches_cpu(onnx_bundle, images):
    cpu = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    gpu = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cuda")
    assert gpu.device == "cuda" and gpu.llm.cache.device == "cuda"
    a = cpu.ask(cpu.look(images["wide"]), "What is here?", max_new_tokens=16)
    b = gpu.ask(gpu.look(images["wide"]), "What is here?", max_new_tokens=16)
    assert a == b
    np.testing.assert_allclose(cpu.last_result.first_logits, gpu.last_result.first_logits, atol=1e-3)


def test_cuda_request_without_cuda_is_a_clear_error(onnx_bundle):
    if _has_cuda_ep():
        pytest.skip("this machine has CUDA")
    from fusion_edge.runtime.errors import DeviceError
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        Pipeline.open(onnx_bundle("phi3", "so400m"), device="cuda")


def test_graph_export_passes_on_unreviewed_warnings_only(tiny_checkpoint, tmp_path):
    """Exporting a real graph leaks no warning (only reviewed ones are silenced), and a
    warning that nobody reviewed — e.g. a TracerWarning about a baked-in shape — reaches the user."""
    import warnings

    import torch

    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.export.onnx_export import export_graph, graph_specs, traced_quietly
    ckpt = open_checkpoint(str(tiny_checkpoint("phi3", "so400m")))
    spec = next(s for s in graph_specs(ckpt) if s["name"] == "vision")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_graph(ckpt, spec, tmp_path / "vision.onnx")
    assert [str(w.message) for w in caught] == []

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if bool(x.sum() > 0) else x           # a python bool of a tensor: baked in

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced_quietly(lambda: torch.onnx.export(DataDependent(), (torch.ones(2),), str(tmp_path / "d.onnx"),
                                                 dynamo=False))
    assert any("TracerWarning" == w.category.__name__ for w in caught)
    assert not any("legacy TorchScript-based" in str(w.message) for w in caught)
