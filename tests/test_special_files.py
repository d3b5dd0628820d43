"""Only a regular file (or a symlink that ends at one) is a model: anything else is exit 5 at once.

Every input here is real: a directory, /dev/null, a listening Unix socket, a FIFO, symlink loops, a
dangling link, a path through a file, and (as an unprivileged user) a file that cannot be read. The
FIFO case runs the real console script in a subprocess with a timeout: opening a FIFO blocks until a
writer comes, which is how the tool used to hang forever.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from kcuda_validate.model.source import check_model_file

REGULAR_FIX = "Fix: Pass a regular .gguf file (a symlink to one is fine)."


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "model.gguf"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    try:
        yield path
    finally:
        sock.close()


def _make(kind: str, tmp_path: Path, tiny_model: Path) -> tuple[Path, list[str]]:
    """The path to pass, and the Error and Fix lines expected for it."""
    p = tmp_path / "model.gguf"
    if kind == "directory":
        p.mkdir()
        return p, [f"Error: {p}: is a directory, not a GGUF file", "Fix: Pass the .gguf file itself."]
    if kind == "dev_null":
        p = Path("/dev/null")
        return p, [f"Error: {p}: is a character device, not a regular file", REGULAR_FIX]
    if kind == "fifo":
        os.mkfifo(p)
        return p, [f"Error: {p}: is a FIFO (named pipe), not a regular file", REGULAR_FIX]
    if kind == "symlink_to_fifo":
        os.mkfifo(tmp_path / "pipe")
        p.symlink_to(tmp_path / "pipe")
        return p, [
            f"Error: {p}: is a FIFO (named pipe), not a regular file (the symlink leads to {tmp_path / 'pipe'})",
            REGULAR_FIX,
        ]
    if kind == "symlink_loop":
        p.symlink_to(tmp_path / "other.gguf")
        (tmp_path / "other.gguf").symlink_to(p)
    if kind == "self_loop":
        p.symlink_to(p)
    if kind in ("symlink_loop", "self_loop"):
        return p, [
            f"Error: {p}: a symlink loop (the links never reach a file)",
            f"Fix: Point the link at the .gguf file itself (`ls -l {p}` shows where it goes), or pass the file.",
        ]
    if kind == "dangling_symlink":
        p.symlink_to(tmp_path / "gone.gguf")
        return p, [
            f"Error: {p}: a symlink to {tmp_path / 'gone.gguf'}, which does not exist",
            "Fix: Point the link at the .gguf file, or pass the file itself.",
        ]
    if kind == "through_a_file":
        (tmp_path / "notes.txt").write_text("a file")
        p = tmp_path / "notes.txt" / "model.gguf"
        return p, [
            f"Error: {p}: no such file (a part of the path before the file name is not a directory)",
            "Fix: Check the path passed to --model-path.",
        ]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["directory", "dev_null", "symlink_loop", "self_loop", "dangling_symlink", "through_a_file", "symlink_to_fifo"],
)
def test_a_path_that_is_not_a_regular_file_is_exit_5_naming_it(tmp_path: Path, tiny_model: Path, kind: str) -> None:
    p, expected = _make(kind, tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["--json", "load", "--device", "cpu", "--model-path", str(p)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    lines = result.stderr.splitlines()
    assert lines[:2] == expected
    assert lines[2].startswith("Log: ") and len(lines) == 3
    doc = json.loads(result.stdout)
    assert doc["stopped_at"] == "model"
    check = next(c for c in doc["checks"] if c["id"] == "model.source")
    assert (check["status"], check["exit_code"]) == ("fail", 5)
    assert check["summary"] == expected[0].removeprefix("Error: ")
    assert not any(c["stage"] == "load" for c in doc["checks"])


def test_a_socket_is_not_a_model(unix_socket: Path) -> None:
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--model-path", str(unix_socket)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[:2] == [f"Error: {unix_socket}: is a socket, not a regular file", REGULAR_FIX]


def test_a_symlink_to_a_regular_model_file_is_a_model(tmp_path: Path, tiny_model: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny_model)
    check_model_file(link)  # no error
    check_model_file(tiny_model)


def _console(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """The installed console script, with SIGINT at its default (an ignored one is inherited otherwise)."""
    exe = Path(sys.executable).parent / "kcuda-validate"
    start = time.monotonic()
    proc = subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return proc, time.monotonic() - start


@pytest.mark.parametrize("command", ["load", "infer", "validate-all"])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path, command: str) -> None:
    """The old tool opened the FIFO in the parent and waited for a writer forever (--timeout never applied)."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    proc, took = _console(command, "--device", "cpu", "--model-path", str(fifo), "--timeout", "5")
    assert proc.returncode == ExitCode.MODEL_INVALID, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[:2] == [f"Error: {fifo}: is a FIFO (named pipe), not a regular file", REGULAR_FIX]
    assert took < 30  # the start-up time of the tool, not a wait on the pipe
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # left as it was


# Root reads anything through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: without them in the bounding set,
# root is held to the file's mode bits like anyone else (and can still reach its own 0700 home).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _without_read_override(probe: Path) -> list[str]:
    """The command prefix under which `probe` (mode 000) cannot be read: [] when not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop the power to read anything")
    check = f"import os, sys; sys.exit(os.access({str(probe)!r}, os.R_OK))"
    done = subprocess.run([*NO_DAC, sys.executable, "-c", check], capture_output=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"running as root, and setpriv could not drop the read override: {done.stderr[-200:]!r}")
    return NO_DAC


def test_an_unreadable_model_file_is_exit_5_not_a_click_usage_error(tmp_path: Path, tiny_model: Path) -> None:
    """Run for real without the power to read anything (as root: setpriv drops it)."""
    p = tmp_path / "m.gguf"
    p.write_bytes(tiny_model.read_bytes())
    p.chmod(0)
    prefix = _without_read_override(p)
    exe = Path(sys.executable).parent / "kcuda-validate"
    proc = subprocess.run(
        [*prefix, str(exe), "load", "--device", "cpu", "--model-path", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == ExitCode.MODEL_INVALID, proc.stderr
    assert proc.stderr.splitlines()[:2] == [
        f"Error: {p}: permission denied",
        f"Fix: Make it readable: `chmod u+r {p}`.",
    ]
