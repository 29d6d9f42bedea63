"""The few ggml things the llama.cpp backend touches from Python, in ctypes.

* `GgmlTensor` mirrors `struct ggml_tensor` of the ggml.h shipped with llama-cpp-python
  0.3.x (type, buffer, ne[4], nb[4], op, op_params[16], flags, src[10], view_src,
  view_offs, data, name[64], extra, padding[8]). `check_layout` proves the mirror against
  the loaded library before it is trusted: it makes a real tensor with `ggml_new_tensor_2d`
  and compares every field it reads with what ggml's own accessors return.
* `read_rows` / `write_rows` copy rows of a tensor out of / into its backend buffer with
  `ggml_backend_tensor_get/set` (libggml-base): the portable way, correct for CPU host
  buffers and for GPU buffers alike.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import BackendError

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64


class GgmlTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


NAME_OFFSET = GgmlTensor.name.offset


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_LIB = None


def _lib_path() -> Path:
    import llama_cpp
    base = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    names = {"darwin": ["libggml-base.dylib"], "win32": ["ggml-base.dll"]}.get(sys.platform, ["libggml-base.so"])
    for name in names:
        if (base / name).exists():
            return base / name
    raise BackendError(f"libggml-base is not in {base}.",
                       "reinstall llama-cpp-python (pip install --force-reinstall llama-cpp-python)")


def lib():
    """libggml-base with the prototypes used here (loaded once; llama_cpp already holds it)."""
    global _LIB
    if _LIB is None:
        L = ctypes.CDLL(str(_lib_path()))
        P, S = ctypes.c_void_p, ctypes.c_size_t
        for fn, args, res in (
                ("ggml_backend_tensor_get", [P, P, S, S], None),
                ("ggml_backend_tensor_set", [P, P, S, S], None),
                ("ggml_init", [_InitParams], P),
                ("ggml_free", [P], None),
                ("ggml_new_tensor_2d", [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], P),
                ("ggml_set_name", [P, ctypes.c_char_p], P),
                ("ggml_get_name", [P], P),
                ("ggml_get_data", [P], P),
                ("ggml_nbytes", [P], S)):
            f = getattr(L, fn)
            f.argtypes, f.restype = args, res
        _LIB = L
    return _LIB


def tensor_at(ptr: int) -> GgmlTensor:
    return GgmlTensor.from_address(ptr)


def tensor_name(ptr: int) -> bytes:
    return ctypes.string_at(ptr + NAME_OFFSET)


def check_layout() -> None:
    """Raise BackendError unless `GgmlTensor` matches the loaded ggml's struct."""
    from llama_cpp import GGML_TYPE_F32
    L = lib()
    ctx = L.ggml_init(_InitParams(1 << 16, None, False))
    if not ctx:
        raise BackendError("ggml_init failed while checking the ggml_tensor layout.", "reinstall llama-cpp-python")
    try:
        ptr = L.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 5, 3)
        L.ggml_set_name(ptr, b"fusion-probe")
        t = tensor_at(ptr)
        ok = (t.type == GGML_TYPE_F32 and list(t.ne) == [5, 3, 1, 1] and list(t.nb) == [4, 20, 60, 60]
              and t.data == L.ggml_get_data(ptr) and L.ggml_get_name(ptr) == ptr + NAME_OFFSET
              and t.name == b"fusion-probe" and L.ggml_nbytes(ptr) == 60 and t.view_src is None)
    finally:
        L.ggml_free(ctx)
    if not ok:
        raise BackendError("this llama-cpp-python's ggml_tensor layout differs from the one fusion-edge mirrors.",
                           "install llama-cpp-python 0.3.x (pip install 'llama-cpp-python>=0.3,<0.4')")


def read_rows(ptr: int, row0: int, n_rows: int, row_bytes: int) -> np.ndarray:
    """Rows [row0, row0+n_rows) of a contiguous f32 tensor → (n_rows, row_bytes/4) float32."""
    out = np.empty((n_rows, row_bytes // 4), np.float32)
    lib().ggml_backend_tensor_get(ptr, out.ctypes.data, row0 * row_bytes, n_rows * row_bytes)
    return out


def write_rows(ptr: int, row0: int, rows: np.ndarray, row_bytes: int) -> None:
    """Overwrite rows starting at row0 of a contiguous f32 tensor with `rows` (n, row_bytes/4)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.shape[-1] * 4 != row_bytes:
        raise BackendError(f"rows of width {rows.shape[-1]} do not fit tensor rows of {row_bytes // 4}.",
                           "re-export the bundle")
    lib().ggml_backend_tensor_set(ptr, rows.ctypes.data, row0 * row_bytes, rows.nbytes)
