"""Versions of the libraries whose releases can move a bundle's numbers, read from package
metadata (nothing is imported, so the runtime never loads torch for this).

Recorded at export (manifest `build`) and with every verification (`verification.versions`);
`fusion-edge verify` names what changed since the bundle was built.
"""
from __future__ import annotations

from importlib import metadata

# key in the manifest → distributions that provide it (first installed wins)
PACKAGES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "tokenizers": ("tokenizers",),
    "llama_cpp_python": ("llama_cpp_python",),
    "gguf": ("gguf",),
}


def installed() -> dict[str, str | None]:
    """{key: version or None when not installed} for every key of PACKAGES."""
    return {key: _first_version(dists) for key, dists in PACKAGES.items()}


def _first_version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def drift(recorded: dict, now: dict | None = None) -> list[tuple[str, str, str]]:
    """(package, recorded version, installed version) for each package the bundle recorded
    whose installed version differs (None = not installed)."""
    now = installed() if now is None else now
    return [(k, str(recorded[k]), str(now.get(k))) for k in PACKAGES
            if recorded.get(k) is not None and now.get(k) is not None and recorded[k] != now[k]]


def describe_drift(changes: list[tuple[str, str, str]]) -> str:
    return ", ".join(f"{k} {was} → {now}" for k, was, now in changes)
