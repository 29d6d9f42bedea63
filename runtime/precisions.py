"""The precisions a bundle's graphs can be stored in: one table, read by the command line
(export/), the export targets (fusion_edge/targets.py), the planner (quantize/), the gguf
writers and the disk-space check. No imports of fusion-edge: a leaf.

PRECISIONS: `--precision`, name → what each part of the code needs to know about it.
VISION_PRECISIONS: `--vision-precision` of int8/int4 ONNX bundles, name → what the vision
tower becomes (quantize/planner.py `Plan.with_vision` turns a name into the plan's choice).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str
    targets: tuple[str, ...]       # the export targets that build it (fusion_edge/targets.py TARGETS)
    quantized: bool                # int8/int4: built from an fp32 bundle, gated against its pipeline too
    bytes_per_weight: float        # stored weight bytes: the disk-space check before an export
    min_sm: tuple[int, int]        # oldest NVIDIA compute capability with kernels for it (the planner)
    gguf_llm: str                  # llama.cpp type of llm.gguf (export/gguf_writer.py QUANT_TYPES)
    gguf_vision: str               # ggml type of vision.gguf (export/vision_gguf.py VISION_QUANTS)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", ("onnx", "gguf"), False, 4.0, (7, 0), "F32", "F32"),
    Precision("fp16", ("onnx", "gguf", "trt"), False, 2.0, (7, 0), "F16", "F16"),
    Precision("int8", ("onnx", "gguf", "trt"), True, 1.0, (7, 0), "Q8_0", "Q8_0"),
    # INT4 weight-only GEMM kernels start at Ampere; vision.gguf keeps Q8_0 (the tower is compute-bound)
    Precision("int4", ("onnx", "gguf", "trt"), True, 0.5, (8, 0), "Q4_K_M", "Q8_0"),
)}


def precision_names(target: str | None = None) -> list[str]:
    """Every precision, or those `target` builds, in table order."""
    return [n for n, p in PRECISIONS.items() if target is None or target in p.targets]


VISION_PRECISIONS = {
    "int8": "the plan's int8 tower: int8-dynamic for --for cpu, int8-static for --for cuda|trt",
    "int8-dynamic": "int8 weights, activations quantized per call, no calibration (--for cpu only; "
                    "quantize/dynamic_int8.py)",
    "int8-static": "W8A8 static Q/DQ calibrated on the recording (quantize/static_int8.py)",
    "fp32": "the fp32 graph, copied unchanged",
}
