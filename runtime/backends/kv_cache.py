"""Preallocated KV cache buffers bound to ONNX segment graphs through IO binding.

Layout per layer: (1, C, kv, hd) float32, C = capacity. With P cached and S new positions,
`past_*` is bound to rows [0, P) and `new_*` straight to rows [P, P+S): both are contiguous
in this layout, so onnxruntime writes the new rows in place and nothing is reallocated
per token. HostCache keeps numpy arrays (CPU EP); CudaCache keeps OrtValues in device
memory (CUDA EP) and binds by pointer, so the cache never crosses PCIe.

HeadMajorCache (CPU) is the layout of the GroupQueryAttention decode graph
(export/decode_attention.py): (1, kv, C, hd) per layer, BNSH, bound whole as both past_*
and present_* (the op appends the new row in place). The segments (prefill) still take
(1,P,kv,hd) rows: they get a transposed copy of rows [0, P) and write their new rows into a
scratch array that `flush()` transposes into the cache after the run — once per prompt,
(P + S)·kv·hd floats per layer, against a Transpose + Concat of the whole cache per layer
per token before.
"""
from __future__ import annotations

import numpy as np


class HostCache:
    device = "cpu"
    layout = "BSNH"

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

    def flush(self) -> None:
        """Nothing pending: the segments wrote straight into the cache."""


class HeadMajorCache:
    device = "cpu"
    layout = "BNSH"

    def __init__(self, layers: int, capacity: int, kv_heads: int, head_dim: int):
        shape = (1, kv_heads, capacity, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(layers)]
        self._pending: list[tuple[np.ndarray, int, np.ndarray]] = []

    def bind(self, io, name: str, buf: np.ndarray, start: int, rows: int, output: bool) -> None:
        """A segment's past_* (rows [start, start+rows), as (1,rows,kv,hd)) or new_* (a
        scratch array, written into the cache by flush())."""
        if not output:
            io.bind_cpu_input(name, self.rows(buf, start, rows))
            return
        scratch = np.empty((1, rows, buf.shape[1], buf.shape[3]), np.float32)
        self._pending.append((buf, start, scratch))
        io.bind_output(name, "cpu", 0, np.float32, list(scratch.shape), scratch.__array_interface__["data"][0])

    def flush(self) -> None:
        for buf, start, scratch in self._pending:
            buf[:, :, start:start + scratch.shape[1]] = scratch.transpose(0, 2, 1, 3)
        self._pending.clear()

    def bind_shared(self, io, past: str, present: str, buf: np.ndarray) -> None:
        """The whole buffer as the decode graph's past_* input and present_* output."""
        ptr = buf.__array_interface__["data"][0]
        io.bind_input(past, "cpu", 0, np.float32, list(buf.shape), ptr)
        io.bind_output(present, "cpu", 0, np.float32, list(buf.shape), ptr)

    def rows(self, buf: np.ndarray, start: int, rows: int) -> np.ndarray:
        """(1, rows, kv, hd), the segments' layout."""
        return np.ascontiguousarray(buf[:, :, start:start + rows].transpose(0, 2, 1, 3))


class CudaCache:
    device = "cuda"
    layout = "BSNH"

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

    def flush(self) -> None:
        """Nothing pending: the segments wrote straight into the cache."""
