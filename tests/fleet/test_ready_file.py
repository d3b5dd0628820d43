"""`validate-all --ready-file`: the GPU-operator gate exists only after a GPU pass.

There is no GPU here, so every run below fails or is refused, and each must leave no ready file, an old one
from an earlier pass included; the GPU pass that writes it is tests/test_gpu.py's (skipped here, never faked).
`settle` is also called directly on the JSON shape a GPU pass has, to pin the file's contents and atomicity.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakes.hardware import install
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from kcuda_validate.readyfile import FIX as FIX_TEXT
from kcuda_validate.readyfile import contents, settle

FIX = "Fix: " + FIX_TEXT


@pytest.fixture
def stale(tmp_path: Path) -> Path:
    """A ready file left by an earlier pass: the gate that must close."""
    path = tmp_path / "validations" / "inference-ready"
    path.parent.mkdir()
    path.write_text("{}\n")
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_failing_gpu_run_removes_the_old_ready_file(
    stale: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("healthy_one_gpu", monkeypatch, tmp_path)  # NVML sees a GPU; this llama.cpp is a CPU build
    code, out, _ = invoke("--json", "validate-all", "--model-path", str(tiny_model), "--ready-file", str(stale))
    assert code == ExitCode.GPU_UNUSABLE
    assert json.loads(out)["gpu_validated"] is False
    assert not stale.exists()
    assert os.listdir(stale.parent) == []  # no temp file either


def test_no_gpu_removes_the_old_ready_file(stale: Path, tiny_model: Path) -> None:
    code, _, _ = invoke("-q", "validate-all", "--model-path", str(tiny_model), "--ready-file", str(stale))
    assert code in (ExitCode.NO_GPU, ExitCode.GPU_UNUSABLE)  # this machine: no NVIDIA driver
    assert not stale.exists()


def test_a_bad_option_value_still_removes_the_old_ready_file(stale: Path) -> None:
    code, _, err = invoke("validate-all", "--ready-file", str(stale), "--max-tokens", "0")
    assert code == ExitCode.USAGE
    assert err.splitlines()[0] == (
        "Error: cli validate-all: Invalid value for '--max-tokens': 0 is not in the range 1<=x<=65536."
    )
    assert not stale.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--ready-file", "{stale}", "--max-tokenz", "8"),  # an unknown option: click stops before any callback
        ("--max-tokenz", "8", "--ready-file={stale}"),
        ("--ready-file", "{stale}", "--max-tokens"),  # a missing value
    ],
    ids=["typo-after", "typo-before-equals-form", "missing-value"],
)
def test_a_command_line_click_cannot_parse_still_removes_the_old_ready_file(stale: Path, args: tuple[str, ...]) -> None:
    code, _, err = invoke("validate-all", *(a.format(stale=stale) for a in args))
    assert code == ExitCode.USAGE
    assert err.startswith("Error: "), err
    assert not stale.exists()


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (("--bogus",), "Error: cli: No such option '--bogus'. Did you mean '--verbose'?"),
        (("--report", ""), "Error: cli: Invalid value for '--report': an empty path names no file."),
    ],
    ids=["unknown-group-option", "bad-group-option-value"],
)
def test_a_group_option_click_cannot_parse_still_removes_the_old_ready_file(
    stale: Path, tmp_path: Path, group: tuple[str, ...], expected: str
) -> None:
    """The group's own parse fails before validate-all is reached: the gate still closes."""
    (tmp_path / "d").mkdir()
    fill = {"dir": str(tmp_path / "d")}
    code, _, err = invoke(*(a.format(**fill) for a in group), "validate-all", "--ready-file", str(stale))
    assert code == ExitCode.USAGE
    assert err.splitlines()[0] == expected.format(**fill)
    assert not stale.exists()


def test_a_cpu_run_is_refused_and_closes_the_gate(stale: Path) -> None:
    code, out, err = invoke("validate-all", "--device", "cpu", "--ready-file", str(stale))
    assert (code, out) == (ExitCode.USAGE, "")
    assert err.splitlines()[:2] == [
        "Error: --ready-file: a CPU run (--device cpu) never validates the GPU, so it cannot mark the node ready",
        "Fix: Drop --device cpu to validate the GPU, or drop --ready-file.",
    ]
    assert not stale.exists()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    code, _, err = invoke("validate-all", "--ready-file", str(tmp_path))
    assert code == ExitCode.USAGE
    assert err.splitlines()[:2] == [f"Error: --ready-file {tmp_path}: is a directory, not a file to write", FIX]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = invoke("validate-all", "--ready-file", str(locked / "ready"))
    assert code == ExitCode.USAGE
    assert err.splitlines()[0].startswith(f"Error: --ready-file {locked / 'ready'}: cannot write in {locked} (")


# -- the end of a run, on the report's JSON shape --------------------------------------------------------

GPU_PASS = {  # the fields `settle` reads, as a GPU pass's report has them (see specs/report.schema.json)
    "command": "validate-all",
    "gpu_validated": True,
    "finished_at": "2026-12-05T21:00:00+00:00",
    "host": {"hostname": "gpu-node-7"},
    "gpu": {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-8f1c0c9e-0000-4000-8000-000000000000"},
    "versions": {"kcuda-validate": "1.0.0", "llama-cpp-python": "0.3.16", "nvidia_driver": "570.86.15"},
}


def test_settle_writes_the_file_for_a_gpu_pass(tmp_path: Path) -> None:
    ready = tmp_path / "new-dir" / "inference-ready"
    assert settle(ready, GPU_PASS) == []
    assert ready.read_text() == contents(GPU_PASS)
    assert json.loads(ready.read_text()) == {
        "gpu_validated": True,
        "command": "validate-all",
        "finished_at": "2026-12-05T21:00:00+00:00",
        "hostname": "gpu-node-7",
        "gpu": GPU_PASS["gpu"],
        "versions": GPU_PASS["versions"],
    }
    assert os.listdir(ready.parent) == ["inference-ready"]  # written via a temp file and a rename


def test_settle_keeps_the_gate_shut_when_another_file_failed(stale: Path) -> None:
    assert settle(stale, GPU_PASS, others_written=False) == []
    assert not stale.exists()


def test_settle_removes_the_file_for_anything_but_a_gpu_pass(stale: Path) -> None:
    assert settle(stale, {**GPU_PASS, "gpu_validated": False}) == []
    assert not stale.exists()


def test_a_device_or_fifo_is_refused_and_never_removed(tmp_path: Path) -> None:
    """Run as root, `--ready-file /dev/null` must not delete the device: only a regular file is a gate."""
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    code, _, err = invoke("validate-all", "--ready-file", str(fifo))
    assert code == ExitCode.USAGE
    assert err.splitlines()[:2] == [f"Error: --ready-file {fifo}: is a FIFO (named pipe), not a file to write", FIX]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
