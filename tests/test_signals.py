"""Signal dispositions: the suite sets the ones it relies on, and the tool respects the ones it was given.

A test run started with SIGINT ignored (`nohup`, a background job, some CI runners) used to fail the
interrupt tests: an ignored signal stays ignored across fork and exec, so their children ignored the SIGINT
the test sent. tests/conftest.py now installs the default handlers for every test. The tool itself, started
with SIGINT ignored, keeps ignoring it (a background job must not be stopped by a terminal's Ctrl-C), and
SIGTERM still stops it with its reports written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from procs import alive, catches, children_with_marker, ignores, wait_for, with_marker

IGNORE_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.executable, "
    "[sys.executable, *sys.argv[1:]])"
)


def test_the_suite_gives_itself_and_its_children_the_default_dispositions() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "True"


def test_a_child_started_with_sigint_ignored_really_ignores_it() -> None:
    """The wrapper the tests below use does what `nohup`-like launchers do."""
    proc = subprocess.Popen(
        [sys.executable, "-c", IGNORE_SIGINT_THEN_EXEC, "-c", "import time; time.sleep(30)"],
        stdin=subprocess.DEVNULL,
    )
    try:
        # Wait for the second exec: before it, the pid is a fork of this process, then the wrapper.
        final = "\0".join([sys.executable, "-c", "import time; time.sleep(30)"]) + "\0"
        assert wait_for(lambda: Path(f"/proc/{proc.pid}/cmdline").read_text() == final, 30)
        assert ignores(proc.pid, signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _cli_ignoring_sigint(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", IGNORE_SIGINT_THEN_EXEC, "-m", "kcuda_validate", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def test_started_with_sigint_ignored_a_worker_stage_ignores_it_and_sigterm_stops_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    marker = f"kcuda-test-{uuid.uuid4().hex}"
    ready, report = tmp_path / "ready", tmp_path / "report.json"
    env = os.environ | {"KCUDA_TEST_MARK": marker, "KCUDA_TEST_FAULT": "hang:load"}
    env |= {"KCUDA_TEST_FAULT_READY": str(ready)}
    args = ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--report", str(report), "--json"]
    proc = _cli_ignoring_sigint(args, env)
    try:
        assert wait_for(ready.exists, 60), "the worker never reached its load stage"
        assert ignores(proc.pid, signal.SIGINT)  # still, in the worker stage: not re-enabled
        assert catches(proc.pid, signal.SIGTERM)
        (worker,) = children_with_marker(proc.pid, marker)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None and alive(worker), "a SIGINT the tool was started ignoring stopped it"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert json.loads(out)["exit_code"] == 143  # stdout is still one JSON document
    assert _error_lines(err) == ["Error: interrupted by SIGTERM during load; the worker process was stopped"]
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True
    assert any(c["id"] == "load.interrupted" for c in doc["checks"])
    assert wait_for(lambda: with_marker(marker) == [], 5)


def test_started_with_sigint_ignored_the_parent_s_own_stage_ignores_it_and_sigterm_stops_it(tmp_path: Path) -> None:
    """The parent's own stage (generating a large synthetic model), where no worker stage handler is installed."""
    cache, report = tmp_path / "cache", tmp_path / "report.json"
    env = os.environ | {"KCUDA_CACHE_DIR": str(cache)}
    proc = _cli_ignoring_sigint(["load", "--device", "cpu", "--synthetic", "6GiB", "--report", str(report)], env)
    try:
        started = wait_for(lambda: any(p.suffix != ".lock" for p in cache.rglob("*") if p.is_file()), 60)
        assert started, "the synthetic model was never started"
        assert ignores(proc.pid, signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None, "a SIGINT the tool was started ignoring stopped it"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert len(_error_lines(err)) == 1 and "interrupted by SIGTERM" in _error_lines(err)[0]
    assert json.loads(report.read_text())["interrupted"] is True
    assert [p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_interrupt_tests_children_catch_the_signal_they_are_sent(tiny_model: Path, signum: int) -> None:
    """What the interrupt tests rely on, checked on a real CLI child whatever the suite was started with."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", "load", "--device", "cpu", "--model-path", str(tiny_model)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"KCUDA_TEST_FAULT": "hang:load"},
    )
    try:
        assert wait_for(lambda: catches(proc.pid, signal.SIGTERM), 60)  # the CLI has installed its handlers
        assert catches(proc.pid, signum) and not ignores(proc.pid, signum)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
