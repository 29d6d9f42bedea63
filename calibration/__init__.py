"""fusion_edge.calibration: calibration data sets and recordings of every graph's inputs.

`load_calibration_set(path)` (folder, JSONL or built in) → `calibrate.calibrate_bundle(fp32_bundle,
out, data)` runs the fp32 pipeline and writes a recording folder → `Recordings.open(dir)` and
`reader.GraphFeeds` feed the quantizers (fusion_edge.quantize). See docs/quantization.md.
"""
from .dataset import CalibItem, CalibrationDataError, CalibrationSet, Skipped, builtin_set, load_calibration_set
from .record import Recordings, record_calibration

__all__ = ["CalibItem", "CalibrationDataError", "CalibrationSet", "Skipped", "builtin_set",
           "load_calibration_set", "Recordings", "record_calibration"]
