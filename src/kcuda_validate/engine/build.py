"""Compile the engine: llama-cpp-python's sdist with CUDA, through uv's build frontend and ninja.

The build streams ninja's `[n/N]` lines to a progress callback and the whole output to a log file; a
failure becomes one cause with its fix (no compiler, nvcc refusing the host compiler, disk full, the
compiler killed for memory...), read from the log by `classify_failure`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kcuda_validate.errors import DiskFullError, ExitCode, KcudaError

_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


@dataclass(frozen=True)
class BuildProgress:
    done: int
    total: int
    line: str  # what ninja is doing now, e.g. "Building CUDA object .../fattn-mma-f16.cu.o"

    @property
    def target(self) -> str:
        """The file being made, short: verbose builds print whole compiler command lines."""
        m = re.search(r"\s-o\s+(\S+)", self.line)
        words = [w for w in self.line.split() if any(c.isalnum() for c in w)]
        last = m.group(1) if m else words[-1] if words else ""
        return last.rstrip("/").rsplit("/", 1)[-1][:60]


def parse_progress(line: str) -> BuildProgress | None:
    """ninja's status line `[12/157] Building CUDA object ...`; None for any other output."""
    m = _STEP.match(line.strip())
    if not m:
        return None
    done, total = int(m.group(1)), int(m.group(2))
    if total <= 0 or done > total:
        return None
    return BuildProgress(done, total, m.group(3))


@dataclass(frozen=True)
class Failure:
    cause: str
    fix: str
    exit_code: ExitCode = ExitCode.GPU_UNUSABLE


# Most specific first; each pattern is what the tool in question really prints.
_FAILURES: tuple[tuple[re.Pattern[str], Failure], ...] = (
    (
        re.compile(r"No space left on device|Disk quota exceeded"),
        Failure(
            "the disk filled up during the build",
            "Free some space, or point KCUDA_CACHE_DIR (and TMPDIR) at a disk with more room.",
            ExitCode.DISK_FULL,
        ),
    ),
    (
        re.compile(
            r"Killed signal terminated program|virtual memory exhausted|out of memory allocating|"
            r"cannot allocate memory|std::bad_alloc|nvcc error\s*:\s*'\w+' died due to signal 9",
            re.IGNORECASE,
        ),
        Failure(
            "the compiler ran out of memory (each CUDA template file takes up to ~1 GiB)",
            "Run setup again with fewer parallel jobs, e.g. `--jobs 1`, or close other programs.",
        ),
    ),
    (
        re.compile(r"unsupported (GNU|clang) version|-allow-unsupported-compiler", re.IGNORECASE),
        Failure(
            "nvcc does not support this host compiler version",
            "Install a g++ this CUDA supports (e.g. `sudo apt install g++-12`) and set CUDAHOSTCXX=/usr/bin/g++-12, "
            "or let setup pick another toolkit with `--toolkit pypi`.",
        ),
    ),
    (
        re.compile(
            r"No CMAKE_CXX_COMPILER could be found|CMAKE_CXX_COMPILER not set|C\+\+ compiler.*not found|"
            r"is not a full path to an existing compiler tool"
        ),
        Failure(
            "no C++ compiler",
            "Install one, e.g. `sudo apt install g++` on Debian/Ubuntu or `sudo dnf install gcc-c++`, then run "
            "setup again.",
        ),
    ),
    (
        re.compile(r"No CMAKE_CUDA_COMPILER could be found|Failed to find nvcc|Could NOT find CUDAToolkit"),
        Failure(
            "CMake could not use the CUDA toolkit",
            "Run setup again with `--toolkit pypi` (the packaged toolkit), or fix CUDA_HOME.",
        ),
    ),
    (
        re.compile(r"cublas_v2\.h: No such file|cannot find -lcublas"),
        Failure("the toolkit has no cuBLAS", "Run setup again with `--toolkit pypi`, which brings cuBLAS."),
    ),
    (
        re.compile(r"(error sending request|dns error|Failed to fetch|Could not connect|Connection refused)"),
        Failure(
            "the package index could not be reached for the build's dependencies",
            "Check the network (setup needs the package index for scikit-build-core, CMake and ninja).",
        ),
    ),
)

_ERROR_LINE = re.compile(r"(^|\s)(error|fatal error|fatal|FAILED)\s*[: ]", re.IGNORECASE)
# uv's own summary of a failed backend ("error: Failed to build `...`", "Caused by: ...") says nothing new.
_UV_SUMMARY = re.compile(r"^\s*(error: Failed to build|Caused by:|hint:|╰─▶|×)")


def classify_failure(log_text: str) -> Failure:
    """The first known cause in a failed build's output, else the first compiler error line."""
    for pattern, failure in _FAILURES:
        if pattern.search(log_text):
            return failure
    lines = [ln for ln in log_text.splitlines() if not _UV_SUMMARY.match(ln)]
    first = next((ln.strip() for ln in lines if _ERROR_LINE.search(ln)), None)
    detail = f": {first[:200]}" if first else ""
    return Failure(f"the build failed{detail}", "Read the build log named below; report it with the log if unclear.")


@dataclass(frozen=True)
class BuildResult:
    wheel: Path
    seconds: float
    steps: int
    log_file: Path


def build_env(
    root: Path, cmake: Sequence[str], jobs: int, compiler: str | None, base: Mapping[str, str]
) -> dict[str, str]:
    """The build's environment: the assembled toolkit first, CMAKE_ARGS quoted so `\\$ORIGIN` survives."""
    env = dict(base)
    args = [*cmake, f"-DCMAKE_CUDA_COMPILER={root / 'bin' / 'nvcc'}", f"-DCUDAToolkit_ROOT={root}"]
    if compiler:
        args.append(f"-DCMAKE_CUDA_HOST_COMPILER={compiler}")
        env["CUDAHOSTCXX"] = compiler
    env["CMAKE_ARGS"] = " ".join(shlex.quote(a) for a in args)
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
    env["CUDA_HOME"] = str(root)
    env["CUDACXX"] = str(root / "bin" / "nvcc")
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for var in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(var, None)
    return env


def run_build(
    uv: Sequence[str],
    sdist: Path,
    out_dir: Path,
    env: Mapping[str, str],
    log_file: Path,
    on_progress: Callable[[BuildProgress], None] | None = None,
    timeout_s: float = 4 * 3600.0,
) -> BuildResult:
    """`uv build --wheel` of the sdist; Ctrl-C or a failure kills the whole build and raises."""
    cmd = [*uv, "build", "--wheel", "--no-config", "--python", sys.executable, "--out-dir", str(out_dir), str(sdist)]
    start = time.monotonic()
    steps = 0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ CMAKE_ARGS={shlex.quote(env.get('CMAKE_ARGS', ''))} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=out_dir,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # one group to kill; the terminal's Ctrl-C reaches us first
        )
        try:
            reaper = _start_reaper(proc.pid)
        except BaseException:
            _kill_group(proc)
            raise
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if len(tail) > 4000:
                    del tail[:2000]
                progress = parse_progress(line)
                if progress is not None:
                    steps = progress.total
                    if on_progress is not None:
                        on_progress(progress)
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            _stop_reaper(*reaper)
    if proc.returncode != 0:
        failure = classify_failure("".join(tail))
        cls = DiskFullError if failure.exit_code == ExitCode.DISK_FULL else KcudaError
        raise cls(
            f"building llama-cpp-python: {failure.cause}",
            fix=f"{failure.fix} Build log: {log_file}",
            exit_code=failure.exit_code,
        )
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise KcudaError("building llama-cpp-python: uv reported success but wrote no wheel", fix=f"See {log_file}.")
    return BuildResult(wheels[0], time.monotonic() - start, steps, log_file)


# The build runs in its own session (so the terminal's Ctrl-C reaches this process first), which also means
# nothing stops it if this process is SIGKILLed or its terminal closes: uv, CMake, ninja and nvcc would go on
# for up to half an hour. The reaper is a tiny separate process holding the read end of a pipe only this
# process can write to: a byte means "done, exit"; EOF means this process died, and the build's group goes.
_REAPER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pgid, fd = int(sys.argv[1]), int(sys.argv[2])
if not os.read(fd, 1):
    try:
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(3)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def _start_reaper(pgid: int) -> tuple[subprocess.Popen[bytes], int]:
    read_end, write_end = os.pipe()  # not inheritable: the build never holds the write end open
    try:
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(pgid), str(read_end)],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    return reaper, write_end


def _stop_reaper(reaper: subprocess.Popen[bytes], write_end: int) -> None:
    with contextlib.suppress(OSError):  # the reaper is already gone
        os.write(write_end, b"d")
    os.close(write_end)
    try:
        reaper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass
