#!/usr/bin/env bash
# Set up (scripts/setup.sh, browser included), lint (ruff, pyproject.toml [tool.ruff]) and run
# the whole test suite; a lint failure fails the run.
# A run that executes no test is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser || { echo "setup failed"; exit 1; }
python3 -m ruff check . || { echo "ruff check failed"; exit 1; }
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
