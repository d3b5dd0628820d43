"""Pipeline overhead: what validate-all spends beyond its model load and inference (CPU, cached model).

Run: python3 -m uv run python bench/bench_pipeline.py [--model PATH]
Goal: ≤ 0.5 s beyond load + inference. Median of 5 runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _util import VENV_BIN, bench_env, machine, real_model, table


def one(model: Path) -> dict[str, float]:
    cmd = [str(VENV_BIN / "kcuda-validate"), "validate-all", "--json", "--device", "cpu", "--model-path", str(model)]
    cmd += ["--max-tokens", "16", "--repeat", "1", "--raw"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=bench_env())
    outside = time.perf_counter() - start
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 0, proc.stderr
    inf = doc["sections"]["inference"]
    gen_time = sum(r["total_s"] for r in inf["runs"]) + (inf["warmup"]["total_s"] if inf["warmup"] else 0)
    load = doc["metrics"]["load_time"]["value"]
    return {
        "outside": outside,
        "inside": doc["duration_s"],
        "load": load,
        "inference": gen_time,
        "overhead_outside": outside - load - gen_time,
        "overhead_inside": doc["duration_s"] - load - gen_time,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    model = args.model or real_model()
    one(model)
    runs = [one(model) for _ in range(5)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"Machine: {machine()}")
    print(f"Model: {model.name} (cached), validate-all --device cpu, 16 tokens, 1 run + warm-up\n")
    rows = [[k, f"{v:.3f} s"] for k, v in med.items()]
    print(table(["median of 5", "value"], rows))
    print(f"\noverhead beyond load+inference: {med['overhead_outside']:.3f} s wall (goal ≤ 0.5 s)")


if __name__ == "__main__":
    main()
