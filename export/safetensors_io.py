"""Read and write safetensors with numpy only (bf16 included), never unpickling.

Reading parses the 8-byte header length + JSON header and reads each tensor with a
positional read when asked, so a tensor-by-tensor consumer (the GGUF writer, the segment
exporter) holds one tensor, not the model (no memory map: mapped pages would stay
resident and count against the export's RSS). Truncated files are detected from the
header's offsets.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fusion_edge.runtime.errors import CorruptCheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
          np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int8): "I8",
          np.dtype(np.uint8): "U8"}
MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 → bf16 bits (uint16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


class SafetensorsFile:
    """One .safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `get(k) -> float32/int ndarray`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptCheckpointError(f"{self.path} is truncated (no safetensors header).",
                                                 "re-download or re-copy the file")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER or n + 8 > size:
                    raise CorruptCheckpointError(f"{self.path} has an invalid or truncated header.",
                                                 "re-download or re-copy the file")
                header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptCheckpointError(f"{self.path} is not a safetensors file (bad JSON header).",
                                         "fusion-edge loads only .safetensors weights") from None
        self._data_start = 8 + n
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + end > size:
            raise CorruptCheckpointError(
                f"{self.path} is truncated: header expects {self._data_start + end} bytes, file has {size}.",
                "re-download or re-copy the file (an interrupted download leaves a short file)")
        for k, e in header.items():
            if e["dtype"] not in _DTYPES:
                raise CorruptCheckpointError(f"{self.path}: tensor {k} has unsupported dtype {e['dtype']}.",
                                             "convert the checkpoint to F32/F16/BF16 safetensors")

    def keys(self):
        return self._entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> str:
        return self._entries[key]["dtype"]

    def nbytes(self, key: str) -> int:
        a, b = self._entries[key]["data_offsets"]
        return b - a

    def raw(self, key: str) -> np.ndarray:
        """The stored bytes as an array of the stored dtype (bf16 as uint16), freshly read."""
        e = self._entries[key]
        a, b = e["data_offsets"]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        with open(self.path, "rb") as f:
            f.seek(self._data_start + a)
            buf = np.fromfile(f, dtype=dtype, count=(b - a) // dtype.itemsize)
        return buf.reshape(e["shape"])

    def get(self, key: str) -> np.ndarray:
        """The tensor as a fresh array; floating types are returned as float32."""
        arr = self.raw(key)
        if self.dtype(key) == "BF16":
            return bf16_to_f32(arr)
        if arr.dtype in (np.float16, np.float64):
            return arr.astype(np.float32)
        return arr


def save_file(tensors: dict[str, np.ndarray], path: str | Path, dtype: str = "F32",
              metadata: dict[str, str] | None = None) -> None:
    """Write float tensors as `dtype` (F32, F16 or BF16); other dtypes as they are."""
    header: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for k, v in tensors.items():
        v = np.asarray(v)
        if np.issubdtype(v.dtype, np.floating):
            if dtype == "BF16":
                data, code = f32_to_bf16(v), "BF16"
            else:
                data = v.astype(np.float16 if dtype == "F16" else np.float32)
                code = dtype
        else:
            data, code = v, _CODES[v.dtype]
        b = np.ascontiguousarray(data).tobytes()
        header[k] = {"dtype": code, "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
