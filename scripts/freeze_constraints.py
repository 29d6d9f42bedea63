"""Write constraints.txt: the exact versions of fusion-edge's dependencies (its extras
included, transitively) as installed in this environment, i.e. the versions the test suite
just passed with. Run after `scripts/test_latest.sh` has passed, to move CI and the README
commands to newer releases.

    python3 scripts/freeze_constraints.py [--extras export,gguf,...] [-o constraints.txt]
"""
from __future__ import annotations

import argparse
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

DEFAULT_EXTRAS = "export,gguf,camera,bench,dev,ros2"


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """{canonical name: installed version} of `root`'s requirements with `extras`, recursively."""
    seen: dict[str, str] = {}
    todo = [(root, frozenset(extras))]
    while todo:
        name, ex = todo.pop()
        dist = metadata.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (ex or {""})):
                continue
            key = canonical(req.name)
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue                       # an optional dependency this platform skips
            if key not in seen:
                seen[key] = version
                todo.append((req.name, frozenset(req.extras)))
    return seen


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extras", default=DEFAULT_EXTRAS)
    ap.add_argument("-o", "--out", default=str(Path(__file__).resolve().parent.parent / "constraints.txt"))
    args = ap.parse_args()
    pins = closure("fusion-edge", set(args.extras.split(",")))
    lines = [f"{name}=={version.split('+')[0]}" for name, version in sorted(pins.items())]
    head = ("# Versions the test suite passed with (scripts/freeze_constraints.py). Used by scripts/setup.sh;\n"
            "# scripts/test_latest.sh runs the suite against the newest releases instead.\n")
    Path(args.out).write_text(head + "\n".join(lines) + "\n")
    print(f"{len(lines)} pins written to {args.out}")


if __name__ == "__main__":
    main()
