"""Names of the precisions a bundle's graphs can be stored in, shared by the command line
(export/), the planner (quantize/) and the benchmarks: one table, no imports.

VISION_PRECISIONS: `--vision-precision` of int8/int4 ONNX bundles, name → what the vision
tower becomes (quantize/planner.py `Plan.with_vision` turns a name into the plan's choice).
"""
from __future__ import annotations

VISION_PRECISIONS = {
    "int8": "the plan's int8 tower: int8-dynamic for --for cpu, int8-static for --for cuda|trt",
    "int8-dynamic": "int8 weights, activations quantized per call, no calibration (--for cpu only; "
                    "quantize/dynamic_int8.py)",
    "int8-static": "W8A8 static Q/DQ calibrated on the recording (quantize/static_int8.py)",
    "fp32": "the fp32 graph, copied unchanged",
}
