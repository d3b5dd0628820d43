"""Crash isolation, timeouts and interrupts, by fault injection in the real worker (KCUDA_TEST_FAULT).

In every case: the documented exit code, a report that says what happened, and no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from procs import catches, held_while_writing, with_marker


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"kcuda-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("KCUDA_TEST_MARK", value)
    return value


def _run(tiny_model: Path, tmp_path: Path, *extra: str) -> tuple[Result, dict[str, Any], ET.Element]:
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = CliRunner().invoke(
        cli,
        ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "8", "--repeat", "1"]
        + ["--report", str(report), "--junit-xml", str(junit), *extra],
    )
    return result, json.loads(report.read_text()), ET.parse(junit).getroot()


@pytest.mark.parametrize(
    ("fault", "stage", "sig"),
    [("segv:load", "load", "SIGSEGV"), ("abort:infer", "infer", "SIGABRT")],
)
def test_native_crash_becomes_a_failed_check(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str, fault: str, stage: str, sig: str
) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", fault)
    result, doc, junit = _run(tiny_model, tmp_path)
    assert result.exit_code == ExitCode.CRASHED
    assert doc["exit_reason"] == "crashed" and doc["stopped_at"] == stage
    crash = next(c for c in doc["checks"] if c["id"] == f"{stage}.crash")
    assert crash["status"] == "fail"
    assert crash["evidence"]["signal"] == sig
    assert any("injected fault" in line for line in crash["evidence"]["log_tail"])
    assert crash["fix"]
    assert sig in result.stdout and "injected fault" in result.stdout
    failures = [tc for tc in junit.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failures] == [f"{stage}.crash: {stage.capitalize()} stage"]
    if stage == "infer":  # the load before the crash still counts
        assert any(c["id"] == "load.model" and c["status"] == "pass" for c in doc["checks"])
    assert with_marker(marker) == []


def test_hang_is_killed_at_the_timeout(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", "hang:load")
    start = time.monotonic()
    result, doc, _ = _run(tiny_model, tmp_path, "--timeout", "2")
    assert time.monotonic() - start < 30
    assert result.exit_code == ExitCode.TIMEOUT
    check = next(c for c in doc["checks"] if c["id"] == "load.timeout")
    assert "did not finish within 2 s" in check["summary"]
    assert with_marker(marker) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_the_worker_and_writes_a_partial_report(
    tiny_model: Path, tmp_path: Path, marker: str, signum: int, code: int
) -> None:
    report = tmp_path / "report.json"
    ready = tmp_path / "worker-at-load"
    env = os.environ | {"KCUDA_TEST_FAULT": "hang:load", "KCUDA_TEST_FAULT_READY": str(ready)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", "validate-all", "--device", "cpu"]
        + ["--model-path", str(tiny_model), "--report", str(report), "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Wait until the worker is hanging in its load stage (a fixed sleep raced on a busy machine).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ready.exists():
        time.sleep(0.05)
    assert ready.exists(), "the worker never reached its load stage"
    assert catches(proc.pid, signum), "the CLI does not catch the signal (suite started with it ignored?)"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: interrupted by {name} during load; the worker process was stopped"]
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True
    assert doc["exit_code"] == code
    check = next(c for c in doc["checks"] if c["id"] == "load.interrupted")
    name = signal.Signals(signum).name
    assert check["summary"] == f"interrupted by {name} during load; the worker process was stopped"
    assert with_marker(marker) == []
    assert report.stat().st_mode & 0o777 == 0o666 & ~_umask()  # a normal file, not mkstemp's 0600


def test_worker_exit_without_result_is_reported(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", "exit:infer")
    result, doc, _ = _run(tiny_model, tmp_path)
    assert result.exit_code == ExitCode.CRASHED
    crash = next(c for c in doc["checks"] if c["id"] == "infer.crash")
    assert "status 3" in crash["summary"]
    assert with_marker(marker) == []


def test_a_real_ggml_abort_keeps_its_assert_line_in_the_crash_report(tiny_model: Path, tmp_path: Path) -> None:
    """A negative norm epsilon (the header check refuses it; the worker is driven directly here) makes ggml abort
    at the first decode. Its reason is one line; without GGML_NO_BACKTRACE the gdb backtrace after it filled the
    whole kept tail, so the report showed only debugger noise."""
    from gguf_rewrite import rewrite_model
    from kcuda_validate.isolation import Worker
    from kcuda_validate.llm.inference import InferOptions
    from kcuda_validate.llm.loader import LoadOptions
    from kcuda_validate.worker_protocol import WorkerRequest

    bad = rewrite_model(tiny_model, tmp_path / "eps.gguf", fields={"llama.attention.layer_norm_rms_epsilon": -1.0})
    request = WorkerRequest(bad, LoadOptions(cpu_mode=True, n_ctx=256), InferOptions(max_tokens=4, repeat=1), "")
    out = Worker(pin="").run(request, 120)
    assert out.crash is not None and out.crash.signal == "SIGABRT", out
    assert any(line.endswith("GGML_ASSERT(eps >= 0.0f) failed") for line in out.crash.log_tail), out.crash.log_tail
    assert not any(line.startswith("#") or "ptrace" in line for line in out.crash.log_tail), out.crash.log_tail


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_while_getting_the_model_leaves_no_partial_file_and_a_report(
    tmp_path: Path, signum: int, code: int
) -> None:
    """Interrupted in the parent's own stage (here: generating a large synthetic model), not in the worker."""
    cache, report = tmp_path / "cache", tmp_path / "report.json"
    env = os.environ | {"KCUDA_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", "load", "--device", "cpu", "--synthetic", "6GiB"]
        + ["--report", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    with held_while_writing(proc, cache):
        assert catches(proc.pid, signum), "the CLI does not catch the signal (suite started with it ignored?)"
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True
    assert doc["stopped_at"] == "model"
    assert any(c["id"] == "model.interrupted" for c in doc["checks"])
    assert f"interrupted by {signal.Signals(signum).name}" in err
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []


@pytest.mark.parametrize("pinned", ["1", ""])
def test_worker_never_imports_numpy_before_llama_cpp(pinned: str) -> None:
    """On an H100 box, numpy 2.5 loaded before a CUDA build of llama.cpp made the first model load segfault."""
    probe = """
import sys
started = []  # import start order: a finder that only records
class Record:
    def find_spec(self, name, path=None, target=None):
        started.append(name)
sys.meta_path.insert(0, Record())
from kcuda_validate import worker
worker._preload()
lc = started.index("llama_cpp") if "llama_cpp" in started else None
np = started.index("numpy") if "numpy" in started else None
print(np is None or (lc is not None and lc < np), lc is not None)
"""
    env = {**os.environ, "KCUDA_WORKER_PIN": pinned}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "True" if pinned else "False"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
