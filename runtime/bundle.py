"""The bundle: a folder with `fusion_bundle.json`, graph/engine/GGUF files and the tokenizer.

Writing goes to a hidden temporary folder beside the target that is renamed into place
when complete, so an interrupted export leaves no bundle. Reading checks the format
version, that every listed file is present and that its sha256 matches, and fails with a
typed error naming the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import FusionConfig
from .errors import BundleError, BundleFileError, BundleMismatchError, BundleVersionError

MANIFEST = "fusion_bundle.json"
FORMAT = "fusion-edge-bundle"
FORMAT_VERSION = 1
REEXPORT = "re-export it with this fusion-edge version: fusion-export MODEL --target ... -o BUNDLE"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict

    # ---- facts --------------------------------------------------------------------------
    @property
    def config(self) -> FusionConfig:
        return FusionConfig.from_dict(self.manifest["fusion"])

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def options(self) -> dict:
        return self.manifest["options"]

    @property
    def components(self) -> dict:
        return self.manifest["components"]

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, check_hashes: bool = True) -> "Bundle":
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"bundle folder {path} does not exist.",
                              "export one first: fusion-export MODEL --target onnx -o " + str(path))
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise BundleFileError(f"{path} has no {MANIFEST}: it is not a bundle, or an incomplete copy.",
                                  "copy the whole bundle folder, or " + REEXPORT)
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleFileError(f"{mpath} is not valid JSON ({e}).", "restore it, or " + REEXPORT) from None
        if manifest.get("format") != FORMAT:
            raise BundleVersionError(f"{mpath} is not a fusion-edge bundle manifest.", REEXPORT)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleVersionError(
                f"bundle {path} has format version {version}; this fusion-edge reads version {FORMAT_VERSION}.",
                REEXPORT if (isinstance(version, int) and version < FORMAT_VERSION)
                else "upgrade fusion-edge (pip install -U fusion-edge) or " + REEXPORT)
        bundle = cls(path, manifest)
        bundle.check_files(check_hashes)
        return bundle

    def check_files(self, check_hashes: bool = True) -> None:
        for name, info in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise BundleFileError(f"bundle file {name} is missing from {self.path}.",
                                      "copy the complete bundle folder again, or " + REEXPORT)
            if f.stat().st_size != info["bytes"]:
                raise BundleFileError(
                    f"bundle file {name} has {f.stat().st_size} bytes, the manifest says {info['bytes']} "
                    "(truncated or modified).", "copy the complete bundle folder again, or " + REEXPORT)
            if check_hashes and sha256_file(f) != info["sha256"]:
                raise BundleFileError(f"bundle file {name} does not match its sha256 in the manifest "
                                      "(modified or corrupted).", "copy the bundle again, or " + REEXPORT)

    def check_source(self, fingerprint: str) -> None:
        have = self.manifest["source"]["fingerprint"]
        if have != fingerprint:
            raise BundleMismatchError(
                f"bundle {self.path} was built from a different checkpoint "
                f"({self.manifest['source'].get('model')}, fingerprint {have[:12]}…; given {fingerprint[:12]}…).",
                "pass the checkpoint the bundle was exported from, or re-export the bundle from this one")

    def update_manifest(self, **fields) -> None:
        """Rewrite the manifest with updated top-level fields (e.g. fresh verification figures)."""
        self.manifest.update(fields)
        _write_json_atomic(self.path / MANIFEST, self.manifest)


class BundleWriter:
    """Collects files in `<parent>/.<name>.partial-<pid>/`; `finish` renames into place."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out).resolve()
        if self.out.exists() and not overwrite:
            raise BundleError(f"{self.out} already exists.", "choose another -o folder, or pass --overwrite")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.out.parent.glob(f".{self.out.name}.partial-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)   # left by a killed export
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.overwrite = overwrite

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self, manifest: dict) -> Path:
        self.write_manifest(manifest)
        return self.commit()

    def write_manifest(self, manifest: dict) -> dict:
        """Hash every file and write the manifest inside the temporary folder (not yet visible)."""
        files = {}
        for f in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            rel = f.relative_to(self.tmp).as_posix()
            if rel == MANIFEST or rel.endswith(".tmp"):
                continue
            files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **manifest, "files": files}
        _write_json_atomic(self.tmp / MANIFEST, manifest)
        return manifest

    def commit(self) -> Path:
        """Rename the complete temporary folder into place."""
        if self.out.exists():
            if not self.overwrite:
                raise BundleError(f"{self.out} appeared while exporting.", "choose another -o folder")
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.rename(self.out, old)
            os.rename(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
