"""Package list, derived: every folder holding an `__init__.py` under the mapped roots.

The repository keeps fusion-edge's subpackages as top-level folders (export/, runtime/, …),
mapped to `fusion_edge.*` here; a hand-kept list once missed `fusion_edge.runtime.trt` and
broke every non-editable install. Everything else is declared in pyproject.toml.
fusion_edge/ also holds a symlink to each folder (fusion_edge/runtime -> ../runtime, …) so that
static tools and a plain checkout see the package tree; the wheel is built from the mapping
below, not through those links (rglob does not follow them).
"""
from pathlib import Path

from setuptools import setup

# import name → folder of the repository
ROOTS = {
    "fusion_edge": "fusion_edge",
    "fusion_edge.export": "export",
    "fusion_edge.runtime": "runtime",
    "fusion_edge.quantize": "quantize",
    "fusion_edge.calibration": "calibration",
    "fusion_edge.apps": "apps",
    "fusion_edge.bench": "bench",
}


def packages(here: Path) -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            found.append(".".join([name, *init.parent.relative_to(here / folder).parts]))
    return sorted(set(found))


if __name__ == "__main__":          # setuptools' build backend runs this file as __main__
    setup(package_dir=ROOTS, packages=packages(Path(__file__).resolve().parent))
