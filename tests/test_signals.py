"""Signal dispositions: the suite sets the ones it relies on, and the tool respects the ones it was given.

A test run started with SIGINT ignored (`nohup`, a background job, some CI runners) used to fail the
interrupt tests: an ignored signal stays ignored across fork and exec, so their children ignored the SIGINT
the test sent. tests/conftest.py now installs the default handlers for every test. The tool itself, started
with SIGINT ignored, keeps ignoring it (a background job must not be stopped by a terminal's Ctrl-C), and
SIGTERM still stops it with its reports written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from procs import (
    alive,
    blocked_writing,
    catches,
    children_with_marker,
    full_pipe,
    held_while_writing,
    ignores,
    wait_for,
    with_marker,
)

REGENERATE_FIX = "Fix: Nothing partial is kept: run the same command again to generate the synthetic model."
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
    assert err == "Error: interrupted by SIGTERM during load; the worker process was stopped\n"  # no Log: line
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
        with held_while_writing(proc, cache):
            assert ignores(proc.pid, signal.SIGINT)
            # Both arrive while it is held. Were SIGINT caught, the lower-numbered signal would be delivered
            # first on resuming and the exit would be 130, not 143.
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err == f"Error: interrupted by SIGTERM during the model stage\n{REGENERATE_FIX}\n"  # no Log: line
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


# -- a second signal while the first is being handled ----------------------------------------------------------
# `timeout`, systemd and Kubernetes signal the whole process group, and `uv run` forwards the signal it got too:
# the tool sees two SIGTERMs a moment apart. The second used to abort the stop the first had started: a second
# `Error:` line, no result on stdout, and neither --report nor --junit-xml written.


def _stop_lines(signum: int, stage: str) -> str:
    """The whole stderr of an interrupted run (JSON mode): one Error: line, its Fix: if any, never a Log: line."""
    name = signal.Signals(signum).name
    if stage == "worker":
        return f"Error: interrupted by {name} during load; the worker process was stopped\n"
    return f"Error: interrupted by {name} during the model stage\n{REGENERATE_FIX}\n"


def _cli_for(stage: str, tiny_model: Path, tmp_path: Path) -> tuple[list[str], dict[str, str], Callable[[], bool]]:
    """The command, its environment, and when it is under way: the worker's load stage, or the parent's own
    stage (writing a large synthetic model, where the early worker waits)."""
    outputs = ["--json", "--report", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "j.xml")]
    if stage == "worker":
        ready = tmp_path / "ready"
        env = os.environ | {"KCUDA_TEST_FAULT": "hang:load", "KCUDA_TEST_FAULT_READY": str(ready)}

        def loading() -> bool:
            # The worker creates the file at its fault, just after it told the parent "load" started: give the
            # parent a moment to read that, or the stop names the stage before it ("during start").
            return ready.exists() and time.time() - ready.stat().st_mtime > 0.5

        return ["load", "--device", "cpu", "--model-path", str(tiny_model), *outputs], env, loading
    cache = tmp_path / "cache"
    env = os.environ | {"KCUDA_CACHE_DIR": str(cache)}

    def writing() -> bool:
        return any(p.name.endswith(".tmp") for p in cache.rglob("*"))

    return ["load", "--device", "cpu", "--synthetic", "6GiB", *outputs], env, writing


def _assert_stopped_once(
    proc: subprocess.Popen[bytes], out: str, err: str, signum: int, stage: str, tmp_path: Path
) -> None:
    code = 143 if signum == signal.SIGTERM else 130
    assert (proc.returncode, err) == (code, _stop_lines(signum, stage))
    doc = json.loads(out)  # stdout is still the one JSON document
    assert (doc["exit_code"], doc["interrupted"]) == (code, True)
    assert json.loads((tmp_path / "r.json").read_text())["interrupted"] is True
    junit = (tmp_path / "j.xml").read_text()
    assert "interrupted" in junit and "<testsuite" in junit


@pytest.mark.parametrize(
    ("stage", "first", "later"),
    [
        ("worker", signal.SIGTERM, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)),
        ("worker", signal.SIGINT, (signal.SIGINT, signal.SIGTERM, signal.SIGINT)),
        ("parent", signal.SIGTERM, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)),
    ],
)
def test_signals_while_the_stop_writes_the_result_do_not_abort_it(
    tiny_model: Path, tmp_path: Path, stage: str, first: signal.Signals, later: tuple[signal.Signals, ...]
) -> None:
    """Deterministic: the process is held at the point where it writes the result (its stdout is a full pipe;
    the report files come right after) and signalled there, again and again, then let go."""
    args, env, under_way = _cli_for(stage, tiny_model, tmp_path)
    read_end, write_end, filler = full_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", *args],
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(write_end)
    try:
        assert wait_for(lambda: under_way() or proc.poll() is not None, 60) and proc.poll() is None
        proc.send_signal(first)
        assert wait_for(lambda: blocked_writing(proc.pid, 1), 60), "the stop never reached the result"
        for signum in later:
            proc.send_signal(signum)  # (a no-op once the process has exited: a test failure, said below)
            time.sleep(0.2)  # each one handled on its own, none merged with the next
        # Still there, back in the same write once each handler returned (a loaded machine may take a moment).
        held = wait_for(lambda: proc.poll() is not None or blocked_writing(proc.pid, 1), 30) and proc.poll() is None
        with os.fdopen(read_end, "rb") as stdout:
            out = stdout.read()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert out[:filler] == b"#" * filler
    assert held, f"a later signal ended the stop: {err.decode()}"
    _assert_stopped_once(proc, out[filler:].decode(), err.decode(), first, stage, tmp_path)
    log = (tmp_path / "logs" / "kcuda-validate.log").read_text()
    assert f"ignored during the stop started by {first.name}: " in log  # the log says what was ignored


@pytest.mark.parametrize("gap_s", [0.0, 0.001, 0.003, 0.01, 0.03])
def test_two_sigterms_back_to_back_stop_the_run_once(tiny_model: Path, tmp_path: Path, gap_s: float) -> None:
    """What `timeout` under `uv run` does: the second SIGTERM lands somewhere in the stop the first started."""
    args, env, under_way = _cli_for("worker", tiny_model, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert wait_for(lambda: under_way() or proc.poll() is not None, 60) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        time.sleep(gap_s)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    _assert_stopped_once(proc, out.decode(), err.decode(), signal.SIGTERM, "worker", tmp_path)


def test_a_stop_whose_raise_was_lost_still_ends_the_next_wait_on_the_worker(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run lost the handler's exception inside a C extension's import (`_elementtree` importing `pyexpat`):
    the stop was marked started, so the later SIGTERMs were ignored, and the run waited on its hung worker for
    ever. Here a real SIGTERM's exception is swallowed the same way; the worker stage that follows still stops."""
    from kcuda_validate import signals
    from kcuda_validate.errors import Interrupted
    from kcuda_validate.isolation import Worker
    from kcuda_validate.llm.loader import LoadOptions
    from kcuda_validate.llm.measures import InferOptions
    from kcuda_validate.worker_protocol import WorkerRequest

    monkeypatch.setenv("KCUDA_TEST_FAULT", "hang:load")
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()  # as the CLI does at the start of a run
    try:
        with contextlib.suppress(Interrupted):  # what the C extension did with it
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert signals.stopping() == signal.SIGTERM
        started = time.monotonic()
        request = WorkerRequest(tiny_model, LoadOptions(cpu_mode=True, n_ctx=256), InferOptions(max_tokens=4), "")
        out = Worker(pin="").run(request, 120)
        assert out.interrupted is not None and out.interrupted.signum == signal.SIGTERM
        assert time.monotonic() - started < 30  # not the 120 s stage timeout: the wait ended at the stop
    finally:
        signals.reset()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# A real SIGINT, sent by the process to itself while the CLI's first heavy module is imported: the window
# before the error boundary installs its handlers (about 0.1 s after start, where a quick Ctrl-C lands).
CTRL_C_DURING_IMPORT = """
import importlib.abc, os, signal, sys
AT = sys.argv[1]
class CtrlCOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == AT:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCOnImport())
sys.argv = ["kcuda-validate", *sys.argv[2:]]
from kcuda_validate.entry import main
main()
"""


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("click", ["detect"]),  # the CLI's own import
        ("kcuda_validate.isolation", ["load", "--synthetic", "64MiB"]),  # the early worker's start
        ("kcuda_validate.cli", ["validate-all", "--device", "cpu"]),
    ],
)
def test_ctrl_c_before_the_boundary_is_one_line_not_a_traceback(module: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_IMPORT, module, *args], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, "Error: interrupted\n", "")
