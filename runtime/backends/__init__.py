"""Inference backends: onnxruntime, llama.cpp, TensorRT."""
