"""What an interrupt in the parent's own model stage says to do next: only a Hub download has a part kept.

The old hint said "a partial download is kept: run again to resume" after an interrupt during synthetic
generation, a local file's header read or a wait on a FIFO, where nothing was downloaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcuda_validate.cli._output import Output, OutputOptions
from kcuda_validate.logs import log_path, setup_logging
from kcuda_validate.model.source import ModelSpec
from kcuda_validate.pipeline import ModelValidation, interrupt_hint
from kcuda_validate.verdicts import StageVerdict, interrupted
from procs import held_while_writing

RESUME = "A partial download is kept: run the same command again to resume it."
REGENERATE = "Nothing partial is kept: run the same command again to generate the synthetic model."
AGAIN = "Run the command again."


def test_an_interrupt_while_generating_a_synthetic_model_does_not_promise_a_download(tmp_path: Path) -> None:
    """A real SIGINT to the real console script while it writes a large synthetic model."""
    cache, report = tmp_path / "cache", tmp_path / "report.json"
    exe = Path(sys.executable).parent / "kcuda-validate"
    proc = subprocess.Popen(
        [str(exe), "load", "--device", "cpu", "--synthetic", "6GiB", "--report", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"KCUDA_CACHE_DIR": str(cache)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # an ignored SIGINT is inherited
    )
    with held_while_writing(proc, cache):
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # The whole of stderr: an interrupt names no log file (specs/cli.md), only the stop and what to do next.
    assert err == f"Error: interrupted by SIGINT during the model stage\nFix: {REGENERATE}\n"
    check = next(c for c in json.loads(report.read_text())["checks"] if c["id"] == "model.interrupted")
    assert (check["summary"], check["fix"]) == ("interrupted by SIGINT during model", REGENERATE)


@pytest.mark.parametrize(
    ("spec", "activity", "hint"),
    [
        (ModelSpec(repo_id="Qwen/x", filename="m.gguf"), "hub", RESUME),
        (ModelSpec(), "hub", RESUME),  # the default model comes from the Hub
        (ModelSpec(synthetic="1GiB"), "synthetic", REGENERATE),
        (ModelSpec(model_path=Path("m.gguf")), "local", AGAIN),  # a local file (or a FIFO): nothing fetched
        (ModelSpec(repo_id="Qwen/x", filename="m.gguf"), None, AGAIN),  # after the download: header, fit...
    ],
)
def test_the_hint_follows_what_was_under_way(
    spec: ModelSpec, activity: str | None, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if activity is not None:
        assert spec.origin == activity
    setup_logging()  # a log file exists (as in a real run), and is still not named
    assert log_path() is not None
    verdicts: list[StageVerdict] = []
    ModelValidation(Output(OutputOptions(json=True)), verdicts).keep(
        interrupted("model", signal.SIGINT, fix=interrupt_hint(activity))
    )
    assert verdicts[-1].checks[-1].fix == hint
    assert capsys.readouterr().err == f"Error: interrupted by SIGINT during the model stage\nFix: {hint}\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_inference_prints_no_log_line(tiny_model: Path, tmp_path: Path, signum: int) -> None:
    """The QA case: `timeout -s INT` (or SIGTERM) during `infer`, human output. The Error: line used to be
    followed by `Log: <file>`, which specs/cli.md leaves out for an interrupt."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", "infer", "--device", "cpu", "--model-path", str(tiny_model), "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"KCUDA_TEST_FAULT": "hang:infer", "KCUDA_TEST_FAULT_READY": str(ready)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ready.exists() and proc.poll() is None:
            time.sleep(0.02)
        assert ready.exists(), proc.communicate()
        time.sleep(0.5)  # the worker said "infer" started just before its fault: let the parent read that
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    name = signal.Signals(signum).name
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), err
    assert err == f"Error: interrupted by {name} during infer; the worker process was stopped\n"
    assert f"interrupted by {name} during infer" in out  # the result table still says so
