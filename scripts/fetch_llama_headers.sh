#!/usr/bin/env bash
# The llama.cpp/ggml headers of llama-cpp-python VERSION (its PyPI source distribution), unpacked
# into .native-deps/llama-cpp-python-VERSION/vendor/llama.cpp/{include,ggml/include}.
# The native runtime links the installed llama-cpp-python's libraries against these headers.
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)')}"
dst=".native-deps/llama-cpp-python-$ver"
[ -f "$dst/vendor/llama.cpp/include/llama.h" ] && exit 0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$tmp"
tarball="$(ls "$tmp"/llama_cpp_python-*.tar.gz)"
mkdir -p "$dst"
tar xzf "$tarball" -C "$tmp" --wildcards '*/vendor/llama.cpp/include/*' '*/vendor/llama.cpp/ggml/include/*'
cp -r "$tmp"/llama_cpp_python-*/vendor "$dst/"
echo "llama.cpp headers of llama-cpp-python $ver in $dst"
