#!/usr/bin/env bash
# Install fusion-edge and everything its demo and tests need, on a fresh machine.
# Idempotent. PyTorch first, by exact version: on these machines `torch==2.13.0` is the
# local CPU build; any other spelling pulls gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || pip_install torch==2.13.0
# Extras: export (onnx, hub), gguf (llama-cpp-python: a ~6 min source build the first
# time), camera and bench for the app and the harness, ros2 for the ROS 2 node (rclpy and
# message wheels), serve and ray for the OpenAI-compatible server and its Ray Serve scale-out,
# dev for the tests (pytest-xdist: scripts/test.sh runs pytest on every core).
# constraints.txt: the exact versions the suite passed with (see pyproject's dependency policy).
# llama-cpp-python is built from source with this CPU's features but without Intel AMX
# (scripts/llama_cmake_args.sh says why).
export CMAKE_ARGS="${CMAKE_ARGS:-$(bash scripts/llama_cmake_args.sh)}"
pip_install -c constraints.txt -e ".[export,gguf,camera,bench,dev,ros2,serve,ray]"
# A llama-cpp-python built earlier with AMX (pip's wheel cache, an older setup) is rebuilt.
if "$PY" -c "import sys, llama_cpp; sys.exit(0 if b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info() else 1)" \
    2>/dev/null; then
  echo "rebuilding llama-cpp-python without AMX (a ~6 min source build)"
  pip_install -c constraints.txt --force-reinstall --no-deps --no-cache-dir llama-cpp-python
fi
# Native runtime (docs/native.md): a C++ toolchain, cmake, nlohmann-json and stb from Debian,
# and the llama.cpp headers of the installed llama-cpp-python (its PyPI source distribution).
native_pkgs=(g++ cmake ninja-build nlohmann-json3-dev libstb-dev)
missing=()
for p in "${native_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# The Android bridge's host build and tests (docs/android.md): a JDK (javac, java, jni.h).
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/fetch_llama_headers.sh
if [ "${1:-}" = "--with-browser" ] && [ -f scripts/install_browser.sh ]; then
  bash scripts/install_browser.sh
fi
