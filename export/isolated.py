"""Run one step in a child process, so that a native crash there cannot take the caller down.

llama.cpp runs FUSION's alignment inside its own eval callback; on CUDA builds a verification
has died with SIGSEGV (issue 11), which no Python code can catch in-process. `run_isolated`
runs a picklable function in a *spawned* child (fork is unsafe once CUDA, OpenMP or
onnxruntime threads exist) and hands back what it returned. Inside the child:
* `log` lines travel back and go to the caller's `log`;
* a FusionEdgeError comes back as the same type with its problem and fix;
* any other exception comes back as the child's traceback inside an IsolatedStepError;
* a death by a signal becomes an IsolatedStepError naming the signal and the Python frames
  that were running (faulthandler, written to a file the caller reads).
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import signal
import tempfile
import traceback
from pathlib import Path

from fusion_edge.runtime import errors
from fusion_edge.runtime.errors import ExportError, FusionEdgeError

CRASH_FRAMES = 6        # innermost Python frames of a crash quoted in the error


class IsolatedStepError(ExportError):
    """A step run in a child process crashed or raised an untyped exception."""


def run_isolated(fn, *args, log=print, what: str = "this step", fix: str = "", **kwargs):
    """fn(*args, log=<child log>, **kwargs) in a spawned child → its (picklable) result."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="fusion-isolated-") as tmp:
        trace = Path(tmp) / "faulthandler.txt"
        child = ctx.Process(target=_child, args=(send, str(trace), fn, args, kwargs), daemon=True)
        child.start()
        send.close()                            # the child holds the only writer: EOF when it dies
        reply = _relay(recv, log)
        child.join()
        frames = trace.read_text(errors="replace") if trace.exists() else ""
    if reply is None:
        raise IsolatedStepError(f"{what} crashed: {_death(child.exitcode)}{_where(frames)}.", fix or None)
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


def _relay(recv, log):
    """Pass the child's log lines on until its final message (None: it died before sending one)."""
    while True:
        try:
            msg = recv.recv()
        except EOFError:
            return None
        if msg[0] == "log":
            log(msg[1])
        else:
            return msg


def _child(send, trace: str, fn, args, kwargs) -> None:
    with open(trace, "w") as fh:
        faulthandler.enable(file=fh, all_threads=False)
        try:
            result = ("ok", fn(*args, log=lambda m: send.send(("log", str(m))), **kwargs))
        except FusionEdgeError as e:
            result = ("typed", type(e).__name__, e.problem, e.fix)
        except BaseException as e:  # noqa: BLE001 — everything else goes back as text
            result = ("untyped", "".join(traceback.format_exception_only(type(e), e)).strip()
                      + "\n" + "".join(traceback.format_tb(e.__traceback__)[-CRASH_FRAMES:]))
        send.send(result)
        send.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"the process died with {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"the process died with signal {-exitcode}"
    return f"the process ended with exit code {exitcode} without a result"


def _where(frames: str) -> str:
    """' in f (file:line) ← g (file:line) …' from faulthandler's dump (innermost first)."""
    lines = [ln.strip() for ln in frames.splitlines() if ln.strip().startswith("File ")
             and __file__ not in ln and "multiprocessing" not in ln]     # not the isolation's own frames
    if not lines:
        return ""
    spots = []
    for ln in lines[:CRASH_FRAMES]:             # 'File "/x/y.py", line 12 in name'
        path, _, rest = ln[len('File "'):].partition('", line ')
        num, _, name = rest.partition(" in ")
        spots.append(f"{name} ({Path(path).name}:{num})")
    return ", in " + " ← ".join(spots)
