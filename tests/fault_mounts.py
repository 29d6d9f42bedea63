"""Small file systems for the fault tests (tests/test_faults.py): a tmpfs of a given size — a
disk that fills up — or a read-only one, mounted at a folder of the test.

As root a plain `mount -t tmpfs` does it (chmod does not stop root; a read-only mount does).
Elsewhere (a CI runner that is not root) the mount is made in a user + mount namespace
(`unshare -rm`) held open by a sleeping process; commands then run inside it (`nsenter`), and
so do the checks, since the mount is not visible outside. Where neither works the test is
skipped with the reason. Every command a test runs against the mount goes through `run`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# a listing of a folder (recursive, relative paths) and whether a bundle opens, run where the mount is
INSPECT = textwrap.dedent('''
    import json, os, sys
    root, bundle = sys.argv[1], sys.argv[2]
    entries = sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)
    engines = None
    try:
        from fusion_edge.runtime.bundle import Bundle
        engines = sorted((Bundle.open(bundle).manifest.get("engines") or {}).get("graphs", {}))
        opens = None
    except Exception as e:
        opens = type(e).__name__ + ": " + str(e)
    print(json.dumps({"entries": entries, "open_error": opens, "engines": engines}))
''')


class Tmpfs:
    """A tmpfs of `size_mb` MB (read-only with ro=True) at `where`; `run(argv)` runs a command
    that sees it, `inspect(bundle)` lists it and tries to open a bundle there, `resize(mb)`
    makes it bigger (a user who freed space), `close()` unmounts it."""

    def __init__(self, where: Path, size_mb: float, ro: bool = False):
        self.where = Path(where)
        self.where.mkdir(parents=True, exist_ok=True)
        self.holder: subprocess.Popen | None = None
        opts = f"size={int(size_mb * 1024)}k" + (",ro" if ro else "")
        why = self._mount(opts)
        if why:
            pytest.skip(f"no tmpfs can be mounted here for the disk-fault tests: {why}")

    def _mount(self, opts: str) -> str | None:
        """Mount by the first way that works → None, or why neither did."""
        if not os.environ.get("FUSION_TEST_FORCE_UNSHARE"):
            plain = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.where)],
                                   capture_output=True, text=True)
            if plain.returncode == 0:
                return None
            first = f"mount: {plain.stderr.strip() or plain.returncode}"
        else:
            first = "plain mount not tried (FUSION_TEST_FORCE_UNSHARE)"
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            return f"{first}; unshare/nsenter are not installed"
        script = f"mount -t tmpfs -o {opts} tmpfs '{self.where}' && echo ready && exec sleep 86400"
        self.holder = subprocess.Popen(["unshare", "-rm", "--propagation", "private", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read().strip() if self.holder.poll() is not None else ""
            self._stop_holder()
            return f"{first}; unshare -rm: {err or 'the namespace did not start'}"
        return None

    def prefix(self) -> list[str]:
        """What runs a command inside the namespace (nothing as root)."""
        if self.holder is None:
            return []
        return ["nsenter", "--preserve-credentials", "-U", "-m", "-t", str(self.holder.pid), "--"]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.prefix() + [str(a) for a in argv], **kw)

    def run(self, argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix() + [str(a) for a in argv], capture_output=True, text=True,
                              timeout=timeout, **kw)

    def inspect(self, bundle: Path) -> dict:
        """{"entries": every path under the mount, "open_error": None or the error of Bundle.open(bundle),
        "engines": the graphs its manifest records engines of}."""
        r = self.run([sys.executable, "-c", INSPECT, self.where, bundle], timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def resize(self, size_mb: float, ro: bool = False) -> None:
        opts = f"remount,size={int(size_mb * 1024)}k" + (",ro" if ro else ",rw")
        r = self.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", self.where], timeout=60)   # this form works
        # in a user namespace too, where `mount -o remount DIR` is refused
        assert r.returncode == 0, r.stderr

    def close(self) -> None:
        if self.holder is not None:
            self._stop_holder()
        else:
            for _ in range(20):           # a process that just ended may still hold it for a moment
                if subprocess.run(["umount", str(self.where)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)

    def _stop_holder(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
        self.holder = None

    def __enter__(self) -> "Tmpfs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
