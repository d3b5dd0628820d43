"""`kcuda-validate health` on the named hardware scenarios, and the Slurm decision it drives (no cluster here:
tests/fleet/test_slurm.py runs the same against a real one)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fakes.hardware import Installed, scenario
from kcuda_validate.checks import Check, Status
from kcuda_validate.cli import cli
from kcuda_validate.cli import health as health_cli
from kcuda_validate.detect import CHECK_IDS, NODE_HEALTH, DetectReport
from kcuda_validate.detect.stack import FIX_INSTALL_DRIVER
from kcuda_validate.errors import UsageError
from kcuda_validate.nodehealth import (
    MAX_LINE,
    MAX_TIMEOUT_S,
    SLURM_FLOOR_S,
    Action,
    Decision,
    HealthResult,
    SlurmNode,
    decide,
    fit,
    health_line,
    parse_node,
    run_health,
    slurm_until,
)
from procs import alive, wait_for

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
    """The engine build probe is a real child process (it loads libllama); 1 ms is never enough for it.

    The deadline often lands while the probe's child is being started, before anyone holds it: that child is
    then not killed here but ends itself at its lifeline's EOF (kcuda_validate.lifeline) within Python's
    start-up, so it is waited for, briefly. It used to run on: a wedged driver would have kept it for ever."""
    before = _children()
    result = run_health(["llama.build"], timeout_s=0.001)
    assert (result.exit_code, result.line) == (124, "UNKNOWN: node health checks did not finish in 0.001 s")
    assert [(c.id, c.status, int(c.exit_code)) for c in result.checks] == [("health.deadline", Status.FAIL, 124)]
    left = [pid for pid in _children() if pid not in before]
    assert wait_for(lambda: not any(alive(pid) for pid in left), 10), left
    # And Slurm would drain for it: a check that cannot finish is a problem for a scheduler.
    assert decide(SlurmNode("n1", "IDLE", None), result).action == Action.DRAIN


# -- no verdict is never OK --------------------------------------------------------------------------------

NO_DRIVER_UNKNOWN = "UNKNOWN: no GPU visible (No NVIDIA driver: libnvidia-ml.so.1 was not found)"


@pytest.mark.parametrize(
    ("scenario", "check", "code", "line"),
    [
        ("no_driver", "gpu", 3, NO_DRIVER_UNKNOWN),
        ("no_driver", "min", 3, NO_DRIVER_UNKNOWN),
        ("no_driver", "env.cuda_visible_devices", 3, NO_DRIVER_UNKNOWN),
        ("no_driver", "perf.idle", 3, NO_DRIVER_UNKNOWN),
        ("no_driver", "llama.build", 3, NO_DRIVER_UNKNOWN),  # a skip: "no GPU to offload to"
        ("no_driver", "cuda.driver_api", 3, NO_DRIVER_UNKNOWN),  # a skip: "libcuda.so.1 not found (no driver)"
        ("driver_mismatch", "gpu", 4, "UNKNOWN: no GPU visible (Driver/library version mismatch)"),
        ("no_device", "gpu", 3, "UNKNOWN: no GPU visible (driver 550.107.02 loaded but it sees no GPU)"),
        ("all_gpus_hidden", "gpu", 4, "UNKNOWN: no usable GPU (GPU 0 hidden by CUDA_VISIBLE_DEVICES)"),
        ("gpu_lost", "min", 4, "UNKNOWN: no usable GPU (GPU 0 lost)"),
    ],
    indirect=["scenario"],
)
def test_checks_that_give_no_verdict_answer_unknown_not_ok(
    scenario: Installed, check: str, code: int, line: str
) -> None:
    assert _health("--check", check) == (code, line + "\n", "")


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_no_verdict_says_what_was_missing_in_the_json(scenario: Installed) -> None:
    code, out, _ = _health("--check", "gpu", "--json")
    doc = json.loads(out)
    assert (code, doc["exit_code"], doc["exit_reason"], doc["passed"]) == (3, 3, "no_gpu", False)
    assert doc["checks"] == [
        {
            "id": "health.verdict",
            "stage": "health",
            "title": "A verdict from the checks asked for",
            "status": "fail",
            "summary": "no GPU visible (No NVIDIA driver: libnvidia-ml.so.1 was not found)",
            "evidence": {"checks": ["gpu"], "results": {}, "nvml_error": "library_not_found"},
            "fix": "gpu: no verdict without a usable GPU. driver.nvml, which fails here, was not asked for: add"
            " --check driver.nvml. " + FIX_INSTALL_DRIVER,
            "exit_code": 3,
            "duration_s": None,
        }
    ]
    health = doc["sections"]["health"]
    assert (health["verdict"], health["healthy"], health["exit_code"]) == ("unknown", False, 3)


@pytest.mark.parametrize(
    ("scenario", "check", "why"),
    [
        ("healthy_one_gpu", "platform.wsl_libs", "nothing to check here"),
        (
            "nvml_fields_unavailable",
            "perf.idle",
            "perf.idle.0 skipped: power limit, slowdown, row remap: n/a on this driver",
        ),
    ],
    indirect=["scenario"],
)
def test_checks_that_do_not_apply_here_are_a_usage_error(scenario: Installed, check: str, why: str) -> None:
    code, out, err = _health("--check", check)
    assert (code, out) == (2, "")
    assert err.splitlines()[:2] == [
        f"Error: --check {check}: no verdict on this node ({why})",
        "Fix: Choose checks that apply to this node, or drop --check to run the node-health set.",
    ]


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_only_passes_count_as_passed(scenario: Installed) -> None:
    assert _health("--check", "platform.os", "--check", "llama.build") == (0, "OK: 1 check passed, 1 skipped\n", "")


@pytest.mark.parametrize("scenario", ["wsl2_unsupported_fields"], indirect=True)
def test_wsl2_without_a_linux_driver_is_a_pass_not_no_verdict(scenario: Installed) -> None:
    assert _health("--check", "platform.wsl_linux_driver") == (0, "OK: 1 check passed\n", "")


@pytest.mark.parametrize("scenario", ["all_gpus_hidden"], indirect=True)
def test_ok_without_a_usable_gpu_counts_checks_not_zero_gpus(scenario: Installed) -> None:
    assert _health("--check", "perf.idle") == (0, "OK: 1 check passed\n", "")


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_slurm_drains_for_no_gpu_and_never_resumes_without_a_verdict(scenario: Installed) -> None:
    result = run_health(["gpu"])
    assert (result.exit_code, result.line, result.healthy) == (3, NO_DRIVER_UNKNOWN, False)
    reason = "kcuda-validate: " + NO_DRIVER_UNKNOWN
    assert decide(SlurmNode("n1", "IDLE", None), result) == Decision(
        Action.DRAIN, reason, "drained: " + NO_DRIVER_UNKNOWN
    )
    assert decide(SlurmNode("n1", "IDLE+DRAIN", OURS), result) == Decision(
        Action.DRAIN, reason, "still failing, reason updated: " + NO_DRIVER_UNKNOWN
    )


def test_only_skips_is_not_healthy() -> None:
    checks = (Check("llama.build", "detect", "llama-cpp-python GPU offload", Status.SKIP, "no GPU to offload to"),)
    report = DetectReport(checks, None, None, None, (), (), None, None, None)
    result = HealthResult(report, checks, health_line(checks, report), 4.0)
    assert (result.line, result.healthy, result.exit_code) == ("UNKNOWN: no check gave a verdict", False, 2)
    assert decide(SlurmNode("n1", "IDLE+DRAIN", OURS), result).action != Action.RESUME


# -- --timeout -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [("1e10", "10000000000.0"), ("1e300", "1e+300"), ("3600.5", "3600.5")])
def test_timeout_has_an_upper_bound(value: str, shown: str) -> None:
    result = CliRunner().invoke(cli, ["health", "--timeout", value], prog_name="kcuda-validate")
    code, out, err = result.exit_code, result.stdout, result.stderr
    assert (code, out) == (2, "")
    assert err.splitlines()[:2] == [
        f"Error: kcuda-validate health: Invalid value for '--timeout': {shown} is not in the range 0.1<=x<=3600.0.",
        "Fix: See `kcuda-validate health --help`.",
    ]


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_timeout_at_its_bound_runs(scenario: Installed) -> None:
    assert _health("--timeout", "3600") == (
        1,
        "FAIL driver.nvml: No NVIDIA driver: libnvidia-ml.so.1 was not found\n",
        "",
    )


def test_timeout_bound_is_one_in_the_cli_and_in_run_health() -> None:
    (option,) = [p for p in health_cli.health.params if p.name == "timeout"]
    assert isinstance(option.type, click.FloatRange)
    assert (option.type.min, option.type.max, health_cli.MAX_TIMEOUT_S) == (0.1, MAX_TIMEOUT_S, MAX_TIMEOUT_S)
    with pytest.raises(UsageError) as caught:
        run_health(["platform.os"], timeout_s=1e10)
    assert (caught.value.message, caught.value.fix) == ("--timeout 1e+10: out of range", "Give 0.1 to 3600 seconds.")


def test_report_timing_covers_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The engine build probe hangs (a wedged driver): the report's clock must include the 0.5 s it waited."""
    monkeypatch.setenv("KCUDA_TEST_FAULT", "hang:llama")
    prom = tmp_path / "health.prom"
    t0 = time.monotonic()
    code, out, _ = _health("--check", "llama.build", "--timeout", "0.5", "--json", "--prometheus", str(prom))
    took = time.monotonic() - t0
    doc = json.loads(out)
    assert (code, doc["sections"]["health"]["line"]) == (124, "UNKNOWN: node health checks did not finish in 0.5 s")
    assert 0.5 <= doc["duration_s"] <= took
    assert doc["started_at"] < doc["finished_at"]
    (duration,) = [ln for ln in prom.read_text().splitlines() if ln.startswith("kcuda_run_duration_seconds")]
    assert 0.5 <= float(duration.rsplit(" ", 1)[1]) <= took


# -- what health runs: the registry's node-health tag, in --help and in the spec ------------------------------


def test_help_lists_exactly_the_node_health_checks() -> None:
    result = CliRunner().invoke(cli, ["health", "--help"])
    text = " ".join(result.stdout.split())
    assert "Runs the node-health checks: " + ", ".join(NODE_HEALTH) + "." in text
    assert "perf.idle" in NODE_HEALTH


def test_spec_lists_exactly_the_node_health_checks() -> None:
    spec = (Path(__file__).resolve().parents[2] / "specs" / "cli.md").read_text()
    intro = spec.split("\n## health\n", 1)[1].split("\n\n", 1)[0]  # the paragraph saying what it runs
    assert [i for i in re.findall(r"`([a-z_.]+)`", intro) if i in CHECK_IDS] == list(NODE_HEALTH)


# -- --slurm against a fake scontrol (the real one: tests/fleet/test_slurm.py) ---------------------------------

NO_DRIVER_LINE = "FAIL driver.nvml: No NVIDIA driver: libnvidia-ml.so.1 was not found"


def _fake_scontrol(tmp_path: Path, show: bytes, *, stderr: bytes = b"", rc: int = 0, sleep_s: float = 0) -> Path:
    """A `scontrol` on PATH: `show` answers `show` (after sleep_s, then exits rc, stderr to stderr); `update`
    is exec'd into a sleep of sleep_s (one process, so a timeout kills all of it). Each call's argv is logged."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "show.out").write_bytes(show)
    (tmp_path / "show.err").write_bytes(stderr)
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>{tmp_path / "calls"}\n'
        'case "$1" in\n'
        f"  show) sleep {sleep_s}; cat {tmp_path / 'show.out'}; cat {tmp_path / 'show.err'} >&2; exit {rc} ;;\n"
        f"  update) exec sleep {sleep_s} ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_slurm_reads_a_latin1_drain_reason(
    scenario: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    show = b"NodeName=n1\n   State=IDLE+DRAIN ThreadsPerCore=1\n   Reason=PSU caf\xe9 [root@2026-12-05T12:03:09]\n"
    bin_dir = _fake_scontrol(tmp_path, show)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out, err = _health("--slurm", "--node", "n1")
    assert (code, out) == (1, NO_DRIVER_LINE + "\n")
    assert err == "slurm: node n1 already drained by someone else (PSU caf\\xe9): left as it is\n"
    assert _calls(tmp_path) == ["show node n1"]


def test_slurm_node_name_and_answer_with_undecodable_bytes(tmp_path: Path) -> None:
    """The QA case, as a real process: `--node $'n\xff'`, and scontrol saying so in the same bytes."""
    bin_dir = _fake_scontrol(tmp_path, b"", stderr=b"Node n\xff not found\n", rc=1)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "KCUDA_LOG_DIR": str(tmp_path / "logs")}
    argv: list[str | bytes] = [sys.executable, "-m", "kcuda_validate", "health", "--check", "platform.os"]
    argv += ["--slurm", "--node", b"n\xff"]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (1, b"OK: 1 check passed\n")
    assert done.stderr.splitlines()[:2] == [
        b"Error: scontrol show node n\\xff: Node n\\xff not found",
        b"Fix: Check that slurmctld answers (`scontrol ping`) and that this runs as root or SlurmUser.",
    ]


def test_slurm_step_gets_what_is_left_of_the_timeout_with_a_floor() -> None:
    assert slurm_until(100.0, 30.0, now=101.0) == 130.0  # the checks took 1 s: 29 s left for scontrol
    assert slurm_until(100.0, 1.0, now=100.5) == 100.5 + SLURM_FLOOR_S  # too little left: the floor
    assert slurm_until(100.0, 4.0, now=104.2) == 104.2 + SLURM_FLOOR_S  # checks timed out: a drain still fits


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_timeout_bounds_the_slurm_step(scenario: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scontrol answers in 4 s each (QA: 12 s with --timeout 1). Now the calls share the 5 s floor: `show`
    answers, the drain is cut short, and the third call (the read after it) never starts."""
    before = _children()
    bin_dir = _fake_scontrol(tmp_path, b"NodeName=n1\n   State=IDLE ThreadsPerCore=1\n", sleep_s=4)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    t0 = time.monotonic()
    code, out, err = _health("--slurm", "--node", "n1", "--timeout", "1")
    took = time.monotonic() - t0
    assert (code, out) == (1, NO_DRIVER_LINE + "\n")
    update = f"update NodeName=n1 State=DRAIN Reason=kcuda-validate: {NO_DRIVER_LINE}"
    assert err.splitlines()[:2] == [
        f"Error: scontrol {update}: no answer within --timeout (Slurm gets what is left of it, at least 5 s)",
        "Fix: Check that slurmctld is up (`scontrol ping`).",
    ]
    assert _calls(tmp_path) == ["show node n1", update]
    assert SLURM_FLOOR_S <= took < SLURM_FLOOR_S + 2.5
    assert [pid for pid in _children() if pid not in before and alive(pid)] == []
