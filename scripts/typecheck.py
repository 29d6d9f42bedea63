"""Type check fusion-edge with mypy (config: pyproject.toml [tool.mypy]) from a plain checkout.

The repository keeps the subpackages as top-level folders (runtime/, export/, …); setup.py maps
them to fusion_edge.* for the wheel, and fusion_edge/ holds a committed symlink to each
(fusion_edge/runtime -> ../runtime, …), so a plain checkout is a package tree that mypy,
pyright/Pylance and `python -c "import fusion_edge.runtime"` from the checkout follow. Messages
name the checkout's folders (fusion_edge/runtime/x.py → runtime/x.py).

    python3 scripts/typecheck.py                  # the packages of PACKAGES and fusion_edge/*.py
    python3 scripts/typecheck.py -p fusion_edge.export     # others (mypy's arguments)

The default run gives mypy folders and files, not -p: -p leaves out a file whose name is no
module name (apps/ros2/launch/fusion_edge.launch.py), a folder takes every .py file under it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# checked by the test command (scripts/test.sh); a package is listed once it is clean
PACKAGES = ["fusion_edge.runtime", "fusion_edge.export", "fusion_edge.quantize", "fusion_edge.calibration",
            "fusion_edge.apps", "fusion_edge.bench"]
# and every module directly under fusion_edge/ (cli.py, targets.py, …: real files, not links),
# a new one included as it is added
MODULES_DIR = ROOT / "fusion_edge"
LINKS = re.compile(r"\bfusion_edge/(export|runtime|quantize|calibration|apps|bench)/")


def default_targets() -> list[str]:
    """PACKAGES as their folders under fusion_edge/ and the fusion_edge/*.py files, relative to ROOT."""
    return [*(p.replace(".", "/") for p in PACKAGES),
            *sorted(str(f.relative_to(ROOT)) for f in MODULES_DIR.glob("*.py"))]


def main(argv: list[str]) -> int:
    args = argv or default_targets()
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    sys.stdout.write(LINKS.sub(r"\1/", proc.stdout + proc.stderr))
    print(f"mypy {' '.join(args)}: exit {proc.returncode}, {time.monotonic() - start:.1f} s", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
