#!/usr/bin/env bash
# Set up (scripts/setup.sh, browser included), lint (ruff, pyproject.toml [tool.ruff]), build
# the native runtime, run CTest and the whole test suite; a lint, build or CTest failure fails
# the run.
# A run that executes no test is a failure. pytest lists its slowest tests (--durations), the
# place to start when the suite grows slower.
#
# --quick: the inner-loop tier. The same lint, type check, native build and CTest, no
# AddressSanitizer build, and pytest -m "not slow": every test module runs, minus the tests
# marked slow (the quantized exports' quality gates, the wheel, faults, Ray, the Android soak
# and other multi-minute runs). Further arguments go to pytest.
#
# pytest runs on every core (pytest-xdist: one worker per CPU, `-n`), tests of one
# xdist_group on one worker (`--dist loadgroup`: the Ray tests, the memory soaks; see
# tests/conftest.py). FUSION_TEST_WORKERS=N, or `-n N` among the pytest arguments, sets the
# number of workers; 0 runs the tests in this process, one after another (for debugging: -s,
# --pdb, print output in order).
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
cores=$(nproc 2>/dev/null || echo 1)
[ "$cores" -gt 1 ] || cores=0                       # one core: no worker processes
workers="${FUSION_TEST_WORKERS:-$cores}"
# the pytest arguments come after these, so a `-n` there wins
xdist=(-n "$workers" --dist loadgroup)
bash scripts/setup.sh --with-browser || { echo "setup failed"; exit 1; }
python3 -m ruff check . || { echo "ruff check failed"; exit 1; }
python3 scripts/typecheck.py || { echo "type check (mypy, scripts/typecheck.py) failed"; exit 1; }
# Native runtime: build it with the Android bridge's JNI library and Java API (needs a JDK: a
# missing one fails the configure step), run CTest; pytest then runs the native parity and the
# host JNI tests on this build (FUSION_NATIVE_BUILD makes a missing build a failure, not a skip).
bash scripts/build_native.sh -DFUSION_EDGE_JNI=ON || { echo "native build failed"; exit 1; }
ctest --test-dir build --output-on-failure
ctest_rc=$?
if [ $quick -eq 1 ]; then
  FUSION_NATIVE_BUILD="$PWD/build" python3 -m pytest -q -p no:cacheprovider "${xdist[@]}" --durations=15 -m "not slow" "$@"
  rc=$?
else
  # The C ABI checks also run on an AddressSanitizer build (library + the check program only).
  BUILD_DIR=build-asan bash scripts/build_native.sh -DFUSION_ASAN=ON --target c_abi_bad_inputs \
    || { echo "native AddressSanitizer build failed"; exit 1; }
  FUSION_NATIVE_BUILD="$PWD/build" FUSION_NATIVE_ASAN_BUILD="$PWD/build-asan" python3 -m pytest -q -p no:cacheprovider "${xdist[@]}" --durations=30 "$@"
  rc=$?
fi
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
if [ $ctest_rc -ne 0 ]; then echo "ctest failed"; exit 1; fi
exit $rc
