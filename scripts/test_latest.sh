#!/usr/bin/env bash
# The drift check: run the whole test suite against the NEWEST releases of every dependency
# (pyproject's upper bounds lifted, constraints.txt ignored) in a fresh virtual environment,
# and print which versions differ from constraints.txt. Run it on a schedule (e.g. weekly,
# and before each release): a failure here is what a user installing today would hit.
#
#   bash scripts/test_latest.sh [pytest args]       # venv in .venv-latest (git-ignored)
#
# When it passes: `.venv-latest/bin/python scripts/freeze_constraints.py` moves the pins,
# and raise the matching upper bounds in pyproject.toml.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-latest}
python3 -m venv "$VENV" || exit 1
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade pip
pip_install torch==2.13.0 || exit 1          # the local CPU build (any other spelling downloads gigabytes)
# every requirement of the package and the tested extras, without its upper bound
reqs=$("$PY" - <<'PY'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = ["export", "gguf", "camera", "bench", "dev", "ros2"]
reqs = p["dependencies"] + [r for e in extras for r in p["optional-dependencies"][e]]
names = {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0] for r in reqs}
print(" ".join(sorted(n for n in names if n != "torch")))
PY
) || exit 1
pip_install --upgrade --upgrade-strategy eager $reqs || exit 1
pip_install --no-deps -e . || exit 1
echo "versions that differ from constraints.txt:"
"$PY" - <<'PY'
from importlib import metadata
pins = dict(line.strip().split("==") for line in open("constraints.txt") if "==" in line)
rows = [(n, v, metadata.version(n)) for n, v in sorted(pins.items()) if metadata.version(n).split("+")[0] != v]
print("\n".join(f"  {n}: {old} → {new}" for n, old, new in rows) or "  none")
PY
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
