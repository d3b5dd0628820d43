"""A worker stage that stops (crash, timeout, interrupt) says so in one `Error:` line on stderr, in every
output mode; its fix fits the run (no GPU advice on a CPU run); the crash's log heading has lines under it.

Real worker processes with injected faults (KCUDA_TEST_FAULT); interrupts are in tests/test_isolation.py
and tests/test_signals.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from kcuda_validate.checks import Check, Status
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from kcuda_validate.isolation import CPU_HINTS, HINTS, crash_hint
from kcuda_validate.render import render_report
from kcuda_validate.report import Report


def _run(tiny_model: Path, *extra: str) -> tuple[int, str, str]:
    args = ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "4", "--repeat", "1"]
    result = CliRunner().invoke(cli, [*args, *extra])
    return result.exit_code, result.stdout, result.stderr


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("json_mode", [True, False])
@pytest.mark.parametrize(
    ("fault", "stage", "sig"), [("segv:load", "load", "SIGSEGV"), ("abort:infer", "infer", "SIGABRT")]
)
def test_a_crash_prints_one_error_line_and_a_cpu_fix(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, json_mode: bool, fault: str, stage: str, sig: str
) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", fault)
    code, out, err = _run(tiny_model, *(["--json"] if json_mode else []))
    assert code == ExitCode.CRASHED
    assert _error_lines(err) == [f"Error: the worker died during {stage} by {sig}"]
    lines = err.splitlines()
    assert lines[lines.index(_error_lines(err)[0]) + 1] == f"Fix: {CPU_HINTS[sig]}"
    assert "Xid" not in out + err  # a CPU run: no driver, Xid or GPU-layer advice
    assert "CUDA" not in CPU_HINTS[sig] and "--gpu-layers" not in CPU_HINTS[sig]
    if json_mode:
        doc = json.loads(out)
        assert doc["exit_code"] == ExitCode.CRASHED
        assert next(c for c in doc["checks"] if c["id"] == f"{stage}.crash")["fix"] == CPU_HINTS[sig]


@pytest.mark.parametrize("json_mode", [True, False])
def test_a_timeout_prints_one_error_line(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, json_mode: bool) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", "hang:load")
    code, out, err = _run(tiny_model, "--timeout", "2", *(["--json"] if json_mode else []))
    assert code == ExitCode.TIMEOUT
    assert _error_lines(err) == ["Error: load did not finish within 2 s; the worker's process group was killed"]
    assert any(line.startswith("Fix: Raise --timeout") for line in err.splitlines())
    if json_mode:
        assert json.loads(out)["exit_code"] == ExitCode.TIMEOUT


def test_the_crash_hint_names_gpu_causes_only_on_a_gpu_run() -> None:
    assert "Xid" in crash_hint("SIGSEGV", -11, cpu=False)
    assert crash_hint("SIGSEGV", -11, cpu=False) == HINTS["SIGSEGV"]
    for sig in ("SIGSEGV", "SIGABRT"):
        hint = crash_hint(sig, -6, cpu=True)
        assert "Xid" not in hint and "CUDA" not in hint and "--gpu-layers" not in hint
    assert crash_hint("SIGKILL", -9, cpu=True) == HINTS["SIGKILL"]  # the OOM killer is not GPU advice
    assert crash_hint(None, 3, cpu=True) == "The worker exited with status 3; see the log file."


def _crashed_report(log_tail: list[str]) -> Report:
    report = Report("load", argv=[])
    report.device_mode = "cpu"
    crash = {"stage": "load", "signal": "SIGSEGV", "returncode": -11, "log_tail": log_tail, "hint": "h"}
    report.sections["crash"] = crash
    report.add(Check("load.crash", "load", "Load stage", Status.FAIL, "the worker died", crash, "h", ExitCode.CRASHED))
    report.stopped_at = "load"
    report.finish()
    return report


def _rendered(report: Report) -> list[str]:
    console = Console(record=True, width=120, no_color=True)
    with console.capture() as capture:
        render_report(report, console)
    return capture.get().splitlines()


def test_no_log_heading_over_nothing() -> None:
    assert not any("Last llama.cpp output" in line for line in _rendered(_crashed_report([])))
    lines = _rendered(_crashed_report(["ggml: something broke"]))
    heading = next(i for i, line in enumerate(lines) if line == "Last llama.cpp output before the SIGSEGV:")
    assert lines[heading + 1] == "  ggml: something broke"
