"""fusion_edge.calibration: calibration data sets and recordings of every graph's inputs.

`load_calibration_set(path)` (folder, JSONL or built in) → `calibrate(model, out, data)`
runs the fp32 pipeline and writes a recording folder → `Recordings.open(dir)` and
`GraphFeeds` feed the quantizers (fusion_edge.quantize).
"""
from .dataset import CalibItem, CalibrationDataError, CalibrationSet, Skipped, builtin_set, load_calibration_set
from .record import Recordings, record_calibration

__all__ = ["CalibItem", "CalibrationDataError", "CalibrationSet", "Skipped", "builtin_set",
           "load_calibration_set", "Recordings", "record_calibration", "calibrate"]


def calibrate(*args, **kwargs):
    """See calibration.calibrate.calibrate."""
    from .calibrate import calibrate as _calibrate
    return _calibrate(*args, **kwargs)
