"""Bundle cases: each `break_(folder, other)` damages a copy of a real bundle (`other`: a
bundle of another checkpoint, for files swapped in from elsewhere); `expect` is the typed error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

MANIFEST = "fusion_bundle.json"


def _manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _missing(name):
    return lambda d, other: (d / name).unlink()


def _truncated(name):
    def run(d, other):
        p = d / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return run


def _replaced(name):
    """Same size, different bytes: only the sha256 can tell."""
    def run(d, other):
        p = d / name
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    return run


def _from_other(name):
    return lambda d, other: shutil.copy2(other / name, d / name)


def _files_renamed_in_manifest(d, other):
    def edit(m):
        m["files"]["segment_99.onnx"] = m["files"].pop("segment_03.onnx")
    _manifest(d, edit)


CASES = [
    ("manifest missing", _missing(MANIFEST), "BundleFileError"),
    ("manifest not JSON", lambda d, o: (d / MANIFEST).write_text("{'format': 1"), "BundleFileError"),
    ("manifest a list", lambda d, o: (d / MANIFEST).write_text("[]"), "BundleVersionError"),
    ("wrong format version", lambda d, o: _manifest(d, _set("format_version", 999)), "BundleVersionError"),
    ("manifest lost its components", lambda d, o: _manifest(d, lambda m: m.pop("components")), "BundleVersionError"),
    ("manifest names a file that is not there", _files_renamed_in_manifest, "BundleFileError"),
    ("vision graph missing", _missing("vision.onnx"), "BundleFileError"),
    ("segment graph truncated", _truncated("segment_05.onnx"), "BundleFileError"),
    ("alignment graph replaced (same size)", _replaced("align_03.onnx"), "BundleFileError"),
    ("tokenizer file missing", _missing("tokenizer/tokenizer.json"), "BundleFileError"),
    ("embed graph from another bundle", _from_other("embed.onnx"), "BundleFileError"),
    ("segment graph from another bundle", _from_other("segment_00.onnx"), "BundleFileError"),
]

GGUF_CASES = [
    ("llm.gguf missing", _missing("llm.gguf"), "BundleFileError"),
    ("llm.gguf truncated", _truncated("llm.gguf"), "BundleFileError"),
    ("llm.gguf replaced (same size)", _replaced("llm.gguf"), "BundleFileError"),
    ("llm.gguf from another bundle", _from_other("llm.gguf"), "BundleFileError"),
]
