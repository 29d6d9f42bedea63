"""Preallocated KV cache buffers bound to ONNX segment graphs through IO binding.

Layout per layer: (1, C, kv, hd) float32, C = capacity. With P cached and S new positions,
`past_*` is bound to rows [0, P) and `new_*` straight to rows [P, P+S): both are contiguous
in this layout, so onnxruntime writes the new rows in place and nothing is reallocated
per token. HostCache keeps numpy arrays (CPU EP); CudaCache keeps OrtValues in device
memory (CUDA EP) and binds by pointer, so the cache never crosses PCIe.
"""
from __future__ import annotations

import numpy as np


class HostCache:
    device = "cpu"

    def __init__(self, layers: int, capacity: int, kv_heads: int, head_dim: int):
        shape = (1, capacity, kv_heads, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(layers)]

    def bind(self, io, name: str, buf: np.ndarray, start: int, rows: int, output: bool) -> None:
        view = buf[:, start:start + rows]
        if output:
            io.bind_output(name, "cpu", 0, np.float32, list(view.shape), view.__array_interface__["data"][0])
        else:
            io.bind_cpu_input(name, view)

    def rows(self, buf: np.ndarray, start: int, rows: int) -> np.ndarray:
        return buf[:, start:start + rows].copy()


class CudaCache:
    device = "cuda"

    def __init__(self, layers: int, capacity: int, kv_heads: int, head_dim: int, device_id: int = 0):
        import onnxruntime as ort
        self.shape = [1, capacity, kv_heads, head_dim]
        self.row_bytes = kv_heads * head_dim * 4
        self.device_id = device_id

        def alloc():
            return ort.OrtValue.ortvalue_from_shape_and_type(self.shape, np.float32, "cuda", device_id)
        self.k = [alloc() for _ in range(layers)]
        self.v = [alloc() for _ in range(layers)]

    def bind(self, io, name: str, buf, start: int, rows: int, output: bool) -> None:
        shape = [1, rows] + self.shape[2:]
        ptr = buf.data_ptr() + start * self.row_bytes
        bind = io.bind_output if output else io.bind_input
        bind(name, "cuda", self.device_id, np.float32, shape, ptr)

    def rows(self, buf, start: int, rows: int) -> np.ndarray:
        return buf.numpy()[:, start:start + rows].copy()
