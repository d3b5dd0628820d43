#!/usr/bin/env bash
# Build llama.cpp's own llama-bench from the locked llama-cpp-python sdist (the very llama.cpp the tool's engine
# vendors), CPU code only: bench/bench_llama_bench.py runs it on the tool's installed engine libraries
# (libllama, libggml*, CUDA included) through LD_LIBRARY_PATH, so no CUDA compile is needed for a GPU comparison.
#
#   [LLAMA_SDIST=FILE] bash bench/build_llama_bench.sh [OUT_DIR]
#
# LLAMA_SDIST: the llama_cpp_python-<version>.tar.gz to build from (default: fetched, sha256-checked against
# uv.lock, into the engine cache, as `setup` does). OUT_DIR (default ~/.cache/kcuda-validate/llama-bench-<version>) gets
# llama-bench and its two helper libraries. Measured: 3 min wall, 0.7 GB peak on the 2-core VM (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then read -r -a PY <<<"$PYTHON"; else PY=(./run --locked python); fi
SDIST=${LLAMA_SDIST:-$("${PY[@]}" -c 'from kcuda_validate.engine import install as i; print(i.fetch_sdist(i.cache_dir(), i.locked_llama(), None))')}
VERSION=$(basename "$SDIST" .tar.gz | sed 's/^llama_cpp_python-//')
OUT=${1:-$HOME/.cache/kcuda-validate/llama-bench-$VERSION}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar xzf "$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON >"$WORK/cmake.log" || { tail -20 "$WORK/cmake.log"; exit 1; }
cmake --build "$WORK/build" --target llama-bench -j "$(nproc)"
mkdir -p "$OUT"
cp -a "$WORK/build/bin/llama-bench" "$WORK/build/bin"/libllama-bench-impl.so "$WORK/build/bin"/libllama-common.so* "$OUT/"
echo "$OUT/llama-bench"
