"""The one ctypes binding of the native runtime's C ABI (include/fusion_edge.h, and the parity
hooks of native/src/fusion_edge_debug.h), used by the bench's native backend and the parity
tests. Structures mirror the header's; every function's argument and result types are
declared here, once.

The library: $FUSION_NATIVE_LIB, else build/libfusion_edge.so when fusion-edge runs from its
source checkout (scripts/build_native.sh builds it there); an installed package has no build
folder, so there the variable is required.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from fusion_edge.runtime.errors import BackendError

BUILD_FIX = ("build the native runtime from a fusion-edge source checkout (bash scripts/build_native.sh, "
             "docs/native.md) and set FUSION_NATIVE_LIB=/path/to/build/libfusion_edge.so")


class OpenOptions(ctypes.Structure):
    """fe_open_options: threads (0: all cores), device (None: auto, b"cpu", b"cuda")."""
    _fields_ = [("threads", ctypes.c_int32), ("device", ctypes.c_char_p)]


class AskOptions(ctypes.Structure):
    """fe_ask_options; zeros are the header's defaults (64 tokens, greedy, top_p 1, the bundle's query_len)."""
    _fields_ = [("max_new_tokens", ctypes.c_int32), ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("top_k", ctypes.c_int32), ("seed", ctypes.c_uint64), ("query_len", ctypes.c_int32)]


class Stats(ctypes.Structure):
    """fe_stats: the same names and meaning as the Python pipeline's last_stats."""
    _fields_ = [(n, ctypes.c_double) for n in ("preprocess_s", "vision_global_s", "vision_main_s", "prefill_s",
                                                "ttft_s", "decode_s", "decode_tokens_per_s")] + \
               [(n, ctypes.c_int32) for n in ("prompt_tokens", "new_tokens", "query_len")]


# fe_token_callback(token_id, piece, user) → non-zero stops the answer
TokenCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)


def library_path() -> Path | None:
    """$FUSION_NATIVE_LIB, else the checkout's build/libfusion_edge.so (None: not a checkout)."""
    env = os.environ.get("FUSION_NATIVE_LIB")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "build" / "libfusion_edge.so" if (checkout / "CMakeLists.txt").is_file() else None


def load_library(path: Path | None = None) -> ctypes.CDLL:
    """The library at `path` (default: library_path()) with every function typed; a BackendError
    saying how to build it when there is none."""
    path = path or library_path()
    if path is None:
        raise BackendError("the native runtime library was not given: FUSION_NATIVE_LIB is not set and this "
                           "fusion-edge is an installed package, not a source checkout with a build folder.",
                           BUILD_FIX)
    if not path.is_file():
        raise BackendError(f"the native runtime library {path} does not exist.", BUILD_FIX)
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    P, c = ctypes.POINTER, ctypes
    i32, handle, status = c.c_int32, c.c_void_p, c.c_int
    table = {   # name: (argument types, result type)
        "fe_version": ([], c.c_char_p),
        "fe_last_error": ([], c.c_char_p),
        "fe_last_fix": ([], c.c_char_p),
        "fe_open": ([c.c_char_p, P(OpenOptions), P(handle)], status),
        "fe_look": ([handle, c.c_void_p, i32, i32, i32], status),
        # no token callback: pass TokenCallback() (a NULL function pointer), not None
        "fe_ask": ([handle, c.c_char_p, P(AskOptions), TokenCallback, c.c_void_p, P(i32)], status),
        "fe_answer_text": ([handle], c.c_char_p),
        "fe_answer_token_ids": ([handle, P(i32)], P(i32)),
        "fe_get_stats": ([handle, P(Stats)], status),
        "fe_close": ([handle], None),
        "fe_debug_tokenize": ([handle, c.c_char_p, P(i32), P(i32)], status),
        "fe_debug_first_logits": ([handle, P(i32)], P(c.c_float)),
        "fe_debug_preprocess": ([c.c_void_p, i32, i32, i32, i32, c.c_void_p, c.c_void_p], status),
    }
    for name, (args, result) in table.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, result
