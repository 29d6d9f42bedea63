#!/usr/bin/env bash
# Prints the CMAKE_ARGS for building llama-cpp-python (ggml) on this machine: the CPU's
# SIMD features listed explicitly instead of -march=native, and never Intel AMX. ggml's AMX
# kernels (used for Q8_0/Q4 matmuls) die with SIGILL where the kernel or sandbox does not
# grant the AMX tile state (measured: F32 GGUF answers, Q8_0/Q4_K_M crash the process on a
# Sapphire Rapids VM). FUSION_EDGE_LLAMA_CMAKE_ARGS overrides everything (e.g. -DGGML_CUDA=on).
set -euo pipefail
if [ -n "${FUSION_EDGE_LLAMA_CMAKE_ARGS:-}" ]; then echo "$FUSION_EDGE_LLAMA_CMAKE_ARGS"; exit 0; fi
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if [ "$(uname -m)" = "x86_64" ]; then
  has avx && args+=" -DGGML_AVX=ON"
  has avx2 && args+=" -DGGML_AVX2=ON"
  has fma && args+=" -DGGML_FMA=ON"
  has f16c && args+=" -DGGML_F16C=ON"
  has bmi2 && args+=" -DGGML_BMI2=ON"
  has avx_vnni && args+=" -DGGML_AVX_VNNI=ON"
  if has avx512f && has avx512bw && has avx512dq && has avx512vl; then
    args+=" -DGGML_AVX512=ON"
    has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
    has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
    has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
  fi
else
  args="-DGGML_NATIVE=ON"                  # ARM (Jetson, Android builds): native is safe there
fi
echo "$args"
