"""The bundle: a folder with `fusion_bundle.json`, graph/engine/GGUF files and the tokenizer.

Writing goes to a hidden temporary folder beside the target that is renamed into place
when complete, so an interrupted export leaves no bundle; the next writer of the same target
removes what a killed one left (its `.partial-<pid>` folder, a `.old-<pid>` of --overwrite). Reading checks the format
version, that every listed file is present and that its sha256 matches, and fails with a
typed error naming the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FusionConfig
from .errors import (BundleError, BundleFileError, BundleMismatchError, BundlePathError, BundleVersionError,
                     UnverifiedBundleError)
from .outputs import LOCKS, existing_ancestor, folder_held, hold_folder, write_error

MANIFEST = "fusion_bundle.json"
FORMAT = "fusion-edge-bundle"
FORMAT_VERSION = 1
# verification_status → what it means, for warnings and errors
VERIFICATION_STATES = {
    "passed": "verified against the PyTorch reference and within its gate",
    "forced": "below its quality gate, kept with --force",
    "failed": "its last `fusion-edge verify` was below the gate",
    "skipped": "exported with --no-verify",
}
REEXPORT = "re-export it with this fusion-edge version: fusion-export MODEL --target ... -o BUNDLE"


COMPONENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PARTIAL_NAME = re.compile(r"\.(.+)\.partial-(\d+)")      # BundleWriter's folder: .<name>.partial-<pid>
UNSAFE = "a bundle is something people download and share: it may name only files inside its own folder"


def confined(root: Path, name: str, what: str = "file") -> Path:
    """root / name, refused (BundlePathError) unless it stays inside root: a relative POSIX path
    without `..`, whose resolved target (symlinks followed) lies under the resolved root."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or ":" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise BundlePathError(f"bundle {root} names the {what} {name!r}, which is not a plain path inside "
                              "the bundle folder.", f"{UNSAFE}; re-export the bundle or get it again from its source")
    path = root / name
    base = root.resolve()
    real = path.resolve()
    if real != base and not real.is_relative_to(base):
        raise BundlePathError(f"bundle {root}: the {what} {name!r} leads outside the bundle folder (to {real}).",
                              f"{UNSAFE}; replace the link with the file itself, or get the bundle again")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- the manifest schema (format version 1) ------------------------------------------------
# Both classes keep the JSON record they were read from and read as it (`comp["files"]`),
# so a field a target adds (GGUF quant type, quantization report) survives a round trip.
@dataclass(frozen=True)
class Component(Mapping):
    """One part of a bundle: a graph or a GGUF, the engine family that runs it, its files."""
    name: str
    backend: str                      # onnxruntime | llama.cpp: the engine family
    precision: str
    files: tuple[str, ...]            # the first is what the engine opens
    record: dict = field(repr=False, compare=False)

    REQUIRED = ("backend", "precision", "files")

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> "Component":
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing or not d.get("files"):
            raise BundleVersionError(f"bundle component '{name}' lacks {', '.join(missing) or 'files'} "
                                     "(a manifest from another fusion-edge version).", REEXPORT)
        return cls(name, d["backend"], d["precision"], tuple(d["files"]), {"name": name, **d})

    def to_dict(self) -> dict:
        return dict(self.record)

    @property
    def file(self) -> str:
        return self.files[0]

    # segment_* components: decoder layers [a, b), whether it ends in the logits, and the
    # interaction layer that runs on its output (None: none)
    @property
    def layers(self) -> tuple[int, int]:
        a, b = self.record["layers"]
        return int(a), int(b)

    @property
    def final(self) -> bool:
        return bool(self.record.get("final", False))

    @property
    def align_after(self) -> int | None:
        return self.record.get("align_after")

    @property
    def inputs(self) -> list[str]:
        return list(self.record.get("inputs", []))

    @property
    def outputs(self) -> list[str]:
        return list(self.record.get("outputs", []))

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)


@dataclass(frozen=True)
class Manifest(Mapping):
    """`fusion_bundle.json`: what was exported (target, precision, source checkpoint), the
    FUSION facts, the components, every file's sha256 and size, build info and figures."""
    target: str
    precision: str
    llm_backend: str
    components: dict[str, Component]
    files: dict[str, dict]            # relative path → {"sha256", "bytes"}
    data: dict = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = MANIFEST) -> "Manifest":
        """Check format and version first: an old or foreign manifest is refused by name."""
        if d.get("format") != FORMAT:
            raise BundleVersionError(f"{where} is not a fusion-edge bundle manifest.", REEXPORT)
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleVersionError(
                f"{where} has format version {version}; this fusion-edge reads version {FORMAT_VERSION}.",
                REEXPORT if (isinstance(version, int) and version < FORMAT_VERSION)
                else "upgrade fusion-edge (pip install -U fusion-edge) or " + REEXPORT)
        missing = [k for k in ("target", "precision", "source", "fusion", "options", "components", "files")
                   if k not in d]
        if missing:
            raise BundleVersionError(f"{where} lacks {', '.join(missing)}.", REEXPORT)
        bad = [n for n in d["components"] if not (isinstance(n, str) and COMPONENT_NAME.fullmatch(n))]
        if bad:    # names become engine-cache folders (runtime/trt/ep.py): plain names only
            raise BundlePathError(f"{where} has components named {bad[:3]}, not plain names.",
                                  f"{UNSAFE}; re-export the bundle")
        comps = {n: Component.from_dict(n, c) for n, c in d["components"].items()}
        return cls(d["target"], d["precision"], d.get("llm_backend", "onnxruntime"), comps, dict(d["files"]),
                   dict(d))

    def to_dict(self) -> dict:
        return {**self.data, "components": {n: c.to_dict() for n, c in self.components.items()}}

    def updated(self, **fields) -> "Manifest":
        return Manifest.from_dict({**self.to_dict(), **fields})

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def new_manifest(fields: Mapping, files: dict[str, dict]) -> Manifest:
    """The manifest of a freshly written bundle: format header, creation time, `fields`
    (target, precision, source, fusion, options, prompt, components, build), files."""
    plain = {k: (v.to_dict() if isinstance(v, (Manifest, Component)) else v) for k, v in fields.items()}
    plain["components"] = {n: (c.to_dict() if isinstance(c, Component) else dict(c))
                           for n, c in plain.get("components", {}).items()}
    return Manifest.from_dict({"format": FORMAT, "format_version": FORMAT_VERSION,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **plain,
                               "files": files})


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    def __post_init__(self):
        if not isinstance(self.manifest, Manifest):
            self.manifest = Manifest.from_dict(self.manifest, str(Path(self.path) / MANIFEST))

    # ---- facts --------------------------------------------------------------------------
    @property
    def config(self) -> FusionConfig:
        return FusionConfig.from_dict(self.manifest["fusion"])

    @property
    def target(self) -> str:
        return self.manifest.target

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def options(self) -> dict:
        return self.manifest["options"]

    @property
    def components(self) -> dict[str, Component]:
        return self.manifest.components

    def component(self, name: str) -> Component:
        try:
            return self.manifest.components[name]
        except KeyError:
            raise BundleFileError(f"bundle {self.path} has no '{name}' component.", REEXPORT) from None

    def component_names(self, prefix: str) -> list[str]:
        """Sorted names of the components starting with `prefix` (align_, segment_)."""
        return sorted(n for n in self.manifest.components if n.startswith(prefix))

    def file(self, name: str) -> Path:
        return confined(self.path, name)

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, check_hashes: bool = True) -> "Bundle":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise BundleError(f"{path} is a file, not a bundle folder.",
                              f"pass the folder that holds {MANIFEST} (the export's -o folder)")
        if not path.is_dir():
            raise BundleError(f"bundle folder {path} does not exist.",
                              "export one first: fusion-export MODEL --target onnx -o " + str(path))
        partial = PARTIAL_NAME.fullmatch(path.resolve().name)
        if partial and not _writing(path, int(partial.group(2))):
            raise BundleFileError(f"{path} is what an export that did not finish (process {partial.group(2)}) left, "
                                  "not a bundle.", f"export again to {path.parent / partial.group(1)}: the next "
                                  "export there removes this folder")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise BundleFileError(f"{path} has no {MANIFEST}: it is not a bundle, or an incomplete copy.",
                                  "copy the whole bundle folder, or " + REEXPORT)
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleFileError(f"{mpath} is not valid JSON ({e}).", "restore it, or " + REEXPORT) from None
        if not isinstance(data, dict):
            raise BundleVersionError(f"{mpath} is not a fusion-edge bundle manifest.", REEXPORT)
        bundle = cls(path, Manifest.from_dict(data, f"bundle {path}"))
        bundle.check_files(check_hashes)
        return bundle

    def check_files(self, check_hashes: bool = True) -> None:
        """Every path the bundle names stays inside its folder (checked before any is opened);
        every listed file is present, of its size and (check_hashes) its sha256; the files an
        ONNX graph references as external data are listed files too."""
        for name in self.manifest.files:
            confined(self.path, name)
        for comp in self.components.values():
            for name in comp.files:
                confined(self.path, name, f"file of component {comp.name}")
        for name, info in self.manifest.files.items():
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
        for name in self.manifest.files:
            if name.endswith(".onnx"):
                self._check_external_data(name)

    def _check_external_data(self, graph: str) -> None:
        """The external-data files of ONNX graph `graph` (relative to its folder) are listed files
        inside the bundle: onnxruntime opens them by the name the graph stores."""
        from .onnx_refs import WireError, external_locations
        try:
            locations = external_locations(self.path / graph)
        except (WireError, OSError, ValueError) as e:
            raise BundleFileError(f"bundle file {graph} is not a readable ONNX graph ({e}).",
                                  "copy the bundle again, or " + REEXPORT) from None
        folder = graph.rpartition("/")[0]
        for loc in sorted(locations):
            rel = f"{folder}/{loc}" if folder else loc
            confined(self.path, rel, f"external data of {graph}")
            if rel not in self.manifest.files:
                raise BundlePathError(f"bundle graph {graph} reads external data {loc!r}, which the manifest "
                                      "does not list (its size and sha256 are unchecked).",
                                      f"{UNSAFE}; re-export the bundle")

    @property
    def fingerprint_kind(self) -> str:
        """How the source checkpoint was fingerprinted (bundles from before 'weights': headers)."""
        return self.manifest["source"].get("fingerprint_kind", "headers")

    def check_source(self, fingerprint) -> None:
        """`fingerprint`: the checkpoint's fingerprint, or a function kind → fingerprint (e.g.
        `Checkpoint.fingerprint`), called with this bundle's fingerprint_kind."""
        if callable(fingerprint):
            fingerprint = fingerprint(self.fingerprint_kind)
        have = self.manifest["source"]["fingerprint"]
        if have != fingerprint:
            raise BundleMismatchError(
                f"bundle {self.path} was built from a different checkpoint "
                f"({self.manifest['source'].get('model')}, fingerprint {have[:12]}…; given {fingerprint[:12]}…).",
                "pass the checkpoint the bundle was exported from, or re-export the bundle from this one")

    # ---- verification state ---------------------------------------------------------------
    @property
    def verification_status(self) -> str:
        """passed | forced (kept below its gate with --force) | failed (a later `verify` failed)
        | skipped (--no-verify). Bundles from before the field: derived from the figures."""
        status = self.manifest.get("verification_status")
        if status in VERIFICATION_STATES:
            return status
        figures = self.manifest.get("verification")
        if not figures:
            return "skipped"
        return "passed" if figures.get("passed") else "forced"

    def verification_warning(self) -> str | None:
        """One line for a bundle whose verification did not pass, else None."""
        status = self.verification_status
        if status == "passed":
            return None
        return (f"bundle {self.path.name} is not verified: {VERIFICATION_STATES[status]}; "
                "its answers may differ from the original model (run `fusion-edge verify`, or re-export)")

    def update_manifest(self, **fields) -> None:
        """Rewrite the manifest with updated top-level fields (e.g. fresh verification figures)."""
        updated = self.manifest.updated(**fields)
        try:
            _write_json_atomic(self.path / MANIFEST, updated.to_dict())
        except OSError as e:        # a read-only or full disk: the manifest on disk is unchanged
            raise write_error(e, self.path, "manifest of bundle", self.path / MANIFEST,
                              "copy the bundle to a folder") from None
        self.manifest = updated


class BundleWriter:
    """Collects files in `<parent>/.<name>.partial-<pid>/` (flock-ed while it writes); `finish`
    renames into place. A folder that cannot be written is a typed error here, before any work."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out).resolve()
        if self.out.exists() and not overwrite:
            raise BundleError(f"{self.out} already exists.", "choose another -o folder, or pass --overwrite")
        self.overwrite = overwrite
        self._lock: int | None = None
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.out)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except OSError as e:
            raise write_error(e, existing_ancestor(self.out.parent), "bundle", self.out) from None
        self._lock = hold_folder(self.tmp)

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self, manifest: dict) -> Path:
        self.write_manifest(manifest)
        return self.commit()

    def write_manifest(self, manifest: Mapping) -> Manifest:
        """Hash every file and write the manifest inside the temporary folder (not yet visible)."""
        files = {}
        for f in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            rel = f.relative_to(self.tmp).as_posix()
            if rel == MANIFEST or rel.endswith(".tmp"):
                continue
            files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        written = new_manifest(manifest, files)
        _write_json_atomic(self.tmp / MANIFEST, written.to_dict())
        return written

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
        self._release()
        return self.out

    def abort(self) -> None:
        self._release()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def write_bundle(out: str | os.PathLike, fill: Callable[[BundleWriter], Mapping],
                 verify: Callable[[Path], dict] | None = None, overwrite: bool = False) -> Path:
    """The export sequence every target plugs into: a BundleWriter → `fill(writer)` writes the
    target's files and returns the manifest fields (components included) → manifest with
    every file's hash → `verify(folder)` (None: skipped) raises below its gate or returns the
    figures, stored as `verification` with `verification_status` → rename into place. Any
    error leaves no bundle."""
    with BundleWriter(out, overwrite) as writer:
        bundle = Bundle(writer.tmp, writer.write_manifest(fill(writer)))
        if verify is None:
            bundle.update_manifest(verification_status="skipped")
        else:
            figures = verify(writer.tmp)
            bundle.update_manifest(verification=figures,
                                   verification_status="passed" if figures.get("passed") else "forced")
        return writer.commit()


def check_verified(bundle: Bundle, why: str = "--strict refuses it") -> None:
    """Refuse a bundle whose verification did not pass (`--strict`, quantization sources)."""
    status = bundle.verification_status
    if status != "passed":
        raise UnverifiedBundleError(f"bundle {bundle.path} is not verified ({VERIFICATION_STATES[status]}); "
                                    f"{why}.",
                                    "run `fusion-edge verify BUNDLE --model CHECKPOINT`, or re-export it "
                                    "without --no-verify / --force")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale(out: Path) -> list[Path]:
    """Remove what killed writers of `out` left beside it: `.<name>.partial-<pid>` folders whose
    writer is gone (its pid dead, or alive but not holding the folder's lock: a reused pid) and
    `.<name>.old-<pid>` folders of an interrupted --overwrite. → the folders removed."""
    removed = []
    for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(pattern):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            if _alive(int(pid)) and (pattern.endswith(".old-*") or not LOCKS or folder_held(stale)):
                continue
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _writing(folder: Path, pid: int) -> bool:
    """Whether the writer of the temporary folder `folder` still runs (it, or a child process
    verifying it, may open it)."""
    return folder_held(folder) if LOCKS else _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:         # EPERM: it exists, under another user
        return True
