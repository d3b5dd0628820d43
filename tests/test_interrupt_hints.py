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
from kcuda_validate.model.source import ModelSpec
from kcuda_validate.pipeline import ModelValidation, interrupt_hint
from kcuda_validate.verdicts import StageVerdict, interrupted

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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.endswith(".tmp") for p in cache.rglob("*")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.splitlines()
    assert lines[:2] == ["Error: interrupted by SIGINT during the model stage", f"Fix: {REGENERATE}"], err
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
    verdicts: list[StageVerdict] = []
    ModelValidation(Output(OutputOptions(json=True)), verdicts).keep(
        interrupted("model", signal.SIGINT, fix=interrupt_hint(activity))
    )
    assert verdicts[-1].checks[-1].fix == hint
    assert capsys.readouterr().err.splitlines()[:2] == [
        "Error: interrupted by SIGINT during the model stage",
        f"Fix: {hint}",
    ]
