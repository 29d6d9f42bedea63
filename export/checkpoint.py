"""Open a FUSION checkpoint: a local folder or a hub id, single-file or sharded safetensors.

`open_checkpoint` validates every tensor the architecture needs against the config
(names and shapes, from the headers only) before anything is computed, so a broken
checkpoint fails at once with the file and key named.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion_edge.runtime.config import CHECKPOINTS, FusionConfig, load_fusion_config
from fusion_edge.runtime.errors import (CheckpointError, CorruptCheckpointError,
                                        HubUnavailableError, MissingWeightError, WeightShapeError)

from .file_hash import cached_sha256
from .safetensors_io import SafetensorsFile
from .weight_map import TOWER, WeightEntry, all_entries

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]


FINGERPRINT_KINDS = ("weights", "headers")

@dataclass
class Checkpoint:
    folder: Path
    config: FusionConfig
    files: dict[str, SafetensorsFile]          # checkpoint key → file holding it
    entries: list[WeightEntry] = field(default_factory=list)

    def tensor(self, key: str) -> np.ndarray:
        return self.files[key].get(key)

    def canonical(self, entry: WeightEntry) -> np.ndarray:
        parts = [self.tensor(k) for k in entry.sources]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Canonical parameters (float32), optionally only those whose name starts with prefix."""
        return {e.name: self.canonical(e) for e in self.entries if e.name.startswith(prefix)}

    def fingerprint(self, kind: str = "weights") -> str:
        """The checkpoint's identity, recorded in bundles to refuse one from another checkpoint.

        weights: sha256 over config.json and every weight file's bytes (each file's hash cached
        by size and mtime, export/file_hash.py), so two fine-tunes of one architecture differ.
        headers: the older, cheaper form (config.json + safetensors headers only), kept to check
        bundles that recorded it.
        """
        if kind not in FINGERPRINT_KINDS:
            raise CheckpointError(f"unknown fingerprint kind '{kind}'.", f"use one of: {', '.join(FINGERPRINT_KINDS)}")
        h = hashlib.sha256((self.folder / "config.json").read_bytes())
        for f in sorted({f.path for f in self.files.values()}):
            h.update(f.name.encode())
            if kind == "weights":
                h.update(cached_sha256(f).encode())
                continue
            with open(f, "rb") as fp:
                n = int.from_bytes(fp.read(8), "little")
                h.update(fp.read(n))
            h.update(str(f.stat().st_size).encode())
        return h.hexdigest()

    def tokenizer(self):
        from .tokenizer_load import load_checkpoint_tokenizer
        return load_checkpoint_tokenizer(self.folder)


def resolve_model_dir(model: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; a hub id (or a released short name) through huggingface_hub's cache."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a checkpoint folder.",
                                  "pass the folder that holds config.json and the *.safetensors files")
        return path
    repo_id = CHECKPOINTS.get(str(model).lower(), str(model))
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise CheckpointError(f"'{model}' is neither an existing folder nor a hub id (owner/name).",
                              "check the path, or use e.g. starriver030515/FUSION-X-Phi3.5-3B")
    return _download(repo_id, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        from fusion_edge.runtime.errors import MissingExtraError
        raise MissingExtraError("huggingface_hub", "export", f"downloading {repo_id}") from None
    try:   # cache first: never touch the network for what is already here
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS,
                                      local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise _hub_error(repo_id, "HF_HUB_OFFLINE is set")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # connection, DNS, 401/404: all end here with the same advice
        raise _hub_error(repo_id, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def _hub_error(repo_id: str, why: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot fetch '{repo_id}' from the Hugging Face hub ({why}) and it is not in the local cache.",
        f"on a connected machine run `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR "
        "here and pass it as the model folder")


def _index_files(folder: Path) -> dict[str, SafetensorsFile]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise CorruptCheckpointError(f"{index} is not a valid shard index (no weight_map).",
                                         "restore the original index file") from None
        opened: dict[str, SafetensorsFile] = {}
        files = {}
        for key, fname in weight_map.items():
            if fname not in opened:
                if not (folder / fname).is_file():
                    raise CorruptCheckpointError(f"shard {folder / fname} listed in {index.name} is missing.",
                                                 "download every model-0000x-of-0000y.safetensors shard")
                opened[fname] = SafetensorsFile(folder / fname)
            if key not in opened[fname].keys():
                raise CorruptCheckpointError(f"{index.name} says {key} is in {fname}, but it is not.",
                                             "the shards and the index are from different versions; re-download")
            files[key] = opened[fname]
        return files
    singles = sorted(folder.glob("*.safetensors"))
    if not singles:
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        extra = f" (found {', '.join(pickled)}: pickled weights are never loaded)" if pickled else ""
        raise CheckpointError(f"no *.safetensors weights in {folder}{extra}.",
                              "use the checkpoint's safetensors release")
    files = {}
    for p in singles:
        f = SafetensorsFile(p)
        for k in f.keys():
            files[k] = f
    return files


def open_checkpoint(model: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    folder = resolve_model_dir(model, revision)
    config = load_fusion_config(folder)
    files = _index_files(folder)
    entries = all_entries(config)
    _validate(entries, files, config)
    return Checkpoint(folder, config, files, entries)


def _validate(entries: list[WeightEntry], files: dict[str, SafetensorsFile], config: FusionConfig) -> None:
    for e in entries:
        for key, shape in zip(e.sources, e.shapes):
            if key not in files:
                raise MissingWeightError(f"tensor '{key}' is missing from the checkpoint.",
                                         _missing_hint(key, config))
            found = files[key].shape(key)
            if found != shape:
                raise WeightShapeError(
                    f"tensor '{key}' in {files[key].path.name} has shape {found}, expected {shape}.",
                    _shape_hint(key, config))


def _missing_hint(key: str, config: FusionConfig) -> str:
    if key.startswith(TOWER + "encoder.layers."):
        return (f"the tower is configured with {config.tower.num_layers} running layers; the checkpoint "
                "must store the vision tower weights (FUSION checkpoints do)")
    return "the checkpoint is incomplete or not a FUSION checkpoint of this architecture; re-download it"


def _shape_hint(key: str, config: FusionConfig) -> str:
    if key.startswith(TOWER):
        t = config.tower
        return (f"mm_vision_tower '{config.mm_vision_tower}' gives Dv={t.hidden_size}, {t.num_heads} heads, "
                f"MLP {t.intermediate_size}, patch {t.patch_size}: if the tower differs, point mm_vision_tower "
                "at a folder holding its config.json")
    return "config.json and the weights disagree; use the config.json that came with these weights"

