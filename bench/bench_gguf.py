"""GGUF inspection speed: our header reader vs the gguf package's reader (median of 5 after a warm-up).

Run: python3 -m uv run python bench/bench_gguf.py
Goal: ≤ 50 ms for the 253 MB real model and for a 1 GiB synthetic model.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _util import machine, median_of, real_model, table, takes_no_arguments

from kcuda_validate.model.gguf_file import read_gguf


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    takes_no_arguments(__doc__)
    from kcuda_validate.model.synthetic import ensure_synthetic
    from kcuda_validate.model.synthetic_spec import parse_size

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [("Gemma-3-270M Q4_K_M (real)", real_model())]
        files.append(("synthetic 1GiB Q8_0", ensure_synthetic(parse_size("1GiB"), "Q8_0", 0, Path(tmp))))
        for name, path in files:
            size = path.stat().st_size / 1024**2
            med, _ = median_of(lambda p=path: timed(lambda: read_gguf(p)))
            rows.append([name, f"{size:.0f} MiB", "kcuda_validate.read_gguf", f"{med * 1000:.1f} ms"])
            if "real" in name:
                import gguf

                ref, _ = median_of(lambda p=path: timed(lambda: gguf.GGUFReader(str(p))), runs=3)
                rows.append([name, f"{size:.0f} MiB", "gguf.GGUFReader", f"{ref * 1000:.0f} ms"])
    print(f"Machine: {machine()}\n")
    print(table(["file", "size", "reader", "median"], rows))


if __name__ == "__main__":
    main()
