"""Checkpoint cases: each `break_(folder)` damages a copy of a real tiny checkpoint (one
safetensors file, or sharded with an index); `expect` is the typed error."""
from __future__ import annotations

import json
import struct
from pathlib import Path


def _config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


_DELETE = object()


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), n


def _retype_first_tensor(folder: Path) -> None:
    """A weight stored as I32 (same byte size as F32): a dtype no FUSION checkpoint uses."""
    path = next(folder.glob("*.safetensors"))
    head, n = _header(path)
    name = next(k for k in head if k != "__metadata__" and head[k]["dtype"] == "F32")
    head[name]["dtype"] = "I32"
    raw = json.dumps(head).encode()
    raw += b" " * (n - len(raw))                        # keep the header size: offsets stay valid
    data = path.read_bytes()
    path.write_bytes(data[:8] + raw[:n] + data[8 + n:])


def _drop_a_shard(folder: Path) -> None:
    next(iter(sorted(folder.glob("model-*-of-*.safetensors")))).unlink()


def _index_names_a_missing_file(folder: Path) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "model-00009-of-00009.safetensors"
    path.write_text(json.dumps(index))


def _truncate_weights(folder: Path) -> None:
    path = next(folder.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (name, sharded source?, break, expected error class)
CASES = [
    ("config field missing (hidden_size)", False, lambda d: _config(d, hidden_size=_DELETE), "ConfigError"),
    ("config field a string (num_hidden_layers)", False, lambda d: _config(d, num_hidden_layers="32"), "ConfigError"),
    ("config field a fraction (vocab_size)", False, lambda d: _config(d, vocab_size=832.5), "ConfigError"),
    ("config field a list (window_size)", False, lambda d: _config(d, window_size=[3]), "ConfigError"),
    ("config field a bool (num_attention_heads)", False, lambda d: _config(d, num_attention_heads=True),
     "ConfigError"),
    ("query_len with a zero", False, lambda d: _config(d, query_len="0,4"), "ConfigError"),
    ("query_len with a fraction", False, lambda d: _config(d, query_len=[4, 16.5]), "ConfigError"),
    ("unsupported rope scaling", False, lambda d: _config(d, rope_scaling={"type": "yarn", "factor": 4.0}),
     "ConfigError"),
    ("unknown model_type", False, lambda d: _config(d, model_type="fusion_mistral"),
     "UnsupportedArchitectureError"),
    ("a gelu decoder MLP", False, lambda d: _config(d, hidden_act="gelu"), "UnsupportedArchitectureError"),
    ("projections with bias", False, lambda d: _config(d, attention_bias=True), "UnsupportedArchitectureError"),
    ("MLP with bias", False, lambda d: _config(d, mlp_bias=True), "UnsupportedArchitectureError"),
    ("config.json not JSON", False, lambda d: (d / "config.json").write_text("{hidden_size: 64"), "ConfigError"),
    ("a weight of the wrong dtype", False, _retype_first_tensor, "CheckpointError"),
    ("truncated safetensors", False, _truncate_weights, "CheckpointError"),
    ("a missing shard", True, _drop_a_shard, "CheckpointError"),
    ("the index names a missing file", True, _index_names_a_missing_file, "CheckpointError"),
]
