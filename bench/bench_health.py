"""`kcuda-validate health` against node-problem-detector's 5 s default timeout (median of 5 after a warm-up).

Run: python3 -m uv run python bench/bench_health.py
Goal: the whole process (start-up included) answers well within 5 s; the default subset and the two
expensive parts of it shown apart: NVML + libcuda (`--check driver.nvml --check gpu --check cuda.driver_api`)
and the engine build probe (`--check llama.build`, a child process that loads libllama).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _util import VENV_BIN, bench_env, machine, median_of, table, takes_no_arguments, time_cmd

EXE = str(VENV_BIN / "kcuda-validate")
PROBLEM_OR_OK = (0, 1)  # no GPU on a CI machine: 1 (a problem), which must come just as fast


def main() -> None:
    takes_no_arguments(__doc__)
    env = bench_env()
    cases = [
        ("health (the node-health subset)", [EXE, "health"]),
        ("health --json", [EXE, "health", "--json"]),
        (
            "health: NVML + libcuda only",
            [EXE, "health", "--check", "driver.nvml", "--check", "gpu", "--check", "cuda.driver_api"],
        ),
        ("health: engine build probe only", [EXE, "health", "--check", "llama.build"]),
        ("kcuda-validate --help (start-up)", [EXE, "--help"]),
    ]
    rows = []
    for name, cmd in cases:
        med, values = median_of(lambda cmd=cmd: time_cmd(cmd, env, PROBLEM_OR_OK), runs=5, warmup=1)
        rows.append([name, f"{med * 1000:.0f} ms", f"{max(values) * 1000:.0f} ms", f"{5 / med:.0f}x"])
    print(f"Machine: {machine()}\n")
    print(table(["command", "median", "max", "within NPD's 5 s"], rows))


if __name__ == "__main__":
    main()
