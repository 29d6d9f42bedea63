"""The native runtime (libfusion_edge, docs/native.md) as a bench backend, through its C ABI
with ctypes: `look` = fe_look on the decoded RGB8 frame, `ask` = fe_ask; the figures are the
library's own fe_stats (same names and meaning as the Python pipeline's last_stats).

The binding and where the library is found: fusion_edge/native.py.
"""
from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
from fusion_edge.native import AskOptions, OpenOptions, Stats, TokenCallback, load_library
from fusion_edge.runtime.errors import BackendError

from .weights import bundle_llm_bytes_per_token, disk_bytes


class NativeRunner:
    """A gguf bundle through libfusion_edge (the bench worker's runner interface)."""

    def __init__(self, path: str, threads: int, device: str, query_len: int | None):
        import json
        self.lib = load_library()
        h = ctypes.c_void_p()
        self.h: ctypes.c_void_p | None = h               # None once closed
        self._check(self.lib.fe_open(str(path).encode(), ctypes.byref(OpenOptions(threads, device.encode())),
                                     ctypes.byref(h)))
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

    def _stats(self) -> Stats:
        s = Stats()
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
        opts = AskOptions(max_new, 0.0, 1.0, 0, 0, self.query_len)
        self._check(self.lib.fe_ask(self.h, question.encode(), ctypes.byref(opts), TokenCallback(), None, None))
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
