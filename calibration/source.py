"""The fp32 pipeline that calibration and the quality gate run: an fp32 ONNX bundle. A
checkpoint is exported to one first by the caller (fusion_edge/targets.py `fp32_source`):
calibration depends on the runtime only."""
from __future__ import annotations

from pathlib import Path

from fusion_edge.runtime.bundle import MANIFEST, Bundle

from .dataset import CalibrationDataError


def is_bundle(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def check_fp32_bundle(path, query_len: int | None = None, image_tokens: int | None = None) -> Path:
    """`path` if it is an fp32 ONNX bundle exported with these options, else a CalibrationDataError."""
    bundle = Bundle.open(path)
    if bundle.target != "onnx" or bundle.precision != "fp32":
        raise CalibrationDataError(
            f"{path} is a {bundle.target}/{bundle.precision} bundle; calibration runs the fp32 ONNX pipeline.",
            "pass the checkpoint, or an fp32 bundle (fusion-export MODEL --target onnx --precision fp32 -o B)")
    for key, want in (("query_len", query_len), ("image_tokens", image_tokens)):
        if want is not None and int(bundle.options[key]) != int(want):
            raise CalibrationDataError(f"the fp32 bundle {path} was exported with {key} "
                                       f"{bundle.options[key]}, {want} was asked for.",
                                       "pass the checkpoint instead, or drop the option")
    return Path(path)


def source_info(bundle_path) -> dict:
    """What a recording or a quantized bundle records about the model it came from."""
    b = Bundle.open(bundle_path, check_hashes=False)
    return {"model": b.manifest["source"].get("model"), "fingerprint": b.manifest["source"]["fingerprint"]}
