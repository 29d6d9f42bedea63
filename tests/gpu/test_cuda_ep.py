"""onnxruntime's CUDA EP: fp32 parity with TF32 off, TF32 as a recorded opt-in, fp16, the
device-resident KV cache (IO binding), mixed placements, and verify --device cuda."""
from __future__ import annotations

import json

import numpy as np
import pytest
from engine_helpers import greedy_tokens
from gpu_helpers import first_logits_gap, needs_ort_cuda

from fusion_edge.cli import main
from fusion_edge.runtime.pipeline import Pipeline

pytestmark = [pytest.mark.gpu, needs_ort_cuda]
CUDA = {"vision": "cuda", "align": "cuda", "llm": "cuda"}


def cuda_option(sess, key):
    return sess.get_provider_options()["CUDAExecutionProvider"][key]


def test_fp32_on_cuda_matches_the_reference_with_tf32_off(onnx_bundle, reference, images):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cuda")
    assert pipe.devices == CUDA and pipe.tf32 is False
    assert cuda_option(pipe.llm.embed_sess, "use_tf32") == "0"
    assert cuda_option(pipe.vision.sessions["vision"], "use_tf32") == "0"
    gap, got, want = first_logits_gap(pipe, reference("phi3", "so400m"), images["wide"])
    print(f"cuda fp32 tf32=0: max |dlogit| {gap:.3g}")
    assert gap <= 1e-4 and got == want


def test_tf32_is_an_opt_in_recorded_in_the_stats(onnx_bundle, images):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cuda", tf32=True)
    assert cuda_option(pipe.llm.embed_sess, "use_tf32") == "1"
    pipe.ask(pipe.look(images["wide"]), "What?", max_new_tokens=2)
    assert pipe.last_stats["tf32"] is True and pipe.last_stats["devices"] == CUDA


def test_fp16_on_cuda_passes_its_gate(tiny_checkpoint, onnx_bundle):
    from fusion_edge.export.checkpoint import open_checkpoint
    from fusion_edge.export.reference import FusionReference
    from fusion_edge.export.verify import verify
    from fusion_edge.runtime.fidelity import gate_reference
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m", precision="fp16"), device="cuda")
    figures = verify(pipe, FusionReference(open_checkpoint(str(tiny_checkpoint("phi3", "so400m")))), steps=8)
    passed, reasons = gate_reference(figures, "fp16", "onnx")
    print(f"cuda fp16: max |dlogit| {figures['max_dlogit']:.3g}, top-1 {figures['top1_agreement']:.0%}")
    assert passed, reasons


def test_kv_cache_lives_on_the_device_and_decodes_like_the_cpu(onnx_bundle, images):
    from fusion_edge.runtime.backends.kv_cache import CudaCache
    gpu = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cuda")
    cpu = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    answers = []
    for pipe in (gpu, cpu):
        scene = pipe.look(images["wide"])
        pipe.ask(scene, "What is on the table?", max_new_tokens=16)
        pipe.ask(scene, "And what colour is it?", max_new_tokens=16)       # reuses the cache
        answers.append(pipe.last_result)
    assert isinstance(gpu.llm.cache, CudaCache) and gpu.llm.cache.device == "cuda"
    assert answers[0].token_ids == answers[1].token_ids
    np.testing.assert_allclose(answers[0].first_logits, answers[1].first_logits, atol=1e-4)


@pytest.mark.parametrize("placement", [
    {"vision_device": "cpu", "align_device": "cpu", "llm_device": "cuda"},
    {"vision_device": "cuda", "align_device": "cpu", "llm_device": "cpu"},
    {"vision_device": "cpu", "align_device": "cuda", "llm_device": "cuda"},
])
def test_mixed_placements_report_their_map_and_match_the_reference(onnx_bundle, reference, images, placement):
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu", **placement)
    assert pipe.devices == {k.removesuffix("_device"): v for k, v in placement.items()} and pipe.device == "mixed"
    gap, got, want = first_logits_gap(pipe, reference("phi3", "so400m"), images["wide"])
    assert gap <= 1e-4 and got == want


def test_verify_on_cuda_records_device_provider_and_options(tiny_checkpoint, onnx_bundle, capsys):
    rc = main(["verify", str(onnx_bundle("phi3", "so400m")), "--model", str(tiny_checkpoint("phi3", "so400m")),
               "--device", "cuda", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert rc == 0 and figures["passed"] and figures["device"] == "cuda"
    llm = figures["placement"]["providers"]["llm"][0]
    assert llm == {"name": "CUDAExecutionProvider", "options": {"device_id": "0", "use_tf32": "0"}}


def test_cuda_decodes_through_the_concat_twin_of_the_gqa_graph(onnx_bundle):
    """GroupQueryAttention has no float32 CUDA kernel: on CUDA the fp32 bundle's LLM opens the
    decode graph's Concat twin (one run per token), with the cache in device memory."""
    from fusion_edge.runtime.backends.kv_cache import CudaCache
    from fusion_edge.runtime.backends.onnx_llm import OnnxLLM
    from fusion_edge.runtime.bundle import Bundle
    bundle = Bundle.open(onnx_bundle("phi3", "so400m"))
    gpu, cpu = OnnxLLM(bundle, "cuda"), OnnxLLM(bundle, "cpu")
    assert not gpu.gqa and gpu.decode_sess is not None and cpu.gqa
    toks = [greedy_tokens(engine, seed=4) for engine in (gpu, cpu)]
    assert isinstance(gpu.cache, CudaCache) and toks[0] == toks[1]
