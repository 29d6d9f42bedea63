"""fusion-edge's progress and notice lines, through the standard `logging` module.

Every module logs on `logging.getLogger(__name__)`: progress lines at INFO, lines that start
with "notice:" or "warning:" at WARNING, with those prefixes (users and tests read the texts).
As a library fusion-edge prints nothing: the `fusion_edge` logger has a NullHandler
(fusion_edge/__init__.py) and the application configures logging as it likes. The command line
(fusion_edge/cli.py `main`) and the bench scripts print the lines with `printed()`.

`printed()` shows each record's bare message the moment it is emitted, on sys.stdout — or
sys.stderr for the loggers under `to_stderr` — as they are at that moment (pytest's capsys swaps
them). The streams are the ones the lines had before they moved to logging: the lines of export,
quantization, calibration and bench go to stdout; the runtime's (TensorRT engines built while a
bundle opens) go to stderr, where a command's stdout is its answer (`ask --json`,
`verify --json`, `build-engines`), except in `export` and `calibrate`, whose output is progress
throughout. Every command shows the INFO lines: `--quiet` hides the progress bars only, as before.

Only the library's loggers (LIBRARY) are printed: the apps keep their own loggers
(fusion_edge.camera, fusion_edge.serve, …) and configure them themselves (logging.basicConfig
in their `run`). While `printed()` holds, the library's records do not propagate to the root
logger, so an app's root handler does not show them a second time.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PACKAGE = "fusion_edge"
# the library's loggers: fusion_edge.<name> and every module logger below it
LIBRARY = ("runtime", "export", "quantize", "calibration", "bench", "targets", "workspace")
RUNTIME = f"{PACKAGE}.runtime"


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether logger `name` is one of `prefixes` or below one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class LinePrinter(logging.Handler):
    """Prints each record's bare message, flushed, to the sys.stdout (sys.stderr for loggers
    under `to_stderr`) of the moment it is emitted."""

    def __init__(self, to_stderr: tuple[str, ...] = (), level: int = logging.INFO):
        super().__init__(level)
        self.to_stderr = to_stderr
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if under(record.name, self.to_stderr) else sys.stdout
            print(self.format(record), file=stream, flush=True)
        except Exception:           # noqa: BLE001 — logging's rule: a failing handler reports, never raises
            self.handleError(record)


def library_loggers() -> list[logging.Logger]:
    return [logging.getLogger(f"{PACKAGE}.{name}") for name in LIBRARY]


@contextmanager
def printed(to_stderr: tuple[str, ...] = (RUNTIME,), level: int = logging.INFO) -> Iterator[None]:
    """Print the library's log lines at `level` and above while the block runs (LinePrinter);
    then the loggers are as they were. Nested, the outer one keeps printing."""
    loggers = library_loggers()
    if any(isinstance(h, LinePrinter) for h in loggers[0].handlers):
        yield
        return
    handler = LinePrinter(to_stderr, level)
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (old_level, old_propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(old_level)
            lg.propagate = old_propagate
