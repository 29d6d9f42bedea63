"""Whether a bundle's weights fit in this machine's memory, for choosing low-memory sessions.

Opened normally, onnxruntime prepacks every MatMul weight into anonymous memory, once per
session: the LLM's weights twice (segments and decode graph), the rest once. In low-memory
mode (ort_session.make_session) they stay memory-mapped file pages instead, which the
kernel can drop and re-read: slower, but a bundle larger than RAM still opens.
"""
from __future__ import annotations


from .layout import DECODE, SHARED_DATA

HEADROOM = 0.8       # of the available memory: activations, KV cache, Python and the page cache


def available_bytes() -> int | None:
    """MemAvailable (Linux), else None (unknown: assume the weights fit)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def packed_bytes(manifest) -> int:
    """Bytes the ONNX weights take once prepacked: every .onnx/.onnx.data file, the shared
    LLM weights twice when a decode graph uses them too."""
    files = manifest.files
    total = sum(int(f["bytes"]) for name, f in files.items() if name.endswith((".onnx", ".onnx.data")))
    if DECODE in manifest.components and SHARED_DATA in files:
        total += int(files[SHARED_DATA]["bytes"])
    return total


def needs_low_memory(manifest, available: int | None = None) -> bool:
    """True when the prepacked weights would not fit in HEADROOM of the available memory."""
    available = available_bytes() if available is None else available
    return available is not None and packed_bytes(manifest) > HEADROOM * available
