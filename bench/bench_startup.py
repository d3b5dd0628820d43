"""Start-up cost of the CLI against bare Python (median of 5 after a warm-up).

Run: python3 -m uv run python bench/bench_startup.py
Goal: `kcuda-validate --help` ≤ 0.15 s above `python -c pass`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _util import VENV_BIN, bench_env, machine, median_of, table, takes_no_arguments, time_cmd

EXE = str(VENV_BIN / "kcuda-validate")
PY = sys.executable


def main() -> None:
    takes_no_arguments(__doc__)
    env = bench_env()
    cases = [
        ("python -c pass", [PY, "-c", "pass"], (0,)),
        ("kcuda-validate --help", [EXE, "--help"], (0,)),
        ("kcuda-validate --version", [EXE, "--version"], (0,)),
        ("kcuda-validate exit-codes", [EXE, "exit-codes"], (0,)),
        ("detect --skip-torch", [EXE, "detect", "--skip-torch"], (0, 3, 4)),
        ("detect", [EXE, "detect"], (0, 3, 4)),
        ("python -c 'import torch'", [PY, "-c", "import torch"], (0,)),
        ("python -c 'import llama_cpp'", [PY, "-c", "import llama_cpp"], (0,)),
    ]
    base = None
    rows = []
    for name, cmd, ok in cases:
        med, values = median_of(lambda cmd=cmd, ok=ok: time_cmd(cmd, env, ok), runs=5, warmup=1)
        base = med if base is None else base
        rows.append([name, f"{med * 1000:.0f} ms", f"+{(med - base) * 1000:.0f} ms", f"{min(values) * 1000:.0f} ms"])
    print(f"Machine: {machine()}\n")
    print(table(["command", "median", "over bare python", "min"], rows))


if __name__ == "__main__":
    main()
