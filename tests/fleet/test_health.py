"""`kcuda-validate health` on the named hardware scenarios, and the Slurm decision it drives (no cluster here:
tests/fleet/test_slurm.py runs the same against a real one)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fakes.hardware import Installed, scenario
from kcuda_validate.checks import Check, Status
from kcuda_validate.cli import cli
from kcuda_validate.detect import DetectReport
from kcuda_validate.nodehealth import (
    MAX_LINE,
    Action,
    Decision,
    HealthResult,
    SlurmNode,
    decide,
    fit,
    health_line,
    parse_node,
    run_health,
)
from procs import alive

pytestmark = pytest.mark.fleet

__all__ = ["scenario"]


def _health(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["health", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_healthy_node_is_one_ok_line(scenario: Installed) -> None:
    code, out, err = _health()
    assert (code, err) == (0, "")
    gpu = scenario.scenario.gpus[0]
    assert out == f"OK: 1 GPU ({gpu.name}), driver {scenario.scenario.driver_version}\n"
    assert scenario.torch_imports == 0


@pytest.mark.parametrize(
    ("scenario", "line"),
    [
        ("no_driver", "FAIL driver.nvml: No NVIDIA driver: libnvidia-ml.so.1 was not found"),
        ("gpu_lost", "FAIL gpu.0 (+1 more): GPU has fallen off the bus (NVML: GPU is lost)"),
    ],
    indirect=["scenario"],
)
def test_problem_is_exit_1_and_one_line(scenario: Installed, line: str) -> None:
    code, out, _ = _health()
    assert (code, out) == (1, line + "\n")
    assert len(line) <= MAX_LINE


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_json_keeps_the_specific_code_in_each_check(scenario: Installed) -> None:
    code, out, _ = _health("--json")
    doc = json.loads(out)
    assert code == 1
    assert (doc["command"], doc["exit_code"], doc["passed"], doc["gpu_validated"]) == ("health", 1, False, False)
    failed = [(c["id"], c["exit_code"]) for c in doc["checks"] if c["status"] == "fail"]
    assert failed == [("driver.nvml", 3)]
    assert doc["sections"]["health"]["line"] == "FAIL driver.nvml: No NVIDIA driver: libnvidia-ml.so.1 was not found"


def test_a_slow_check_is_refused_naming_the_allowed_ones() -> None:
    code, out, err = _health("--check", "torch.cuda")
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == "Error: --check torch.cuda: not a node health check"


def test_node_without_slurm_is_a_usage_error() -> None:
    code, _, err = _health("--node", "gpu-01")
    assert code == 2
    assert err.splitlines()[:2] == [
        "Error: --node: only means something with --slurm",
        "Fix: Add --slurm or drop --node.",
    ]


def test_line_is_ascii_and_cut_to_80() -> None:
    long = fit("FAIL gpu.0: driver 560.35 — supports CUDA ≤ 12.6, " + "x" * 100)
    assert long == "FAIL gpu.0: driver 560.35 - supports CUDA <= 12.6, " + "x" * 26 + "..."
    assert len(long) == MAX_LINE


def _result(status: Status) -> HealthResult:
    checks = (Check("driver.nvml", "detect", "NVIDIA driver (NVML)", status, "No NVIDIA driver"),)
    report = DetectReport(checks, None, None, None, (), (), None, None, None)
    return HealthResult(report, checks, health_line(checks, report), 4.0)


FAILING = _result(Status.FAIL)
PASSING = _result(Status.PASS)
OURS = "kcuda-validate: FAIL driver.nvml: No NVIDIA driver"


@pytest.mark.parametrize(
    ("node", "result", "expected"),
    [
        (
            SlurmNode("n1", "IDLE", None),
            FAILING,
            Decision(Action.DRAIN, OURS, "drained: FAIL driver.nvml: No NVIDIA driver"),
        ),
        (
            SlurmNode("n1", "MIXED+DRAIN", OURS),
            FAILING,
            Decision(Action.NONE, None, "still drained: FAIL driver.nvml: No NVIDIA driver"),
        ),
        (
            SlurmNode("n1", "IDLE+DRAIN", "kcuda-validate: FAIL gpu.0: old"),
            FAILING,
            Decision(Action.DRAIN, OURS, "still failing, reason updated: FAIL driver.nvml: No NVIDIA driver"),
        ),
        (
            SlurmNode("n1", "IDLE+DRAIN", "PSU swap"),
            FAILING,
            Decision(Action.NONE, None, "already drained by someone else (PSU swap): left as it is"),
        ),
        (SlurmNode("n1", "IDLE+DRAIN", OURS), PASSING, Decision(Action.RESUME, None, "resumed: OK: 1 check passed")),
        (
            SlurmNode("n1", "IDLE+DRAIN", "PSU swap"),
            PASSING,
            Decision(Action.NONE, None, "healthy, but drained by someone else (PSU swap): left drained"),
        ),
        (SlurmNode("n1", "IDLE", None), PASSING, Decision(Action.NONE, None, "OK: 1 check passed")),
    ],
)
def test_decide_touches_only_its_own_drain(node: SlurmNode, result: HealthResult, expected: Decision) -> None:
    assert decide(node, result) == expected


def test_parse_node_reads_state_and_reason_without_its_stamp() -> None:
    text = (
        "NodeName=vm Arch=x86_64 CoresPerSocket=1\n   State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1\n"
        "   Partitions=debug\n   Reason=kcuda-validate: FAIL driver.nvml: No NVIDIA driver [root@2026-12-05T12:03:09]\n"
    )
    assert parse_node("vm", text) == SlurmNode("vm", "IDLE+DRAIN", "kcuda-validate: FAIL driver.nvml: No NVIDIA driver")
    assert parse_node("vm", "NodeName=vm\n   State=IDLE ThreadsPerCore=1\n") == SlurmNode("vm", "IDLE", None)


def _children() -> list[int]:
    from pathlib import Path

    return [int(p) for t in Path("/proc/self/task").iterdir() for p in (t / "children").read_text().split()]


def test_checks_over_the_timeout_answer_unknown_and_stop_the_probe() -> None:
    """The engine build probe is a real child process (it loads libllama); 1 ms is never enough for it."""
    before = _children()
    result = run_health(["llama.build"], timeout_s=0.001)
    assert (result.exit_code, result.line) == (124, "UNKNOWN: node health checks did not finish in 0.001 s")
    assert [(c.id, c.status, int(c.exit_code)) for c in result.checks] == [("health.deadline", Status.FAIL, 124)]
    assert [pid for pid in _children() if pid not in before and alive(pid)] == []
    # And Slurm would drain for it: a check that cannot finish is a problem for a scheduler.
    assert decide(SlurmNode("n1", "IDLE", None), result).action == Action.DRAIN
