"""The manifest fields of a trt bundle: `tensorrt` (profiles, context, precision plan, the
options the engines are built with) and `engines` (pending until built on the target)."""
from __future__ import annotations

from collections.abc import Mapping

from fusion_edge.runtime.config import FusionConfig
from fusion_edge.runtime.trt import stamp
from fusion_edge.runtime.trt.profiles import bundle_profiles, max_context

INT4_MIN_TRT = "10.0"       # INT4 block DequantizeLinear (opset 21) is a TensorRT 10 feature


def trt_fields(manifest: Mapping, plan: dict) -> dict:
    """The exporter's manifest fields → the same with the trt sections (plan: planner.Plan.to_dict())."""
    cfg = FusionConfig.from_dict(manifest["fusion"])
    options = {**manifest["options"], "max_context": max_context(cfg)}
    notes = list(plan.get("notes", []))
    if manifest["precision"] == "int4":
        notes.append(f"int4 weight-only blocks need TensorRT ≥ {INT4_MIN_TRT}; with an older TensorRT onnxruntime "
                     "runs those DequantizeLinear → MatMul nodes on its CUDA EP instead (same numbers, slower)")
    return {**manifest, "options": options,
            "tensorrt": {"profiles": bundle_profiles(cfg, manifest["components"], int(options["image_tokens"])),
                         "max_context": options["max_context"], "plan": {**plan, "notes": notes},
                         "int4_min_tensorrt": INT4_MIN_TRT if manifest["precision"] == "int4" else None},
            stamp.ENGINES_KEY: stamp.pending()}
