"""sha256 of large files, cached by (path, size, mtime) so that fingerprinting a 10 GB
checkpoint costs one read per file version, not one per export or verify.

The cache is a JSON file in $XDG_CACHE_HOME/fusion-edge (or ~/.cache/fusion-edge); a cache
that cannot be read or written is ignored (the hash is then computed each time).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fusion_edge.runtime.bundle import sha256_file

CACHE_FILE = "file-sha256.json"
MAX_ENTRIES = 4096


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fusion-edge" / CACHE_FILE


def cached_sha256(path: Path) -> str:
    """sha256 of `path`'s bytes; from the cache when the file's size and mtime are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache = _load()
    if key in cache:
        return cache[key]
    digest = sha256_file(path)
    cache[key] = digest
    _save(dict(list(cache.items())[-MAX_ENTRIES:]))
    return digest


def _load() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(cache: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
