"""The native runtime (libfusion_edge, docs/native.md) as a bench backend, through its C ABI
with ctypes: `look` = fe_look on the decoded RGB8 frame, `ask` = fe_ask; the figures are the
library's own fe_stats (same names and meaning as the Python pipeline's last_stats).

The library: $FUSION_NATIVE_LIB, else build/libfusion_edge.so when fusion-edge runs from its
source checkout (scripts/build_native.sh builds it there); an installed package has no build
folder, so there the variable is required.
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np
from fusion_edge.runtime.errors import BackendError

from .weights import bundle_llm_bytes_per_token, disk_bytes


class _OpenOptions(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int32), ("device", ctypes.c_char_p)]


class _AskOptions(ctypes.Structure):
    _fields_ = [("max_new_tokens", ctypes.c_int32), ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("top_k", ctypes.c_int32), ("seed", ctypes.c_uint64), ("query_len", ctypes.c_int32)]


class _Stats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_double) for n in ("preprocess_s", "vision_global_s", "vision_main_s", "prefill_s",
                                                "ttft_s", "decode_s", "decode_tokens_per_s")] + \
               [(n, ctypes.c_int32) for n in ("prompt_tokens", "new_tokens", "query_len")]


BUILD_FIX = ("build the native runtime from a fusion-edge source checkout (bash scripts/build_native.sh, "
             "docs/native.md) and set FUSION_NATIVE_LIB=/path/to/build/libfusion_edge.so")


def library_path() -> Path | None:
    """$FUSION_NATIVE_LIB, else the checkout's build/libfusion_edge.so (None: not a checkout)."""
    env = os.environ.get("FUSION_NATIVE_LIB")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "build" / "libfusion_edge.so" if (checkout / "CMakeLists.txt").is_file() else None


def load_library(path: Path | None = None):
    path = path or library_path()
    if path is None:
        raise BackendError("the native runtime library was not given: FUSION_NATIVE_LIB is not set and this "
                           "fusion-edge is an installed package, not a source checkout with a build folder.",
                           BUILD_FIX)
    if not path.is_file():
        raise BackendError(f"the native runtime library {path} does not exist.", BUILD_FIX)
    lib = ctypes.CDLL(str(path))
    P, c = ctypes.POINTER, ctypes
    lib.fe_open.argtypes = [c.c_char_p, P(_OpenOptions), P(c.c_void_p)]
    lib.fe_look.argtypes = [c.c_void_p, c.c_void_p, c.c_int32, c.c_int32, c.c_int32]
    lib.fe_ask.argtypes = [c.c_void_p, c.c_char_p, P(_AskOptions), c.c_void_p, c.c_void_p, c.c_void_p]
    lib.fe_answer_text.argtypes = [c.c_void_p]
    lib.fe_answer_text.restype = c.c_char_p
    lib.fe_answer_token_ids.argtypes = [c.c_void_p, P(c.c_int32)]
    lib.fe_answer_token_ids.restype = P(c.c_int32)
    lib.fe_debug_first_logits.argtypes = [c.c_void_p, P(c.c_int32)]
    lib.fe_debug_first_logits.restype = P(c.c_float)
    lib.fe_get_stats.argtypes = [c.c_void_p, P(_Stats)]
    lib.fe_last_error.restype = lib.fe_last_fix.restype = c.c_char_p
    lib.fe_close.argtypes = [c.c_void_p]
    return lib


class NativeRunner:
    """A gguf bundle through libfusion_edge (the bench worker's runner interface)."""

    def __init__(self, path: str, threads: int, device: str, query_len: int | None):
        import json
        self.lib = load_library()
        self.h = ctypes.c_void_p()
        self._check(self.lib.fe_open(str(path).encode(), ctypes.byref(_OpenOptions(threads, device.encode())),
                                     ctypes.byref(self.h)))
        self.query_len = query_len or 0
        m = json.loads((Path(path) / "fusion_bundle.json").read_text())
        llm = bundle_llm_bytes_per_token(path, m)
        self.info = {"kind": "bundle", "name": f"native-{m['target']}-{m['precision']}", "path": str(path),
                     "target": m["target"], "precision": m["precision"], "llm_backend": "llama.cpp (native C ABI)",
                     "device": device, "llm_bytes_per_token": llm["bytes"], "llm_bytes_method": llm["method"],
                     "disk_bytes": disk_bytes(path)}

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise BackendError(self.lib.fe_last_error().decode("utf-8", "replace"),
                               self.lib.fe_last_fix().decode("utf-8", "replace"))

    def _stats(self) -> _Stats:
        s = _Stats()
        self._check(self.lib.fe_get_stats(self.h, ctypes.byref(s)))
        return s

    def look(self, image):
        from PIL import Image
        t0 = time.perf_counter()
        rgb = np.ascontiguousarray(np.asarray(Image.open(image).convert("RGB")))   # decoding: as the Python runner
        self._check(self.lib.fe_look(self.h, rgb.ctypes.data, rgb.shape[1], rgb.shape[0], rgb.strides[0]))
        look_s = time.perf_counter() - t0
        s = self._stats()
        return None, {"preprocess_s": s.preprocess_s, "vision_global_s": s.vision_global_s, "look_s": look_s}

    def ask(self, _scene, question: str, max_new: int) -> dict:
        opts = _AskOptions(max_new, 0.0, 1.0, 0, 0, self.query_len)
        self._check(self.lib.fe_ask(self.h, question.encode(), ctypes.byref(opts), None, None, None))
        s, n, v = self._stats(), ctypes.c_int32(), ctypes.c_int32()
        ids = self.lib.fe_answer_token_ids(self.h, ctypes.byref(n))
        logits = self.lib.fe_debug_first_logits(self.h, ctypes.byref(v))
        return {"vision_main_s": s.vision_main_s, "prefill_s": s.prefill_s, "ttft_s": s.ttft_s,
                "decode_s": s.decode_s, "new_tokens": s.new_tokens, "prompt_tokens": s.prompt_tokens,
                "token_ids": [ids[i] for i in range(n.value)],
                "text": self.lib.fe_answer_text(self.h).decode("utf-8", "replace"),
                "first_logits": np.ctypeslib.as_array(logits, shape=(v.value,)).copy()}

    def __del__(self):
        if getattr(self, "h", None):
            self.lib.fe_close(self.h)
            self.h = None
