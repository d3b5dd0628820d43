#!/usr/bin/env bash
# Every check and benchmark that needs a real NVIDIA GPU, in one go, each output kept in one folder:
# what docs/benchmarks.md §6 and its telemetry section were made from, for your own GPU box.
#
#   bash bench/gpu_session.sh [OUT_DIR]          (default: /tmp/kcuda-gpu-session-<time>)
#
# It first runs `kcuda-validate setup` (the CUDA engine for this GPU; SETUP_ARGS adds options, e.g.
# "--sdist /path/llama_cpp_python-0.3.36.tar.gz" on a machine without network, or "--wheel FILE" to install one
# built elsewhere with `setup --arch 90 --wheel-dir DIR`: seconds instead of a ~5 min build on 16 cores, and a
# 51 MB sm_90 wheel fits a 64 MiB carry). It stops at once, exit 3 or 4, where
# `detect` fails: nothing is measured on a machine that cannot offload. PYTHON overrides the interpreter
# (default: the locked environment through uv); KCUDA_TEST_MODEL names an assembled Gemma-3-270M GGUF
# where the PyPI parts are not installed. LLAMA_BENCH names a llama-bench built beforehand by
# bench/build_llama_bench.sh (CPU code, portable: one built on another Linux box can be carried); else it is built
# here from LLAMA_SDIST or the sdist in the engine cache.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    read -r -a PY <<<"$PYTHON"
else
    PY=(./run --locked python)
fi
OUT=${1:-/tmp/kcuda-gpu-session-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
failed=0

step() {
    local name=$1
    shift
    echo "== $name"
    "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "exit $rc" >>"$OUT/$name.txt"
    tail -n 3 "$OUT/$name.txt"
    [[ $rc -eq 0 ]] || failed=1
}

read -r -a SETUP <<<"${SETUP_ARGS:-}"
/usr/bin/time -v "${PY[@]}" -m kcuda_validate setup "${SETUP[@]}" >"$OUT/setup.txt" 2>&1
rc=$?
tail -n 4 "$OUT/setup.txt"
if [[ $rc -ne 0 ]]; then
    echo "setup exited $rc: no CUDA engine, so nothing was measured ($OUT/setup.txt)"
    exit "$rc"
fi

"${PY[@]}" -m kcuda_validate detect --skip-torch -v >"$OUT/detect.txt" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then
    tail -n 4 "$OUT/detect.txt"
    echo "detect exited $rc: this machine cannot offload to a GPU yet, so nothing was measured ($OUT/detect.txt)"
    exit "$rc"
fi

"${PY[@]}" -c 'import sys; sys.path.insert(0, "bench"); from _util import machine; print(machine())' >"$OUT/machine.txt"
cat "$OUT/machine.txt"
# llama_cpp is imported before pytest: a CUDA build crashed on an H100 when numpy (pulled in by some
# pytest plugins) was loaded first.
step pytest_gpu "${PY[@]}" -c 'import llama_cpp, sys, pytest; sys.exit(pytest.main(["-m", "gpu", "-v", "tests/test_gpu.py"]))'
# A GPU report in every format the fleet path reads (issue 15): JSON, JUnit, the Prometheus textfile, the ready file.
step validate_all "${PY[@]}" -m kcuda_validate validate-all --synthetic 64MiB --compare-cpu --report "$OUT/validate_all.json" \
    --junit-xml "$OUT/validate_all.junit.xml" --prometheus "$OUT/validate_all.prom" --ready-file "$OUT/ready/gpu-ready"
step ready_file ls -l "$OUT/ready/gpu-ready"
if command -v promtool >/dev/null; then
    step promtool bash -c "promtool check metrics <'$OUT/validate_all.prom'"
fi
step fleet "${PY[@]}" -m kcuda_validate fleet "$OUT/validate_all.json"
step health "${PY[@]}" -m kcuda_validate health
step bench_health "${PY[@]}" bench/bench_health.py
step bench_gpu "${PY[@]}" bench/bench_gpu.py --save "$OUT/bench_gpu.json"
step telemetry_tool "${PY[@]}" bench/bench_telemetry.py --tool
step telemetry_same_process "${PY[@]}" bench/bench_telemetry.py --gpu

# Against llama.cpp's own llama-bench on the same engine libraries (issue 14). LLAMA_BENCH names one built
# beforehand (bench/build_llama_bench.sh; CPU code only, so one built elsewhere can be carried); else it is
# built here from LLAMA_SDIST (or the sdist setup fetched).
if [[ -z "${LLAMA_BENCH:-}" ]]; then
    step build_llama_bench bash bench/build_llama_bench.sh /tmp/kcuda-llama-bench
    LLAMA_BENCH=/tmp/kcuda-llama-bench/llama-bench
fi
step llama_bench "${PY[@]}" bench/bench_llama_bench.py --llama-bench "$LLAMA_BENCH" --gpu-layers -1 \
    --save "$OUT/llama_bench.json"
step llama_bench_flash_attn "${PY[@]}" bench/bench_llama_bench.py --llama-bench "$LLAMA_BENCH" --gpu-layers -1 \
    --flash-attn on --save "$OUT/llama_bench_flash_attn.json"

echo "results: $OUT"
exit "$failed"
