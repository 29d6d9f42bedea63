"""The manifest's `engines` section: whether a bundle's TensorRT engines exist, and for what.

    {"state": "pending"}                                         exported on a host without TensorRT
    {"state": "built", "tensorrt_version": "10.3.0", "gpu_name": "Orin", "sm": "8.7",
     "provider": "TensorrtExecutionProvider", "built_at": "...",
     "graphs": {graph: {"files": {relative path: sha256}}}}     built on the target
Engines are bound to a GPU architecture and a TensorRT version: a built stamp that does not
match the running platform is refused with the versions (or SMs) named and the fix, before
onnxruntime or TensorRT sees the files. `check_stamp` is pure (the platform is passed in).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import EngineMismatchError

ENGINES_KEY = "engines"
ENGINES_DIR = "engines"
REBUILD = "fusion-edge build-engines {bundle} --rebuild"


@dataclass(frozen=True)
class Platform:
    """What engines are built for: TensorRT version, GPU name, compute capability (SM)."""
    tensorrt_version: str
    gpu_name: str
    sm: tuple[int, int]
    provider: str = "TensorrtExecutionProvider"

    @property
    def sm_text(self) -> str:
        return f"{self.sm[0]}.{self.sm[1]}"


def pending() -> dict:
    return {"state": "pending"}


def state(engines: Mapping | None) -> str:
    return (engines or {}).get("state", "pending")


def built_graphs(engines: Mapping | None) -> set[str]:
    """Graphs whose engines are recorded (a build interrupted after some graphs keeps them)."""
    return set((engines or {}).get("graphs", {}))


def record_graph(engines: Mapping | None, platform: Platform, graph: str, files: dict[str, str],
                 complete: bool, when: str) -> dict:
    """The engines section after building `graph` (files: relative path → sha256) on `platform`.
    A record made on another platform is dropped first: its engines cannot be mixed with these."""
    base = dict(engines or {})
    if base.get("graphs") and _platform_of(base) != (platform.tensorrt_version, platform.sm_text):
        base = {}
    graphs = {**base.get("graphs", {}), graph: {"files": dict(files)}}
    return {"state": "built" if complete else "partial", "tensorrt_version": platform.tensorrt_version,
            "gpu_name": platform.gpu_name, "sm": platform.sm_text, "provider": platform.provider,
            "built_at": when, "graphs": graphs}


def _platform_of(engines: Mapping) -> tuple[str, str]:
    return str(engines.get("tensorrt_version")), str(engines.get("sm"))


def check_stamp(engines: Mapping | None, platform: Platform, folder: Path, hash_file) -> list[str]:
    """Raise EngineMismatchError when recorded engines cannot run on `platform`; → notices
    (e.g. another GPU of the same SM). `hash_file(path) → sha256`. Nothing recorded: []."""
    if engines is None or state(engines) == "pending" or not built_graphs(engines):
        return []
    fix = REBUILD.format(bundle=folder)
    have_trt, have_sm = _platform_of(engines)
    if have_trt != platform.tensorrt_version:     # TensorRT runs only engines of its own version
        raise EngineMismatchError(f"the engines of {folder} were built with TensorRT {have_trt}; this machine has "
                                  f"TensorRT {platform.tensorrt_version}.", fix)
    if have_sm != platform.sm_text:
        raise EngineMismatchError(f"the engines of {folder} were built for SM {have_sm} ({engines.get('gpu_name')}); "
                                  f"this GPU is SM {platform.sm_text} ({platform.gpu_name}).", fix)
    for graph, rec in sorted(engines["graphs"].items()):
        for rel, digest in sorted(rec.get("files", {}).items()):
            path = folder / rel
            if not path.is_file():
                raise EngineMismatchError(f"engine file {rel} of graph {graph} is missing from {folder}.", fix)
            if hash_file(path) != digest:
                raise EngineMismatchError(f"engine file {rel} of graph {graph} does not match its sha256 in the "
                                          "manifest (modified or corrupted).", fix)
    notes = []
    if engines.get("gpu_name") and engines["gpu_name"] != platform.gpu_name:
        notes.append(f"engines built on {engines['gpu_name']}, running on {platform.gpu_name} (same SM "
                     f"{platform.sm_text}); rebuild if they fail: {fix}")
    return notes

