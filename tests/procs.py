"""Processes as /proc sees them: who is alive, whose child, which signals a process ignores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None when the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie waiting to be reaped (a dead process holds no core)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def cpu_ticks(pid: int) -> int:
    """utime + stime, in clock ticks."""
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields is not None else 0


def with_marker(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (the test sets it; children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def children_with_marker(parent: int, marker: str) -> list[int]:
    return [pid for pid in with_marker(marker) if parent_of(pid) == parent]


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate()` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@contextlib.contextmanager
def held_while_writing(proc: subprocess.Popen[str], directory: Path, timeout: float = 60) -> Iterator[None]:
    """The child stopped (SIGSTOP) while a temp file of its own is under `directory`, resumed on leaving.

    A signal sent inside is delivered on resuming, in that write whatever the disk's speed: a test that only
    polled for the temp file and then signalled raced the write's end (a fast or idle disk finished 6 GiB
    first and the signal landed in the next stage)."""

    def writing() -> bool:
        return any(p.name.endswith(".tmp") for p in directory.rglob("*"))

    assert wait_for(writing, timeout), f"nothing was ever being written under {directory}"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: (_stat(proc.pid) or ["?"])[0] == "T", 10), "the child did not stop"
        assert writing(), "the write ended before the child could be held in it"
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def ignores(pid: int, signum: int) -> bool:
    """Whether the process has `signum` ignored (SigIgn in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigIgn line for pid {pid}")


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for `signum` (SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigCgt line for pid {pid}")


def full_pipe() -> tuple[int, int, int]:
    """A pipe whose buffer is already full: (read end, write end, bytes of filler to read first).

    Given as a child's stdout, the child's first write there blocks until the reader drains the filler, so a
    test can hold a real process at that write (the result, printed just before the report files) and signal
    it there."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest buffer: a page
    os.set_blocking(write_end, False)
    filler = 0
    try:
        while True:
            filler += os.write(write_end, b"#" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end, filler


_SYS_WRITE = {"x86_64": 1, "aarch64": 64}


def blocked_writing(pid: int, fd: int) -> bool:
    """Whether the process's main thread is blocked in write(2) on `fd` (a full pipe)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    number = _SYS_WRITE.get(os.uname().machine)
    if number is not None and len(fields) > 1 and fields[0] != "running":
        return int(fields[0]) == number and int(fields[1], 16) == fd
    try:  # an architecture not listed: the kernel's wait channel (pipe_write, anon_pipe_write) says it
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
