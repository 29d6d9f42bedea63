"""Typed exceptions for every user-facing failure.

Each message names the problem and the fix. The runtime imports nothing of ours, so
these live here and the export side re-uses them.
"""
from __future__ import annotations


class FusionEdgeError(Exception):
    """Base class: `str(err)` is the problem followed by the fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


# --- configuration and checkpoints -------------------------------------------------
class ConfigError(FusionEdgeError):
    """config.json is missing a field, has a bad value, or names an unknown architecture."""


class UnsupportedArchitectureError(ConfigError):
    """model_type / tower / projector type that fusion-edge does not implement."""


class CheckpointError(FusionEdgeError):
    """A checkpoint folder or file is unusable."""


class MissingWeightError(CheckpointError):
    """A tensor the architecture needs is not in the checkpoint."""


class WeightShapeError(CheckpointError):
    """A tensor has a different shape than the config implies."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file is truncated or unreadable, or the shard index is inconsistent."""


class HubUnavailableError(CheckpointError):
    """A hub id was given but the hub cannot be reached and nothing is cached."""


# --- inputs -----------------------------------------------------------------------
class ImageError(FusionEdgeError):
    """An image cannot be opened or decoded."""


class PromptError(FusionEdgeError):
    """A question is empty, too long, or otherwise unusable."""


# --- bundles and backends ---------------------------------------------------------
class BundleError(FusionEdgeError):
    """A bundle folder is missing, incomplete, tampered with, or from another version."""


class BundleFileError(BundleError):
    """A file listed in the manifest is missing or its sha256 differs."""


class BundlePathError(BundleError):
    """A bundle names a file outside its folder (absolute, `..`, a symlink that leaves it)."""


class BundleVersionError(BundleError):
    """The bundle's format version is not one this runtime reads."""


class UnverifiedBundleError(BundleError):
    """--strict: the bundle's verification was skipped, forced or failed."""


class BundleMismatchError(BundleError):
    """The bundle was built from a different checkpoint than the one given."""


class OutputError(FusionEdgeError):
    """An output folder cannot be written: a file in the way, no permission, a read-only disk, a full disk."""


class ReadOnlyOutputError(OutputError):
    """The output folder (or the folder it is made in) is on a read-only file system or not writable."""


class DiskFullError(OutputError):
    """The disk of an output folder filled up (ENOSPC / EDQUOT), or has less free space than the work needs.
    `kept`: what stays on disk for the next run ("" when nothing)."""

    kept: str = ""


class MissingExtraError(FusionEdgeError):
    """An optional dependency (extra) is not installed; extra None: a core dependency is missing."""

    def __init__(self, package: str, extra: str | None, purpose: str):
        fix = (f"pip install 'fusion-edge[{extra}]'  (or: pip install {package})" if extra else
               f"pip install {package}  (a core dependency of fusion-edge: a plain `pip install fusion-edge` "
               "installs it)")
        super().__init__(f"{purpose} needs the Python package '{package}', which is not installed.", fix)
        self.package = package
        self.extra = extra


# import name → the extra of pyproject.toml that installs it (tests/test_cli.py checks the table
# against pyproject), so a failed import names what to install
EXTRA_OF_MODULE = {
    "torch": "export", "onnx": "export", "onnxscript": "export", "huggingface_hub": "export",
    "sentencepiece": "export", "gguf": "gguf", "llama_cpp": "gguf", "fastapi": "camera", "uvicorn": "camera",
    "websockets": "camera", "cv2": "camera", "rclpy": "ros2", "psutil": "bench", "matplotlib": "bench",
    "prometheus_client": "serve", "ray": "ray",
}


def missing_module_error(e: ModuleNotFoundError, purpose: str, extra: str | None = None) -> FusionEdgeError:
    """The typed error for a failed import: the extra that installs the missing package (from
    EXTRA_OF_MODULE, else `extra`), or a reinstall when a module of fusion-edge itself is missing."""
    name = e.name or "?"
    if name == "fusion_edge" or name.startswith("fusion_edge."):
        return IncompleteInstallError(name, purpose)
    top = name.split(".")[0]
    return MissingExtraError(top, EXTRA_OF_MODULE.get(top, extra), purpose)


class IncompleteInstallError(FusionEdgeError):
    """A module of fusion-edge itself is missing from this installation."""

    def __init__(self, module: str, purpose: str):
        super().__init__(f"{purpose} needs the module {module}, which this installation of fusion-edge lacks.",
                         "reinstall fusion-edge: pip install --force-reinstall fusion-edge")
        self.module = module


class OptionError(FusionEdgeError):
    """A generation option is out of range (temperature, top_p, top_k, token counts)."""


class BackendError(FusionEdgeError):
    """A backend failed while running a graph or could not be set up."""


class DeviceError(FusionEdgeError):
    """The requested device is not available (no GPU, wrong arch, wrong TensorRT)."""


class ExportError(FusionEdgeError):
    """An export step failed or its verification was below the gate."""


class SourceError(FusionEdgeError):
    """A camera / video / image-folder source cannot be opened or stopped delivering."""


class TensorRTError(DeviceError):
    """TensorRT was asked for but is not installed, or a bundle's engines cannot run here."""


class EngineMismatchError(TensorRTError):
    """A bundle's TensorRT engines were built for another TensorRT version or GPU, or were modified."""


class EnginesPendingError(TensorRTError):
    """The bundle's engines are not built yet and building was refused (--no-build)."""
