#!/usr/bin/env bash
# Build the native runtime (docs/native.md) into build/: libfusion_edge.so, fusion_edge_cli and
# the CTest checks, against the llama.cpp/ggml of the installed llama-cpp-python (its shared
# libraries, and the headers of its source distribution of the same version).
# Extra arguments go to cmake's configure step (--target T builds only T); BUILD_DIR picks the
# folder, e.g. an AddressSanitizer build: BUILD_DIR=build-asan scripts/build_native.sh -DFUSION_ASAN=ON
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
bash scripts/fetch_llama_headers.sh
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$BUILD_DIR/CMakeCache.txt" ] && gen=()      # keep the generator of an existing build
# arguments up to --target go to the configure step; --target T limits the build to T
conf=() target=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--target" ]; then target=(--target "$2"); shift 2; else conf+=("$1"); shift; fi
done
cmake -S . -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${conf[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" "${target[@]}"
