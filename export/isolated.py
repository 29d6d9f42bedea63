"""Run one step in a child process, so that a native crash there cannot take the caller down.

llama.cpp runs FUSION's alignment inside its own eval callback; on CUDA builds a verification
has died with SIGSEGV (F16/Q4_K_M exports, the H200 check of 2026-11-29, docs/gpu.md), which no
Python code can catch in-process. `run_isolated`
runs a picklable function in a fresh interpreter (`python -c`, not multiprocessing: fork is
unsafe once CUDA, OpenMP or onnxruntime threads exist, and spawn would re-import the caller's
`__main__`, re-running a user's unguarded export script) and hands back what it returned. The
request goes in on the child's stdin (the caller's sys.path, then the function and its
arguments); messages come back on a pipe of their own, so the child's stdout and stderr stay
the caller's. Inside the child:
* the records of its `fusion_edge` loggers travel back and are logged again here, on the
  loggers of the same names (the caller's logging configuration shows them or not);
* a FusionEdgeError comes back as the same type with its problem and fix;
* any other exception comes back as the child's traceback inside an IsolatedStepError;
* a death by a signal becomes an IsolatedStepError naming the signal and the Python frames
  that were running (faulthandler, written to a file the caller reads).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from fusion_edge.runtime import errors
from fusion_edge.runtime.errors import ExportError, FusionEdgeError

CRASH_FRAMES = 6        # innermost Python frames of a crash quoted in the error
PACKAGE = "fusion_edge"    # the loggers whose records travel back
CHILD = "from fusion_edge.export.isolated import child_main; child_main({fd}, {trace!r})"


class IsolatedStepError(ExportError):
    """A step run in a child process crashed or raised an untyped exception."""


def run_isolated(fn, *args, what: str = "this step", fix: str = "", **kwargs):
    """fn(*args, **kwargs) in a child process → its (picklable) result."""
    if os.name == "nt":     # no pass_fds on Windows: in-process there (a native crash ends the process, as before)
        return fn(*args, **kwargs)
    request = pickle.dumps((list(sys.path), pickle.dumps((fn, args, kwargs))))
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryDirectory(prefix="fusion-isolated-") as tmp:
        trace = str(Path(tmp) / "faulthandler.txt")
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(fd=write_fd, trace=trace)],
                                 stdin=subprocess.PIPE, pass_fds=(write_fd,))
        os.close(write_fd)                      # the child holds the only writer: EOF when it ends
        stdin = child.stdin
        assert stdin is not None                # stdin=PIPE
        with Connection(read_fd, writable=False) as conn:
            try:
                stdin.write(request)
                stdin.close()
            except BrokenPipeError:             # it died before reading: its exit code says how
                pass
            reply = _relay(conn)
        child.wait()
        frames = Path(trace).read_text(errors="replace") if Path(trace).exists() else ""
    if reply is None:
        raise IsolatedStepError(f"{what} crashed: {_death(child.returncode)}{_where(frames)}.", fix or None)
    kind, *payload = reply
    if kind == "ok":
        return payload[0]
    if kind == "typed":
        name, problem, err_fix = payload
        cls = getattr(errors, name, None)
        cls = cls if isinstance(cls, type) and issubclass(cls, FusionEdgeError) else FusionEdgeError
        err = cls.__new__(cls)
        FusionEdgeError.__init__(err, problem, err_fix)
        raise err
    raise IsolatedStepError(f"{what} failed with an unexpected error: {payload[0]}", fix or None)


def _relay(recv):
    """Log the child's records again here until its final message (None: it died before sending one)."""
    while True:
        try:
            msg = recv.recv()
        except EOFError:
            return None
        if msg[0] == "log":
            _, name, level, text = msg
            logging.getLogger(name).log(level, text)
        else:
            return msg


def child_main(fd: int, trace: str) -> None:
    """The child's side: read the request from stdin, run it, send the outcome on `fd`."""
    send = Connection(fd, readable=False)
    relay = _PipeHandler(send)
    package = logging.getLogger(PACKAGE)
    package.addHandler(relay)
    package.setLevel(logging.DEBUG)     # every record goes back: the caller's loggers decide what shows
    package.propagate = False           # ... and nothing of it is printed here
    result: tuple[object, ...]          # ("ok", value) | ("typed", name, problem, fix) | ("untyped", text)
    with open(trace, "w") as fh:
        faulthandler.enable(file=fh, all_threads=False)
        try:
            path, payload = pickle.loads(sys.stdin.buffer.read())
            sys.path[:] = path
            fn, args, kwargs = pickle.loads(payload)
            result = ("ok", fn(*args, **kwargs))
        except FusionEdgeError as e:
            result = ("typed", type(e).__name__, e.problem, e.fix)
        except BaseException as e:  # noqa: BLE001 — everything else goes back as text
            result = ("untyped", "".join(traceback.format_exception_only(type(e), e)).strip()
                      + "\n" + "".join(traceback.format_tb(e.__traceback__)[-CRASH_FRAMES:]))
        relay.acquire()                 # not in the middle of a record another thread is sending
        try:
            package.removeHandler(relay)
            send.send(result)
            send.close()
        finally:
            relay.release()


class _PipeHandler(logging.Handler):
    """The child's side of the log records: (name, level, message) on the result pipe."""

    def __init__(self, send: Connection):
        super().__init__(logging.DEBUG)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:           # noqa: BLE001 — logging's rule: a failing handler reports, never raises
            self.handleError(record)


def _death(exitcode: int | None) -> str:
    """How the child ended: a signal (negative return code) or an exit without a result."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"the process died with {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"the process died with signal {-exitcode}"
    return f"the process ended with exit code {exitcode} without a result"


def _where(frames: str) -> str:
    """' in f (file:line) ← g (file:line) …' from faulthandler's dump (innermost first)."""
    lines = [ln.strip() for ln in frames.splitlines() if ln.strip().startswith("File ")
             and __file__ not in ln and '"<string>"' not in ln]     # not the isolation's own frames
    if not lines:
        return ""
    spots = []
    for ln in lines[:CRASH_FRAMES]:             # 'File "/x/y.py", line 12 in name'
        path, _, rest = ln[len('File "'):].partition('", line ')
        num, _, name = rest.partition(" in ")
        spots.append(f"{name} ({Path(path).name}:{num})")
    return ", in " + " ← ".join(spots)
