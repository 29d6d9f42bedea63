"""The bad-input corpus: generated at test time, one table per input class.

Each case is (name, make, expect): `make(folder)` writes the input and returns what to pass
(a path or a string); `expect` is "answers" (the runtime answers exactly as the reference)
or the typed error class name the runtime must raise (exit code 2 with `error:` / `fix:` on
the command line).
"""
from __future__ import annotations

import threading

BOUND_S = 120          # a case that takes longer has hung (the slowest valid case takes ~3 s)


def bounded(fn, seconds: float = BOUND_S):
    """fn() in a thread; its result, its exception re-raised, or a failure if it hangs."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:            # noqa: B036 - re-raised in the caller's thread
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def assert_clean_failure(rc: int, err: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert sum(ln.startswith("error:") for ln in lines) == 1, err
    assert sum(ln.lstrip().startswith("fix:") for ln in lines) == 1, err
    assert "Traceback" not in err
