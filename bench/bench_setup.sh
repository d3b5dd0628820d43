#!/usr/bin/env bash
# docs/benchmarks.md §7: one real CUDA engine build, timed by GNU time (wall, CPU, largest process), and the
# wheel it cached. Usage: bash bench/bench_setup.sh [ARCH] [TOOLKIT]   e.g. 90 system | 89 pypi
# Takes 20+ minutes on 2 cores; run it alone. Builds and caches only (add nothing else to the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-90}"
toolkit="${2:-auto}"
err="$(mktemp)"
/usr/bin/time -v ./run kcuda-validate setup --force --arch "$arch" --toolkit "$toolkit" 2> >(tee "$err" >&2)
grep -E "Elapsed|User time|System time|Maximum resident" "$err"
cache="${KCUDA_CACHE_DIR:+$KCUDA_CACHE_DIR/engine}"
cache="${cache:-${XDG_CACHE_HOME:-$HOME/.cache}/kcuda-validate/engine}"
ls -l "$cache"/wheels/*-sm"$arch"/*.whl
