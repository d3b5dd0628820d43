"""`kcuda-validate fleet DIR` on 5,000 reports: the whole process (subprocess), and the pure part in-process.

Run: python3 -m uv run python bench/bench_fleet.py [N [REPORT]]
(REPORT: a real `--json` report to copy instead of running `validate-all --device cpu` once here.)
The reports are synthetic, and labelled so: one real CPU `validate-all --json` report (the tiny synthetic
model) is copied N times into a temporary directory, each copy with a host name `synthetic-node-NNNN`, its
gen tok/s scaled by a fixed pattern (every 97th node 40 % slower, so there are outliers to find), and every
20th node written twice (an older copy one hour earlier, so there are reports to supersede). They stay CPU
runs (`device_mode: cpu`): nothing here pretends to be a GPU. Median of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _util import bench_env, machine, median_of, table, time_cmd, tool_cmd


def real_report(where: Path, env: dict[str, str]) -> dict[str, object]:
    out = where / "real.json"
    cmd = [*tool_cmd(), "validate-all", "--device", "cpu", "--synthetic", "4MiB", "--max-tokens", "8", "--repeat", "2"]
    subprocess.run([*cmd, "--report", str(out)], env=env, capture_output=True, check=True)
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def generate(real: dict[str, object], directory: Path, n: int) -> int:
    """N synthetic nodes' reports from the real one; returns the number of files written."""
    text = json.dumps(real)
    files = 0
    for i in range(n):
        doc = json.loads(text)
        node = f"synthetic-node-{i:04d}"
        doc["host"]["hostname"] = node
        gen = doc["metrics"]["gen_tps"]
        gen["value"] = gen["value"] * (0.6 if i % 97 == 0 else 1.0 + (i % 7) / 100)
        (directory / f"{node}.json").write_text(json.dumps(doc))
        files += 1
        if i % 20 == 0:
            older = datetime.fromisoformat(doc["finished_at"]) - timedelta(hours=1)
            doc["finished_at"] = older.isoformat(timespec="milliseconds")
            (directory / f"{node}-older.json").write_text(json.dumps(doc))
            files += 1
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=5000, help="synthetic node reports to write (default 5000)")
    ap.add_argument("report", nargs="?", type=Path, help="a real --json report to copy instead of making one")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("n must be at least 1")
    n, given = args.n, args.report
    env = bench_env(KCUDA_CACHE_DIR=str(Path(tempfile.gettempdir()) / "kcuda-bench-cache"))
    with tempfile.TemporaryDirectory(prefix="kcuda-bench-fleet-") as tmp:
        where = Path(tmp)
        reports = where / "reports"
        reports.mkdir()
        real = json.loads(given.read_text()) if given is not None else real_report(where, env)
        files = generate(real, reports, n)
        size = sum(p.stat().st_size for p in reports.iterdir())

        from kcuda_validate.fleet import find_report_files, load_fleet, load_report, summarize

        summary = load_fleet([reports])
        rows = [r for f in find_report_files([reports]) for r in load_report(f)[0]]

        def pure_load() -> float:
            start = time.perf_counter()
            load_fleet([reports])
            return time.perf_counter() - start

        def pure_judge() -> float:
            start = time.perf_counter()
            summarize(rows)
            return time.perf_counter() - start

        cases = [
            ("fleet DIR (whole process, table)", lambda: time_cmd([*tool_cmd(), "fleet", str(reports)], env, (0, 1))),
            ("fleet DIR --json (whole process)", lambda: time_cmd([*tool_cmd(), "fleet", str(reports), "--json"], env)),
            ("in-process: read + parse + judge (load_fleet)", pure_load),
            ("in-process: judge only (summarize on rows)", pure_judge),
        ]
        out = []
        for name, fn in cases:
            med, values = median_of(fn, runs=3, warmup=1)
            out.append([name, f"{med * 1000:.0f} ms", f"{max(values) * 1000:.0f} ms"])
    print(f"Machine: {machine()}\n")
    print(
        f"{files} synthetic report files ({size / 1024**2:.0f} MiB) for {n} nodes: {len(summary.rows)} rows,"
        f" {summary.superseded} superseded, {len(summary.outliers)} outliers, exit {summary.exit_code}\n"
    )
    print(table(["what", "median", "max"], out))


if __name__ == "__main__":
    main()
