"""onnxruntime sessions: provider choice for a device, session options, lazy import."""
from __future__ import annotations

from pathlib import Path

from ..cpu_features import int8_session_config
from ..errors import DeviceError, MissingExtraError
from ..layout import EXACT_QDQ_KEY as EXACT_QDQ_KEY  # re-exported (the quantizer imports it from here)
from ..trt.ep import RTX_EP, append_plugin, graph_chain


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", None, "running ONNX bundles") from None
    return ort


def providers_for(device: str) -> list[str]:
    """'auto' → CUDA if this onnxruntime has it, else CPU; 'cuda' → CUDA or a DeviceError."""
    ort = import_ort()
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise DeviceError("device 'cuda' was asked for, but this onnxruntime has no CUDA execution provider "
                          f"(available: {', '.join(available)}).",
                          "install onnxruntime-gpu on a CUDA machine (pip install 'fusion-edge[trt]'), "
                          "or use --device cpu")
    if device not in ("auto", "cuda"):
        raise DeviceError(f"unknown device '{device}'.", "use auto, cpu or cuda")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]


def cuda_options(tf32: bool = False, device_id: int = 0) -> dict[str, str]:
    """CUDA EP options. TF32 off unless asked: with it, fp32 MatMuls round their inputs to a
    10-bit mantissa (measured on an H200: max |Δlogit| 0.019 with TF32, 2.9e-5 without)."""
    return {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}


def provider_chain(device: str, tf32: bool = False, trt_provider: str | None = None) -> list:
    """A resolved device ("cpu" | "cuda" | "tensorrt") → the `providers` argument of
    InferenceSession: provider names, or (name, options) pairs where options are set. TensorRT
    (trt_provider: which TensorRT EP) falls back to CUDA then the CPU for nodes it does not
    take; each graph's own TensorRT options are added by `component_session`."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = [("CUDAExecutionProvider", cuda_options(tf32)), "CPUExecutionProvider"]
    if device == "tensorrt":
        assert trt_provider, "a TensorRT device needs the provider found by devices.probe"
        return [(trt_provider, {"device_id": "0"}), *(["CPUExecutionProvider"] if trt_provider == RTX_EP else cuda)]
    assert device == "cuda", device
    return cuda


def provider_name(p) -> str:
    return p if isinstance(p, str) else p[0]


def component_session(bundle, comp, providers: list[str], threads: int | None = None, *,
                      mem_arena: bool = False, low_memory: bool = False):
    """The session of one bundle Component (its first file), with the options it asks for
    (on TensorRT: the graph's profile and engine cache, runtime/trt/ep.py)."""
    providers, config = graph_chain(bundle, comp, providers)
    return make_session(bundle.file(comp.file), providers, threads, exact_qdq=bool(comp.get(EXACT_QDQ_KEY)),
                        config=config, mem_arena=mem_arena, low_memory=low_memory)


def make_session(path: Path, providers: list[str], threads: int | None = None, exact_qdq: bool = False,
                 config: dict[str, str] | None = None, mem_arena: bool = False, low_memory: bool = False):
    """mem_arena: keep onnxruntime's CPU memory arena (off by default, see below); worth it for
    a session that runs once per token over many nodes (the decode graph).
    low_memory: no prepacked weight copies. onnxruntime memory-maps page-aligned external
    data (every large bundle graph); prepacking copies each MatMul weight into its own
    layout in anonymous memory, once per session (the segments and the decode graph each:
    twice the LLM). Without it the weights stay clean file pages, shared between sessions
    and dropped under pressure: an fp32 bundle larger than RAM still runs (prefill speed
    about the same, decode slower: B is packed per call).
    exact_qdq: on the CPU EP, run Q/DQ pairs as float arithmetic instead of onnxruntime's
    integer kernels. For int8-activation graphs (the TensorRT/CUDA flavour): x86 CPUs without
    VNNI compute int8×int8 with pairwise int16-saturating products (vpmaddubsw), which would
    make the result depend on the CPU; float Q/DQ gives TensorRT's exact int32 accumulation."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # 23 small sessions run one after another: spinning intra-op threads of idle sessions
    # steal the cores (measured: decode 7.8 → 41–49 tok/s on 2 cores with spinning off), and
    # one arena per session inflates RSS (1614 → 1163 MiB) at the same speed.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = mem_arena
    if mem_arena:   # weights outside the arena: its power-of-two growth would round them up
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if low_memory:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        opts.intra_op_num_threads = threads
    if exact_qdq and provider_name(providers[0]) == "CPUExecutionProvider":
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    # int8 products run on the CPU EP in every chain (the CUDA EP has no MatMulInteger kernel):
    # exact on x86 without VNNI only with this option (cpu_features.py); no effect on float ops
    for key, value in {**int8_session_config(), **(config or {})}.items():
        opts.add_session_config_entry(key, value)
    sess = _session(ort, path, opts, providers)
    wanted = provider_name(providers[0])
    if sess.get_providers()[0] != wanted:
        # onnxruntime falls back to the CPU with only a log line when the CUDA EP fails to load
        raise DeviceError(f"onnxruntime could not start {wanted} for {Path(path).name} "
                          f"(the session runs on {', '.join(sess.get_providers())}).",
                          "check the CUDA / cuDNN libraries onnxruntime-gpu needs (LD_LIBRARY_PATH), "
                          "or use --device cpu")
    return sess


def _session(ort, path: Path, opts, providers: list):
    """A plugin EP (TensorRT-RTX) is appended to the options by device; built-in EPs by name."""
    if provider_name(providers[0]) == RTX_EP:
        append_plugin(ort, opts, providers[0][1])
        return ort.InferenceSession(str(path), sess_options=opts)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
