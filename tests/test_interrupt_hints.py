"""What an interrupt in the parent's own model stage says to do next: only a Hub download has a part kept.

The old hint said "a partial download is kept: run again to resume" after an interrupt during synthetic
generation, a local file's header read or a wait on a FIFO, where nothing was downloaded; and after an interrupt
of a Hub download before its first byte (a Hub slow to answer), where nothing was written either. The Hub's hint
now names a partial only when the cache holds one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kcuda_validate.cli._output import Output, OutputOptions
from kcuda_validate.logs import log_path, setup_logging
from kcuda_validate.model.hub_transfer import partial_path
from kcuda_validate.model.source import ModelSpec
from kcuda_validate.pipeline import ModelValidation, hub_partial_kept, interrupt_hint
from kcuda_validate.verdicts import StageVerdict, interrupted
from procs import held_while_writing, wait_for

RESUME = "A partial download is kept: run the same command again to resume it."
NOTHING_DOWNLOADED = "Nothing partial is kept: run the same command again to download the model."
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
    ("spec", "activity", "kept", "hint"),
    [
        (ModelSpec(repo_id="Qwen/x", filename="m.gguf"), "hub", True, RESUME),
        (ModelSpec(repo_id="Qwen/x", filename="m.gguf"), "hub", False, NOTHING_DOWNLOADED),  # no byte yet
        (ModelSpec(), "hub", True, RESUME),  # the default model comes from the Hub
        (ModelSpec(synthetic="1GiB"), "synthetic", False, REGENERATE),
        (ModelSpec(model_path=Path("m.gguf")), "local", False, AGAIN),  # a local file (or a FIFO): nothing fetched
        (ModelSpec(repo_id="Qwen/x", filename="m.gguf"), None, False, AGAIN),  # after the download: header, fit...
    ],
)
def test_the_hint_follows_what_was_under_way(
    spec: ModelSpec, activity: str | None, kept: bool, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if activity is not None:
        assert spec.origin == activity
    setup_logging()  # a log file exists (as in a real run), and is still not named
    assert log_path() is not None
    verdicts: list[StageVerdict] = []
    ModelValidation(Output(OutputOptions(json=True)), verdicts).keep(
        interrupted("model", signal.SIGINT, fix=interrupt_hint(activity, kept))
    )
    assert verdicts[-1].checks[-1].fix == hint
    assert capsys.readouterr().err == f"Error: interrupted by SIGINT during the model stage\nFix: {hint}\n"


# --- an interrupt of a Hub download: a real console script, a real (slow) Hub on 127.0.0.1 ----------------------

REPO_ID, FILENAME = "acme/Tiny-GGUF", "m.gguf"
CONTENT = b"GGUF" + bytes(range(256)) * 256  # 64 KiB + 4
SHA = hashlib.sha256(CONTENT).hexdigest()
HALF = len(CONTENT) // 2


class SlowHub(ThreadingHTTPServer):
    """Answers /resolve as the Hub does (commit, linked etag and size), but slowly: `answer_head` False holds the
    HEAD unanswered; True answers it, then the GET sends half the file and holds the rest. `asked` is set when
    the held request arrives; `release` ends the hold."""

    daemon_threads = True

    def __init__(self, answer_head: bool) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.answer_head = answer_head
        self.asked = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the interrupted client hangs up mid-response


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowHub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _headers(self) -> None:
        self.send_response(200)
        for k, v in {
            "X-Repo-Commit": "0123456789abcdef0123456789abcdef01234567",
            "X-Linked-Etag": f'"{SHA}"',
            "X-Linked-Size": str(len(CONTENT)),
            "ETag": f'"{SHA}"',
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(CONTENT)),
        }.items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self) -> None:
        if not self.server.answer_head:
            self.server.asked.set()
            self.server.release.wait(30)
            return
        self._headers()

    def do_GET(self) -> None:
        self._headers()
        self.wfile.write(CONTENT[:HALF])
        self.wfile.flush()
        self.server.asked.set()
        self.server.release.wait(30)


@pytest.fixture
def slow_hub(request: pytest.FixtureRequest) -> Iterator[SlowHub]:
    server = SlowHub(answer_head=request.param)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _load_from(hub: SlowHub, home: Path, report: Path) -> subprocess.Popen[str]:
    """`load` of REPO_ID/FILENAME from `hub`, as a person runs it (SIGINT at its default disposition)."""
    home.mkdir()
    # A copy younger than a day: huggingface_hub then asks the endpoint for nothing but the file.
    (home / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
    exe = Path(sys.executable).parent / "kcuda-validate"
    args = ["load", "--device", "cpu", "--repo-id", REPO_ID, "--filename", FILENAME, "--report", str(report)]
    return subprocess.Popen(
        [str(exe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "NO_PROXY": "*"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _interrupted_fix(proc: subprocess.Popen[str], report: Path) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    check = next(c for c in json.loads(report.read_text())["checks"] if c["id"] == "model.interrupted")
    assert check["fix"] == err.splitlines()[-1].removeprefix("Fix: "), err
    return err


@pytest.mark.parametrize("slow_hub", [False], indirect=True)
def test_an_interrupt_before_the_hub_answers_says_nothing_was_kept(slow_hub: SlowHub, tmp_path: Path) -> None:
    """The reviewer's case: SIGINT while the Hub has not answered the HEAD. Nothing was written, and the hint
    used to say a partial download was kept."""
    home, report = tmp_path / "hf", tmp_path / "report.json"
    proc = _load_from(slow_hub, home, report)
    try:
        assert slow_hub.asked.wait(60), proc.communicate()
        err = _interrupted_fix(proc, report)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert err == f"Error: interrupted by SIGINT during the model stage\nFix: {NOTHING_DOWNLOADED}\n"
    assert not (home / "hub").exists()  # truly nothing: no cache folder either


@pytest.mark.parametrize("slow_hub", [True], indirect=True)
def test_an_interrupt_mid_download_says_the_partial_is_kept_and_it_is(slow_hub: SlowHub, tmp_path: Path) -> None:
    home, report = tmp_path / "hf", tmp_path / "report.json"
    storage = home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    partial = partial_path(storage, SHA, FILENAME)
    proc = _load_from(slow_hub, home, report)
    try:
        assert slow_hub.asked.wait(60), proc.communicate()
        # Half the file is sent: signal once some of it is on disk (the rest may still be in the file's buffer).
        assert wait_for(lambda: partial.is_file() and partial.stat().st_size > 0, 30), proc.communicate()
        err = _interrupted_fix(proc, report)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert err == f"Error: interrupted by SIGINT during the model stage\nFix: {RESUME}\n"
    kept = partial.read_bytes()
    assert kept and CONTENT.startswith(kept)  # what had come in when the signal landed, for the next run to resume


def test_a_partial_is_kept_only_when_the_cache_holds_bytes_of_that_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Hub hint asks of the cache: a partial of the model (any part of a split one), not empty, not another
    file's."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    split = ModelSpec(repo_id=REPO_ID, filename="m-00001-of-00002.gguf")
    whole = ModelSpec(repo_id=REPO_ID, filename=FILENAME)
    assert not hub_partial_kept(whole)  # no cache at all
    storage = cache / ("models--" + REPO_ID.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True)
    partial_path(storage, SHA, FILENAME).write_bytes(b"")
    assert not hub_partial_kept(whole)  # an empty file holds nothing to resume
    partial_path(storage, SHA, "other.gguf").write_bytes(b"GGUF")
    assert not hub_partial_kept(whole)  # another file's partial
    partial_path(storage, SHA, FILENAME).write_bytes(b"GGUF")
    assert hub_partial_kept(whole)
    assert not hub_partial_kept(split)
    partial_path(storage, "ab" * 32, "m-00002-of-00002.gguf").write_bytes(b"GGUF")
    assert hub_partial_kept(split)  # the second part's partial counts for the model


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
