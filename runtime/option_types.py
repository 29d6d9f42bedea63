"""The checks of numeric and path options, one implementation for every command, the Python
API and the apps' settings: a whole number or a finite number in its range, a port,
a thread count, an existing file or folder, a file or folder to write — else OptionError naming
the option, the value and the fix, before any work. Nothing is reinterpreted: a 0 stays a 0
(refused where it means nothing), NaN and infinities are refused where a number is measured.

The `*_arg` factories are argparse `type=` functions made of the same checks; the command
line (fusion_edge/cli.py `OptionParser`) prints their OptionError as `error:` / `fix:`, exit 2.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .errors import ConfigError, OptionError

PORT_MAX = 65535
MAX_THREADS = 1024            # threads of one onnxruntime / llama.cpp session; more is a typo, not a machine
SHARD_NAME_MAX = 99999        # model-0000x-of-0000y.safetensors: five digits
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)     # MatMulNBits / DequantizeLinear int4 blocks along K


def _num(x) -> str:
    return str(x) if isinstance(x, (int, np.integer)) else f"{x:g}"


def _span(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return (f"from {_num(low)} to {_num(high)}" if not low_open
                else f"above {_num(low)} and at most {_num(high)}")
    if low is not None:
        if low == 0 and low_open:
            return "positive"
        return f"{'above' if low_open else 'at least'} {_num(low)}"
    return f"at most {_num(high)}" if high is not None else ""


def _float_fix(low, high, low_open: bool) -> str:
    span = _span(low, high, low_open)
    return "pass a positive finite number" if span == "positive" else f"pass a finite number {span}".rstrip()


# ---- values ------------------------------------------------------------------------------------
def check_int(value, name: str, low: int | None = None, high: int | None = None, fix: str | None = None) -> int:
    """`value` is a whole number (not a bool, not a float) in [low, high] → int, else OptionError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionError(f"{name} must be a whole number, got {value!r}.",
                          fix or f"pass a whole number {_span(low, high)}".rstrip())
    if (low is not None and value < low) or (high is not None and value > high):
        raise OptionError(f"{name} {value} is out of range: it must be {_span(low, high)}.",
                          fix or f"pass a whole number {_span(low, high)}".rstrip())
    return int(value)


def check_float(value, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                fix: str | None = None) -> float:
    """`value` is a finite real number in [low, high] ((low, high] with low_open) → float, else
    OptionError: NaN and ±inf are refused, never compared."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionError(f"{name} must be a number, got {value!r}.",
                          fix or _float_fix(low, high, low_open))
    try:
        v = float(value)
    except OverflowError:                     # an int beyond float's range
        v = math.inf
    if not math.isfinite(v):
        raise OptionError(f"{name} {value} is not a finite number.",
                          fix or _float_fix(low, high, low_open))
    below = low is not None and (v <= low if low_open else v < low)
    if below or (high is not None and v > high):
        raise OptionError(f"{name} {_num(value)} is out of range: it must be {_span(low, high, low_open)}.",
                          fix or _float_fix(low, high, low_open))
    return v


def check_port(value, name: str = "--port") -> int:
    return check_int(value, name, 0, PORT_MAX, f"pick a port from 1 to {PORT_MAX}, or 0 for any free port")


def check_threads(value, name: str = "threads") -> int | None:
    """None (the runtime's default: every core) or 1..MAX_THREADS."""
    if value is None:
        return None
    return check_int(value, name, 1, MAX_THREADS,
                     f"pass 1 to {MAX_THREADS} threads, or leave {name} out for the default (every core)")


def check_query_lens(text: str, name: str = "--query-len", high: int | None = None) -> str:
    """A comma list of latent counts to train a checkpoint with: whole numbers from 1 to `high`
    (the tower's image tokens), each a perfect square (runtime/config.py `parse_query_lens`) →
    the text, unchanged."""
    from .config import parse_query_lens
    fix = "pass a comma list of perfect squares, e.g. 4,16,36,64,144"
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    if not parts:
        raise OptionError(f"{name} {text!r} names no latent count.", fix)
    for p in parts:
        try:
            q = int(p)
        except ValueError:
            raise OptionError(f"{name} entry {p!r} is not a whole number.", fix) from None
        check_int(q, name, 1, high, fix if high is None else f"{fix} (at most {high}: the tower's image tokens)")
    try:
        parse_query_lens(text)
    except ConfigError as e:
        raise OptionError(f"{name}: {e.problem}", fix) from None
    return text


def check_regex(pattern: str, name: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise OptionError(f"{name} {pattern!r} is not a regular expression ({e}).",
                          "escape special characters, e.g. 'lm_head' or 'layers\\.0\\.'") from None
    return pattern


# ---- paths -------------------------------------------------------------------------------------
def _blocking_ancestor(p: Path) -> Path | None:
    """The nearest existing ancestor of p when it is not a folder (nothing can be created under it)."""
    for parent in p.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path, option: str, suffix: str | None = None) -> Path:
    """A file to write: a new or existing regular file (ending in `suffix`, any case) in an
    existing folder. Checked before any work, so a bad path loses nothing."""
    p = Path(path)
    if suffix is not None and p.suffix.lower() != suffix:
        raise OptionError(f"{option} {path} does not end in {suffix}.", f"name a {suffix} file, e.g. out{suffix}")
    if p.exists() and not p.is_file():
        raise OptionError(f"{option} {path} exists and is not a regular file.", "name a file, not a folder")
    if not p.parent.is_dir():
        raise OptionError(f"{option} {path}: the folder {p.parent} does not exist.", f"create it: mkdir -p {p.parent}")
    return p


def check_output_dir(path, option: str) -> Path:
    """A folder to create or write into: not an existing file, and not under one (missing parent
    folders are created, like mkdir -p)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OptionError(f"{option} {path} exists and is not a folder.", "name a folder to create, not a file")
    blocked = _blocking_ancestor(p)
    if blocked is not None:
        raise OptionError(f"{option} {path}: {blocked} is a file, so no folder can be created under it.",
                          "name a folder under an existing folder")
    return p


def check_existing_dir(path, option: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        what = "is not a folder" if p.exists() else "does not exist"
        raise OptionError(f"{option} {path} {what}.", "name an existing folder")
    return p


def check_existing_file(path, option: str) -> Path:
    p = Path(path)
    if not p.is_file():
        what = ("is a folder, not a file" if p.is_dir() else
                "is not a regular file" if p.exists() else "does not exist")
        raise OptionError(f"{option} {path} {what}.", "name an existing file")
    return p


def check_existing_path(path, option: str) -> Path:
    p = Path(path)
    if not (p.is_file() or p.is_dir()):
        what = "is neither a file nor a folder" if p.exists() else "does not exist"
        raise OptionError(f"{option} {path} {what}.", "name an existing file or folder")
    return p


# ---- argparse `type=` functions ------------------------------------------------------------------
class _Type:
    """An argparse type: the command-line text → the checked value; OptionError otherwise."""

    def __init__(self, option: str, convert, check):
        self.option, self.convert, self.check = option, convert, check
        self.__name__ = option               # argparse names a type in some messages

    def __call__(self, text: str):
        return self.check(self.convert(self.option, text))

    def __repr__(self) -> str:
        return f"<type of {self.option}>"


def _whole(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"{option} {text!r} is not a whole number.", f"pass a whole number to {option}") from None


def _real(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"{option} {text!r} is not a number.", f"pass a number to {option}") from None


def _text(option: str, text: str) -> str:
    return text


def int_arg(option: str, low: int | None = None, high: int | None = None, fix: str | None = None,
            choices: tuple[int, ...] | None = None) -> _Type:
    def check(v: int) -> int:
        if choices is not None and v not in choices:
            raise OptionError(f"{option} {v} is not one of {', '.join(map(str, choices))}.",
                              fix or f"pass one of {', '.join(map(str, choices))}")
        return check_int(v, option, low, high, fix)
    return _Type(option, _whole, check)


def float_arg(option: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
              fix: str | None = None) -> _Type:
    return _Type(option, _real, lambda v: check_float(v, option, low, high, low_open=low_open, fix=fix))


def port_arg(option: str = "--port") -> _Type:
    return _Type(option, _whole, lambda v: check_port(v, option))


def threads_arg(option: str = "--threads") -> _Type:
    return _Type(option, _whole, lambda v: check_threads(v, option))


def query_lens_arg(option: str = "--query-len", high: int | None = None) -> _Type:
    return _Type(option, _text, lambda v: check_query_lens(v, option, high))


def regex_arg(option: str) -> _Type:
    return _Type(option, _text, lambda v: check_regex(v, option))


def output_file_arg(option: str, suffix: str | None = None) -> _Type:
    return _Type(option, _text, lambda v: str(check_output_file(v, option, suffix)))


def output_dir_arg(option: str) -> _Type:
    return _Type(option, _text, lambda v: str(check_output_dir(v, option)))


def existing_dir_arg(option: str) -> _Type:
    return _Type(option, _text, lambda v: str(check_existing_dir(v, option)))


def existing_file_arg(option: str) -> _Type:
    return _Type(option, _text, lambda v: str(check_existing_file(v, option)))


def existing_path_arg(option: str) -> _Type:
    return _Type(option, _text, lambda v: str(check_existing_path(v, option)))
