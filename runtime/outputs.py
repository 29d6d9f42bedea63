"""Output folders of long work (exports, quantization, calibration recordings, engine builds):
checked before the work starts, and the faults met while writing them turned into typed errors.

* `check_output(out, what, need=...)`: the folder `out` is to be made in can be written (a probe
  folder is made there and removed, so a read-only mount, a missing permission or a file in the
  way is refused by name, before anything long runs; `chmod` does not stop root, a read-only
  mount does), and, given `need` (a lower bound of the bytes the work will write there), that
  its disk has that much free.
* `output_faults(folder, what, ...)`: around the work; an OSError ENOSPC / EDQUOT anywhere in an
  exception's chain, or a library's error that says "No space left on device", becomes a
  DiskFullError naming the disk, its free space, what the work needs and what was kept;
  EROFS becomes a ReadOnlyOutputError.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError, FusionEdgeError, OutputError, ReadOnlyOutputError

try:
    import fcntl
    LOCKS = True
except ImportError:         # Windows: no flock; a writer's liveness is then its pid alone
    LOCKS = False

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", f"[Errno {errno.ENOSPC}]")
TMP_LOW = 256 << 20         # a temporary folder with less free is named in a DiskFullError too


def size_text(n: float) -> str:
    """Bytes for people: 850 KB, 12.3 MB, 4.21 GB."""
    n = max(0.0, float(n))
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    return f"{n / 1024:.0f} KB"


def existing_ancestor(path: str | os.PathLike) -> Path:
    """`path` itself, or the nearest folder above it that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the file system of `path` (or of its nearest existing parent)."""
    return shutil.disk_usage(existing_ancestor(path)).free


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(os.fspath(path)):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def check_output(out: str | os.PathLike, what: str, need: int | None = None,
                 elsewhere: str = "choose another -o folder") -> Path:
    """Refuse, before any long work, an output `out` that cannot be written: the folder it is
    made in is a file, read-only or not permitted (ReadOnlyOutputError / OutputError), or its
    disk has less than `need` bytes free (DiskFullError). → the absolute path. `elsewhere`: the
    fix's way out, a phrase that " on a writable disk" / " on a bigger disk" completes."""
    out = Path(os.path.abspath(out))
    base = existing_ancestor(out.parent)
    if not base.is_dir():
        raise OutputError(f"the {what} {out} cannot be made: {base} is a file, not a folder.",
                          f"{elsewhere}, or move {base} out of the way")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=base)
    except OSError as e:
        raise write_error(e, base, what, out, elsewhere, at=base) from None
    os.rmdir(probe)
    if need:
        free = free_bytes(base)
        if free < need:
            raise DiskFullError(f"the disk of {base} has {size_text(free)} free; the {what} {out} needs at "
                                f"least {size_text(need)}.",
                                f"free {size_text(need - free)} or more there, or {elsewhere} on a disk with "
                                f"{size_text(need)} free")
    return out


def write_error(e: OSError, folder: Path, what: str, out: Path | None = None,
                elsewhere: str = "choose another -o folder", at: Path | None = None) -> OutputError:
    """The typed error for an OSError met while making or writing `out` in `folder`; it names
    `at`, else the file of the error, else `folder`."""
    target = f"the {what} {out}" if out is not None else f"the {what}"
    where = at or (Path(e.filename) if e.filename else folder)
    if e.errno in DISK_FULL:
        return disk_full(folder, what, out, elsewhere=elsewhere)
    if e.errno == errno.EROFS:
        return ReadOnlyOutputError(f"{where} is on a read-only file system: {target} cannot be written there.",
                                   f"{elsewhere} on a writable disk (or remount that one read-write)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ReadOnlyOutputError(f"no permission to write in {where}: {target} cannot be made there.",
                                   f"{elsewhere} that you can write to, or change the permissions of {where}")
    return OutputError(f"{target} cannot be written in {folder}: {e.strerror or e}.", elsewhere)


def disk_full(folder: Path, what: str, out: Path | None = None, need: int | None = None, kept: str = "",
              elsewhere: str = "choose another -o folder", more: int | None = None) -> DiskFullError:
    """DiskFullError for `out` on the disk of `folder`, measured now (after any cleanup): its free
    space, what the work needs (`need`: a lower bound from before the run; `more`: an estimate of
    what it still needs beside what was kept) and what was kept."""
    target = f"the {what} {out}" if out is not None else f"the {what}"
    base = existing_ancestor(folder)
    usage = shutil.disk_usage(base)
    if more:
        needs = f"it needs about {size_text(more)} more, {size_text(usage.free)} is free"
    elif not need or need <= usage.free:
        needs = f"it needs more than the {size_text(usage.free)} free there"
    else:
        needs = f"it needs at least {size_text(need)}, {size_text(usage.free)} is free"
    tmp = existing_ancestor(tempfile.gettempdir())
    if os.stat(tmp).st_dev != os.stat(base).st_dev and free_bytes(tmp) < TMP_LOW:   # it may be the full one
        needs += f" (the temporary folder {tmp} has only {size_text(free_bytes(tmp))} free)"
    err = DiskFullError(f"the disk filled up while writing {target} (file system of {base}, "
                        f"{size_text(usage.total)}): {needs}.{' ' + kept if kept else ''}",
                        f"free space there and run the same command again, or {elsewhere} on a bigger disk")
    err.kept = kept
    return err


def _os_error(e: BaseException) -> OSError | None:
    """The first OSError in `e`'s chain (itself, its cause or context)."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT in `e`'s chain, or a library's error (onnxruntime, torch, a child process)
    whose text says so."""
    if isinstance(e, DiskFullError):
        return True
    os_err = _os_error(e)
    if os_err is not None and os_err.errno in DISK_FULL:
        return True
    return any(t in str(e) for t in NO_SPACE_TEXT)


@contextmanager
def output_faults(folder: str | os.PathLike, what: str, out: str | os.PathLike | None = None,
                  need: int | None = None, kept: Callable[[], str] | None = None,
                  elsewhere: str = "choose another -o folder") -> Iterator[None]:
    """Run the work; a full disk → DiskFullError (naming `kept()`, what stays for the next run),
    a file system that turned read-only → ReadOnlyOutputError. Other errors pass unchanged."""
    folder, out = Path(os.path.abspath(folder)), (Path(os.path.abspath(out)) if out is not None else None)
    try:
        yield
    except DiskFullError as e:       # from a step below (a manifest update): said again with what is kept
        if kept is None or e.kept:
            raise
        raise disk_full(folder, what, out, need, kept(), elsewhere) from None
    except OutputError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(folder, what, out, need, kept() if kept else "", elsewhere) from None
        os_err = _os_error(e)
        if isinstance(e, FusionEdgeError) or os_err is None or os_err.errno != errno.EROFS:
            raise
        raise write_error(os_err, folder, what, out, elsewhere) from None


# ---- a live writer holds an flock on the folder it writes (released when it dies, even by SIGKILL)
def hold_folder(folder: str | os.PathLike) -> int | None:
    """An exclusive flock on `folder`, held while the returned descriptor is open (close it to
    release); None when another process holds it, or flock is not available here (LOCKS False).
    On a file system without flock (some network mounts) the descriptor comes back unlocked."""
    if not LOCKS:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass
    return fd


def folder_held(folder: str | os.PathLike) -> bool:
    """Whether a live process holds `folder`'s flock."""
    if not LOCKS:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
