"""Type check fusion-edge with mypy (config: pyproject.toml [tool.mypy]) from a plain checkout.

The repository keeps the subpackages as top-level folders (runtime/, export/, …); setup.py maps
them to fusion_edge.* for the wheel, and fusion_edge/ holds a committed symlink to each
(fusion_edge/runtime -> ../runtime, …), so a plain checkout is a package tree that mypy,
pyright/Pylance and `python -c "import fusion_edge.runtime"` from the checkout follow. Messages
name the checkout's folders (fusion_edge/runtime/x.py → runtime/x.py).

    python3 scripts/typecheck.py                  # the packages of PACKAGES
    python3 scripts/typecheck.py -p fusion_edge.export     # others (mypy's arguments)
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
LINKS = re.compile(r"\bfusion_edge/(export|runtime|quantize|calibration|apps|bench)/")


def main(argv: list[str]) -> int:
    args = argv or [a for p in PACKAGES for a in ("-p", p)]
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    sys.stdout.write(LINKS.sub(r"\1/", proc.stdout + proc.stderr))
    print(f"mypy {' '.join(args)}: exit {proc.returncode}, {time.monotonic() - start:.1f} s", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
