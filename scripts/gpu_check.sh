#!/usr/bin/env bash
# GPU check: what a Jetson / laptop user runs after installing onnxruntime-gpu and/or a CUDA
# build of llama-cpp-python. Runs tests/gpu (each test skips with its reason where a GPU
# package is missing), then a short bench of a tiny bench-preset model on --device auto,
# and prints one table: every check with PASS / FAIL / SKIP and its detail.
#
#   scripts/gpu_check.sh [OUT_DIR]      (default: a temporary folder; python: $PYTHON or python3)
# Exit status: 0 when nothing failed. Skips alone are not failures: read their reasons.
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${1:-$(mktemp -d -t fusion-gpu-check-XXXX)}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

echo "== environment" | tee "$OUT/log.txt"
"$PY" - <<'PYEOF' 2>&1 | tee -a "$OUT/log.txt"
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import llama_cpp
    print("llama-cpp-python", llama_cpp.__version__, "gpu offload:", bool(llama_cpp.llama_supports_gpu_offload()))
except ImportError:
    print("llama-cpp-python: not installed")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$OUT/log.txt"

echo "== tests/gpu" | tee -a "$OUT/log.txt"
"$PY" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" -s \
    2>&1 | tee -a "$OUT/log.txt"

echo "== short bench (bench preset, --device auto)" | tee -a "$OUT/log.txt"
BENCH_JSON=""
BENCH_FAILED=0
PROBES=()
if "$PY" -m fusion_edge.cli make-tiny "$OUT/ckpt" --preset bench >>"$OUT/log.txt" 2>&1 \
   && "$PY" -m fusion_edge.cli export "$OUT/ckpt" --target onnx -o "$OUT/onnx-fp32" --quiet --overwrite \
        --verify-steps 4 >>"$OUT/log.txt" 2>&1; then
    BUNDLES=("$OUT/onnx-fp32")
    if "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null \
       && "$PY" -m fusion_edge.cli export "$OUT/ckpt" --target gguf -o "$OUT/gguf-fp32" --quiet --overwrite \
            --verify-steps 4 >>"$OUT/log.txt" 2>&1; then
        BUNDLES+=("$OUT/gguf-fp32")
        echo "== llama.cpp probe" | tee -a "$OUT/log.txt"
        "$PY" -m fusion_edge.cli export "$OUT/ckpt" --target gguf --precision int4 -o "$OUT/gguf-q4_k_m" --quiet \
            --overwrite --no-verify >>"$OUT/log.txt" 2>&1
        for b in gguf-fp32 gguf-q4_k_m; do
            [ -d "$OUT/$b" ] && "$PY" -m fusion_edge.bench.llama_probe "$OUT/$b" --json "$OUT/probe-$b.json" \
                2>>"$OUT/log.txt" | tee -a "$OUT/log.txt"
            [ -f "$OUT/probe-$b.json" ] && PROBES+=("$OUT/probe-$b.json")
        done
    fi
    "$PY" -m fusion_edge.cli bench --model "$OUT/ckpt" --bundles "${BUNDLES[@]}" --device auto --cases 1 \
        --questions-per-image 2 --max-new-tokens 16 --repeats 1 --warmup 1 --bandwidth-mib 64 \
        --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/log.txt"
    [ -f "$OUT/bench.json" ] && BENCH_JSON="--bench $OUT/bench.json"
else
    echo "FAILED: the bench-preset checkpoint or its export failed (see $OUT/log.txt)" | tee -a "$OUT/log.txt"
    BENCH_FAILED=1
fi

echo "== GPU check ($OUT)"
# shellcheck disable=SC2086
"$PY" -m fusion_edge.bench.gpu_check --junit "$OUT/gpu_tests.xml" $BENCH_JSON ${PROBES[@]+--probe "${PROBES[@]}"} \
    | tee "$OUT/table.txt"
rc=$?
exit $(( rc || BENCH_FAILED ))
