"""Type check fusion-edge with mypy (config: pyproject.toml [tool.mypy]) from a plain checkout.

The repository keeps the subpackages as top-level folders (runtime/, export/, …) that setup.py
maps to fusion_edge.* through package-dir. Static tools do not follow that mapping (the
editable install is an import hook), so this writes the package as symlinks,
.mypy_cache/shim/fusion_edge/{__init__.py, cli.py, …, runtime -> runtime/, export -> export/, …},
points mypy there (MYPYPATH) and maps the paths in its messages back to the checkout's.
The shim is rebuilt on every run (cheap); its stable place keeps mypy's incremental cache.

    python3 scripts/typecheck.py                  # the packages of PACKAGES
    python3 scripts/typecheck.py -p fusion_edge.export     # others (mypy's arguments)
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / ".mypy_cache" / "shim"
PACKAGES = ["fusion_edge.runtime"]          # checked by the test command (scripts/test.sh)


def roots() -> dict[str, str]:
    """setup.py's ROOTS (import name → folder), read without running setup.py."""
    for node in ast.parse((ROOT / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROOTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py defines no ROOTS")


def build_shim(mapping: dict[str, str]) -> dict[str, Path]:
    """The package tree as symlinks under SHIM → {shim path prefix: checkout folder}."""
    shutil.rmtree(SHIM, ignore_errors=True)
    prefixes = {}
    for name, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        src, dst = ROOT / folder, SHIM.joinpath(*name.split("."))
        if name.count(".") == 0:          # the top package: a real folder, its entries linked one by one
            dst.mkdir(parents=True)
            for entry in src.iterdir():
                if entry.name != "__pycache__" and not (dst / entry.name).exists():
                    (dst / entry.name).symlink_to(entry)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src, target_is_directory=True)
        prefixes[str(dst.relative_to(ROOT)) + os.sep] = Path(folder)
    return prefixes


def main(argv: list[str]) -> int:
    prefixes = build_shim(roots())
    args = argv or [a for p in PACKAGES for a in ("-p", p)]
    env = {**os.environ, "MYPYPATH": str(SHIM)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    for prefix, folder in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):   # longest first
        out = out.replace(prefix, f"{folder}{os.sep}" if str(folder) != "." else "")
        out = out.replace(str(ROOT / prefix), f"{folder}{os.sep}")
    sys.stdout.write(out)
    print(f"mypy {' '.join(args)}: exit {proc.returncode}, {time.monotonic() - start:.1f} s", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
