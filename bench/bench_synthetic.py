"""How fast the synthetic model generator writes a model: median MB/s over repeated 1 GiB writes.

Each write is the real thing (pool generation, header, streamed tensors, fsync, atomic rename), into a
fresh temporary directory that is deleted afterwards. Run from the repo root:

    .venv/bin/python bench/bench_synthetic.py [--size 1GiB] [--runs 5] [--types Q8_0 F16] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kcuda_validate.model.synthetic import write_synthetic
from kcuda_validate.model.synthetic_spec import SYNTHETIC_TYPES, parse_size, plan


def bench(size: int, qtype: str, runs: int, base: Path | None) -> tuple[int, list[float]]:
    """One warm-up, then `runs` timed writes; returns the file size and the MB/s of each timed write."""
    spec = plan(size, qtype)
    rates = []
    with tempfile.TemporaryDirectory(prefix="kcuda-bench-", dir=base) as tmp:
        path = Path(tmp) / spec.file_name
        for i in range(runs + 1):
            start = time.perf_counter()
            write_synthetic(spec, path)
            elapsed = time.perf_counter() - start
            path.unlink()
            if i:  # the first write warms imports, the vocabulary cache and the page cache
                rates.append(spec.file_size / elapsed / 1e6)
    return spec.file_size, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--types", nargs="+", default=["Q8_0", "F16"], choices=SYNTHETIC_TYPES)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the system temp dir)")
    args = parser.parse_args()
    size = parse_size(args.size)
    print(f"synthetic model write speed: {args.size}, {args.runs} runs after 1 warm-up, MB = 10^6 bytes")
    print(f"{'type':6} {'file bytes':>12} {'median MB/s':>12} {'min MB/s':>9} {'max MB/s':>9}")
    for qtype in args.types:
        nbytes, rates = bench(size, qtype, args.runs, args.dir)
        med, lo, hi = statistics.median(rates), min(rates), max(rates)
        print(f"{qtype:6} {nbytes:12d} {med:12.0f} {lo:9.0f} {hi:9.0f}")


if __name__ == "__main__":
    main()
