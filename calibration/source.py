"""The fp32 pipeline that calibration and the quality gate run: an fp32 ONNX bundle given
as such, or one exported from a checkpoint into a temporary folder (removed afterwards)."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from fusion_edge.runtime.bundle import MANIFEST, Bundle

from .dataset import CalibrationDataError


def is_bundle(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@contextmanager
def fp32_bundle(model: str, query_len: int | None = None, image_tokens: int | None = None,
                progress: bool = True, log=print):
    """Yield the path of an fp32 ONNX bundle of `model` (a checkpoint or an fp32 bundle)."""
    if is_bundle(model):
        bundle = Bundle.open(model)
        if bundle.target != "onnx" or bundle.precision != "fp32":
            raise CalibrationDataError(
                f"{model} is a {bundle.target}/{bundle.precision} bundle; calibration runs the fp32 ONNX pipeline.",
                "pass the checkpoint, or an fp32 bundle (fusion-export MODEL --target onnx --precision fp32 -o B)")
        for key, want in (("query_len", query_len), ("image_tokens", image_tokens)):
            if want is not None and int(bundle.options[key]) != int(want):
                raise CalibrationDataError(f"the fp32 bundle {model} was exported with {key} "
                                           f"{bundle.options[key]}, {want} was asked for.",
                                           "pass the checkpoint instead, or drop the option")
        yield Path(model)
        return
    from fusion_edge.export.bundle_export import export_bundle
    with tempfile.TemporaryDirectory(prefix="fusion-edge-fp32-") as tmp:
        log(f"exporting a temporary fp32 ONNX bundle of {model} …")
        out = export_bundle(model, Path(tmp) / "fp32", "onnx", "fp32", query_len, image_tokens,
                            verify=False, progress=progress, log=log)
        yield out


def source_info(bundle_path) -> dict:
    """What a recording or a quantized bundle records about the model it came from."""
    b = Bundle.open(bundle_path, check_hashes=False)
    return {"model": b.manifest["source"].get("model"), "fingerprint": b.manifest["source"]["fingerprint"]}
