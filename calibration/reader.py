"""Feed recordings to onnxruntime's static quantizer (`CalibrationDataReader`).

One reader per graph file: the vision graph is calibrated on both of its modes (the
text-guided main tile and the 4 global tiles), every other graph on its own recordings.
Files are read one call at a time, so memory stays at one sample whatever the set size.
"""
from __future__ import annotations

from onnxruntime.quantization import CalibrationDataReader

from .dataset import CalibrationDataError
from .record import Recordings

# graph file (component) name → the recorded call names that feed it
SOURCES = {"vision": ("vision_main", "vision_global")}


def sources_for(component: str) -> tuple[str, ...]:
    return SOURCES.get(component, (component,))


class GraphFeeds(CalibrationDataReader):
    """The recorded inputs of one component, restricted to `input_names` (the graph's)."""

    def __init__(self, recordings: Recordings, component: str, input_names: list[str] | None = None):
        self.recordings = recordings
        self.component = component
        self.input_names = input_names
        self.sources = sources_for(component)
        if not len(self):
            raise CalibrationDataError(f"the recording {recordings.path} has no inputs for {component}.",
                                       "record the calibration again with this bundle's graphs")
        self.rewind()

    def __len__(self) -> int:
        return sum(self.recordings.count(s) for s in self.sources)

    def rewind(self) -> None:
        self._it = (feeds for s in self.sources for feeds in self.recordings.samples(s))

    def get_next(self) -> dict | None:
        feeds = next(self._it, None)
        if feeds is None or self.input_names is None:
            return feeds
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CalibrationDataError(f"recorded inputs of {self.component} lack {', '.join(missing)}.",
                                       "record the calibration again with this bundle")
        return {n: feeds[n] for n in self.input_names}
