"""llama.cpp built with CUDA: every layer offloaded with the alignment on GPU buffers,
the cpu placement on a CUDA build, mixed placements, and the F16/Q4_K_M export crash."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gpu_helpers import first_logits_gap, gguf_gpu_fixture, needs_llama_gpu  # noqa: F401 (the gguf_gpu fixture)

from fusion_edge.cli import main
from fusion_edge.runtime.cuda_driver import cuda_device
from fusion_edge.runtime.devices import llama_cpp_tf32
from fusion_edge.runtime.fidelity import gate_reference
from fusion_edge.runtime.pipeline import Pipeline

pytestmark = [pytest.mark.gpu, needs_llama_gpu]
GGUF_FP32_GATE = 1e-3      # issue 11's target for fp32 GGUF on a CUDA build, in both placements
TF32_SIZED = 0.1           # 5× the CUDA EP's measured TF32 drift (1.9e-2, tiny): TF32, not a broken alignment


def forced_tf32() -> str | None:
    """What fusion-edge must report for llama.cpp on this GPU (ggml-cuda: TF32 from sm 8.0)."""
    gpu = cuda_device()
    return llama_cpp_tf32("cuda", gpu[1] if gpu else None)


def test_all_layers_offloaded_report_cuda_and_align_on_gpu_buffers(gguf_gpu, reference, images):
    pipe = Pipeline.open(gguf_gpu("fp32"), device="cpu", llm_device="cuda")
    assert pipe.devices == {"vision": "cpu", "align": "cpu", "llm": "cuda"}
    assert pipe.llm.n_gpu_layers >= pipe.cfg.llm.num_layers + 1 and pipe.llm.op_offload
    gap, got, want = first_logits_gap(pipe, reference("phi3", "so400m"), images["wide"])
    assert pipe.llm.hook.applied == len(pipe.cfg.interaction_layers)     # the hook ran on CUDA tensors
    tf32 = forced_tf32()
    print(f"gguf fp32, llama.cpp cuda: max |dlogit| {gap:.3g}, TF32 forced: {tf32 is not None}")
    assert pipe.placement.forced_tf32 == ({"llm": tf32} if tf32 else {})
    if tf32 is None:
        assert gap <= GGUF_FP32_GATE and got == want
    else:       # the 1e-3 gate stays; where TF32 misses it, the gate must say why
        _, reasons = gate_reference({"max_dlogit": gap, "greedy_agreement": 1.0}, "fp32", "gguf",
                                    pipe.placement.describe())
        assert gap <= GGUF_FP32_GATE or any("the llm part ran in TF32" in r for r in reasons)
        assert gap < TF32_SIZED


def test_verify_a_gguf_bundle_on_cuda_records_the_placement_and_tf32(gguf_gpu, tiny_checkpoint, tmp_path, capsys):
    import json
    import shutil
    bundle = tmp_path / "b"                 # a copy: verify rewrites the manifest
    shutil.copytree(gguf_gpu("fp32"), bundle)
    rc = main(["verify", str(bundle), "--model", str(tiny_checkpoint("phi3", "so400m")), "--steps", "4", "--json",
               "--device", "auto", "--llm-device", "cuda"])
    figures = json.loads(capsys.readouterr().out)
    tf32 = forced_tf32()
    print(f"verify gguf fp32 on cuda: max |dlogit| {figures['max_dlogit']:.3g}, gate {figures['gate']}")
    assert figures["placement"]["devices"]["llm"] == "cuda"
    assert figures["placement"]["forced_tf32"] == ({"llm": tf32} if tf32 else {})
    assert (rc == 0) == figures["passed"]
    if not figures["passed"]:
        assert tf32 is not None and any("the llm part ran in TF32" in r for r in figures["gate"])


def test_interactions_change_the_answer_on_cuda_as_in_the_reference(gguf_gpu, reference, images):
    pipe = Pipeline.open(gguf_gpu("fp32"), device="auto")
    scene = pipe.look(images["wide"])
    pipe.ask(scene, "What?", max_new_tokens=1)
    on = pipe.last_result.first_logits
    pipe.interactions_enabled = False
    pipe.ask(scene, "What?", max_new_tokens=1)
    assert np.abs(on - pipe.last_result.first_logits).max() > 10 * GGUF_FP32_GATE


def test_cpu_placement_on_a_cuda_build_matches_the_reference(gguf_gpu, reference, images):
    pipe = Pipeline.open(gguf_gpu("fp32"), device="cpu")
    assert pipe.devices["llm"] == "cpu" and pipe.llm.n_gpu_layers == 0 and not pipe.llm.op_offload
    gap, got, want = first_logits_gap(pipe, reference("phi3", "so400m"), images["wide"])
    print(f"gguf fp32, llama.cpp cuda build, cpu placement: max |dlogit| {gap:.3g}")
    assert gap <= GGUF_FP32_GATE and got == want


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_f16_and_q4_k_m_export_with_verification_does_not_crash(tiny_checkpoint, work_dir, precision):
    """Regression for the SIGSEGV right after llm.gguf is written (issue 11), in a subprocess."""
    out = work_dir / "gpu-gguf" / f"cli-{precision}"
    exe = [sys.executable, "-c", "import sys; from fusion_edge.cli import main; sys.exit(main())"]
    r = subprocess.run(exe + ["export", str(tiny_checkpoint("phi3", "so400m")), "--target", "gguf", "--precision",
                              precision, "-o", str(out), "--quiet", "--overwrite", "--verify-steps", "4"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_quantized_gguf_answers_on_cuda(gguf_gpu, images, precision):
    pipe = Pipeline.open(gguf_gpu(precision), device="auto", llm_device="cuda")
    pipe.ask(pipe.look(images["wide"]), "What?", max_new_tokens=4)
    assert np.isfinite(pipe.last_result.first_logits).all() and pipe.devices["llm"] == "cuda"
