"""fusion_edge.quantize: INT8/INT4 ONNX bundles, the precision planner and the quality gate.

planner.plan(target, precision, sm) → what each component runs at; onnx_quant.
export_quantized_bundle (fusion-export --precision int8|int4) → calibration, bundle_quant
(static_int8, weight_int4, weight_int8, embed_int8), agreement (the gate) and qdq_check
(TensorRT-ready Q/DQ). See docs/quantization.md.
"""
