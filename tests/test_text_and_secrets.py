"""Whatever text or number comes in, what goes out is valid and holds no secret (issue 13, classes 5 and 6).

Through the real console script in a subprocess: argv with bytes that are not UTF-8 (as a shell passes
`$'\\xff\\xfe'`), paths with such bytes or with rich markup in them, NaN and infinities for every float
option, HF_ENDPOINT with credentials pointing at a closed port and at a server that accepts and never
answers, and a log that cannot be written. The Hub itself is never contacted.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.cli._common import FiniteFloatRange
from kcuda_validate.model.hub import DEFAULT_FILENAME, DEFAULT_REPO_ID

EXE = Path(sys.executable).parent / "kcuda-validate"
USER, PASSWORD, QUERY_TOKEN = "kcuda-user", "pw-Sup3rSecretValue", "qtok-Sup3rSecretValue"
HF_TOKEN = "hf_kcudaTestSecretTokenValue0123456789"
SECRETS = (PASSWORD, QUERY_TOKEN, HF_TOKEN)
UNREACHABLE_FIX = (
    "Fix: check your network/proxy, or set HF_HUB_OFFLINE=1 to use the cache, or pass --model-path / --synthetic"
)
PROMPT_FIX = "Fix: Pass the prompt as UTF-8 text (check the encoding of the terminal or script that sends it)."


def run(
    args: list[str | bytes], env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script, argv passed as given (bytes reach the tool as a shell would pass them)."""
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        errors="strict",  # what the tool writes must be valid UTF-8
        timeout=timeout,
        cwd=cwd,
        env=(env or dict(os.environ)) | {"COLUMNS": "100"},
    )


def log_text(isolated_env: Path) -> str:
    return (isolated_env / "logs" / "kcuda-validate.log").read_text(encoding="utf-8")


def strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity, as any other JSON parser does."""

    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------------------------------------------
# Text: bytes that are not UTF-8


@pytest.mark.parametrize(
    ("args", "name"),
    [(["infer", b"\xff\xfe"], "prompt"), (["infer", "--prompt", b"ok \xff\xfe"], "--prompt")],
    ids=["argument", "option"],
)
def test_prompt_that_is_not_utf8_is_a_usage_error(isolated_env: Path, args: list[str | bytes], name: str) -> None:
    offset = 0 if name == "prompt" else 3
    proc = run([*args, "--device", "cpu", "--synthetic", "4MiB", "--json"])

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"Error: {name}: not valid UTF-8 text (byte 0xff at offset {offset})\n{PROMPT_FIX}\n"
    log = log_text(isolated_env)
    assert "start: kcuda-validate infer " + ("\\xff\\xfe" if name == "prompt" else "--prompt ok \\xff\\xfe") in log
    assert "usage" in log or "error" in log


def test_path_that_is_not_utf8_is_named_in_every_output(isolated_env: Path, tmp_path: Path) -> None:
    """The path is shown with the byte spelled out, in stderr, the JSON, --report and the log; no traceback."""
    missing = os.fsencode(tmp_path) + b"/model-\xff.gguf"
    shown = f"{tmp_path}/model-\\xff.gguf"
    report = tmp_path / "r.json"
    proc = run(["load", "--device", "cpu", "--model-path", missing, "--json", "--report", str(report)])

    assert proc.returncode == 5
    assert proc.stderr == (
        f"Error: {shown}: no such file\nFix: Check the path passed to --model-path.\n"
        f"Log: {isolated_env / 'logs' / 'kcuda-validate.log'}\n"
    )
    doc = strict_json(proc.stdout)
    assert isinstance(doc, dict)
    assert doc["argv"] == ["load", "--device", "cpu", "--model-path", shown, "--json", "--report", str(report)]
    assert [c["summary"] for c in doc["checks"] if c["id"] == "model.source"] == [f"{shown}: no such file"]
    assert strict_json(report.read_text(encoding="utf-8")) == doc
    log = log_text(isolated_env)
    assert f"check FAIL model.source: {shown}: no such file" in log
    assert "Logging error" not in proc.stderr + log


def test_model_whose_name_is_not_utf8_loads(tiny_model: Path, tmp_path: Path) -> None:
    """Linux file names are bytes: llama-cpp-python's strict UTF-8 encoding of the path must not fail the load."""
    model = os.fsencode(tmp_path) + b"/model-\xff.gguf"
    os.symlink(tiny_model, model)
    shown = f"{tmp_path}/model-\\xff.gguf"
    proc = run(["load", "--device", "cpu", "--model-path", model, "--json"])
    assert proc.returncode == 0, proc.stderr
    doc = strict_json(proc.stdout)
    assert isinstance(doc, dict)
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["load.offload"]["status"] == "skip"  # a CPU run: loaded, 0 layers offloaded by request
    assert checks["load.offload"]["summary"].startswith("CPU run: 0/")
    text = proc.stdout.replace("\\\\", "\\")  # JSON doubles the backslash of the spelled-out byte
    assert shown in text and "/proc/self/fd" not in text  # the report names the user's path, not the fd


def test_path_with_control_characters_is_spelled_out_on_one_line_everywhere(isolated_env: Path, tmp_path: Path) -> None:
    """A newline, an ESC sequence and a tab in a path: each output line stays one line, and no escape sequence
    reaches the terminal or the log; the JSON keeps the real path (JSON escapes it itself)."""
    path = "no\nsuch\x1b[31m\t.gguf"
    shown = "no\\nsuch\\x1b[31m\\t.gguf"
    proc = run(["load", "--device", "cpu", "--model-path", path], cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr == (
        f"Error: {shown}: no such file\nFix: Check the path passed to --model-path.\n"
        f"Log: {isolated_env / 'logs' / 'kcuda-validate.log'}\n"
    )
    assert f"FAIL   Model source    {shown}: no such file" in proc.stdout
    assert (
        f"FAIL Model source: {shown}: no such file\n     fix: Check the path passed to --model-path.\n" in proc.stdout
    )
    assert "\x1b" not in proc.stdout + proc.stderr
    log = log_text(isolated_env)
    assert f"check FAIL model.source: {shown}: no such file | fix: Check the path passed to --model-path.\n" in log
    assert "\x1b" not in log and "\t" not in log
    doc = strict_json(run(["load", "--device", "cpu", "--model-path", path, "--json"], cwd=tmp_path).stdout)
    assert isinstance(doc, dict)
    assert [c["summary"] for c in doc["checks"] if c["id"] == "model.source"] == [f"{path}: no such file"]


def test_path_with_markup_in_it_is_shown_verbatim(tmp_path: Path) -> None:
    """rich must not read a path as markup (`[/x]` was a MarkupError, exit 70) nor eat `[bold]` from it."""
    for path in ("[/x].gguf", "[bold]y.gguf"):
        proc = run(["load", "--device", "cpu", "--model-path", path], cwd=tmp_path)
        assert proc.returncode == 5, proc.stderr
        assert f"FAIL   Model source    {path}: no such file" in proc.stdout
        assert (
            f"FAIL Model source: {path}: no such file\n     fix: Check the path passed to --model-path.\n"
            in proc.stdout
        )


# ----------------------------------------------------------------------------------------------------------------
# Numbers: NaN and infinities


def _float_options() -> list[tuple[str, str]]:
    found = []
    for name, command in sorted(cli.commands.items()):
        for p in command.params:
            if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType):
                found.append((name, p.opts[0]))
    return found


def test_every_float_option_is_finite_checked() -> None:
    options = _float_options()
    assert ("infer", "--temperature") in options and ("validate-all", "--min-gen-tps") in options
    for name, opt in options:
        command = cli.commands[name]
        param = next(p for p in command.params if isinstance(p, click.Option) and p.opts[0] == opt)
        assert isinstance(param.type, FiniteFloatRange), f"{name} {opt} accepts NaN"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize(("command", "option"), _float_options())
def test_float_options_refuse_nan_and_infinities(command: str, option: str, value: str) -> None:
    result = CliRunner().invoke(cli, [command, option, value, "--json"])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: cli {command}: Invalid value for '{option}': '{value}' is not a finite number.\n"
        f"Fix: See `cli {command} --help`.\n"
    )


def test_finite_values_still_range_checked() -> None:
    result = CliRunner().invoke(cli, ["infer", "--temperature", "9", "--json"])
    assert result.exit_code == 2
    assert "Invalid value for '--temperature': 9.0 is not in the range 0<=x<=5." in result.stderr


def test_json_writer_never_writes_nan(tmp_path: Path) -> None:
    """The backstop: a figure that came out NaN is null in the JSON (and n/a on screen), never a bare NaN."""
    import io

    from kcuda_validate.checks import Metric, passed
    from kcuda_validate.cli._output import Output, OutputOptions
    from kcuda_validate.report import Report

    report = Report("infer", argv=["infer"])
    report.add(passed("load.model", "load", "Model load", "loaded"))
    report.add_metrics([Metric("gen_tps", math.nan, "tokens/s", "perf"), Metric("load_time", math.inf, "s", "wall")])
    out = io.StringIO()
    Output(OutputOptions(json=True, report_path=tmp_path / "r.json"), stdout=out, stderr=io.StringIO()).result(report)

    doc = strict_json(out.getvalue())
    assert isinstance(doc, dict)
    assert {name: m["value"] for name, m in doc["metrics"].items()} == {"gen_tps": None, "load_time": None}
    assert strict_json((tmp_path / "r.json").read_text()) == doc


# ----------------------------------------------------------------------------------------------------------------
# Secrets: credentials in HF_ENDPOINT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A real TCP server in a thread that accepts every connection and never answers (dead proxy, firewall)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read, never answered

    thread = threading.Thread(target=accept, name="silent-hub", daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def hub_env(isolated_env: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    return env | {
        "HF_ENDPOINT": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/?token={QUERY_TOKEN}",
        "HF_TOKEN": HF_TOKEN,
        "HF_HOME": str(isolated_env / "hf"),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        assert f"{USER}:" not in text


@pytest.mark.parametrize("mode", [[], ["--json"], ["-vv"], ["--debug"]], ids=["human", "json", "vv", "debug"])
def test_credentials_in_hf_endpoint_are_never_shown(isolated_env: Path, tmp_path: Path, mode: list[str]) -> None:
    port = _free_port()  # closed: connection refused
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    proc = run(
        ["load", "--device", "cpu", *mode, "--report", str(report), "--junit-xml", str(junit)],
        env=hub_env(isolated_env, port),
    )

    assert proc.returncode == 11, proc.stderr
    message = f"cannot reach 127.0.0.1:{port} (connection refused) to fetch {DEFAULT_REPO_ID}/{DEFAULT_FILENAME} @ main"
    if mode != ["--debug"]:
        assert (
            proc.stderr == f"Error: {message}\n{UNREACHABLE_FIX}\nLog: {isolated_env / 'logs' / 'kcuda-validate.log'}\n"
        )
    else:
        assert message in proc.stderr  # with the traceback, itself made safe
    if mode == ["--json"]:
        doc = strict_json(proc.stdout)
        assert isinstance(doc, dict)
        assert [c["summary"] for c in doc["checks"] if c["id"] == "model.source"] == [message]
    log = log_text(isolated_env)
    assert f"check FAIL model.source: {message}" in log
    assert_no_secret(proc.stdout, proc.stderr, log, report.read_text(), junit.read_text())


def _fix_list(stdout: str) -> list[str]:
    """The lines after the table: each failure and warning with its fix, then the verdict."""
    lines = stdout.splitlines()
    return lines[lines.index("") + 1 :]


def test_validate_all_names_an_unreachable_hub_once_in_its_fix_list(isolated_env: Path) -> None:
    """detect's Hub check forecasts the failure the model stage then has: one cause, one fix line."""
    port = _free_port()
    proc = run(["validate-all", "--device", "cpu", "--skip-torch"], env=hub_env(isolated_env, port), timeout=60)

    assert proc.returncode == 11, proc.stderr
    message = f"cannot reach 127.0.0.1:{port} (connection refused) to fetch {DEFAULT_REPO_ID}/{DEFAULT_FILENAME} @ main"
    assert "WARN   Hugging Face Hub access" in proc.stdout  # the forecast stays in the table
    assert _fix_list(proc.stdout) == [
        f"FAIL Model source: {message}",
        f"     {UNREACHABLE_FIX.replace('Fix: ', 'fix: ')}",
        "FAILED at model: Hugging Face Hub unreachable (exit 11)",
    ]


def test_validate_all_offline_without_the_model_gives_its_fix_once(isolated_env: Path) -> None:
    env = hub_env(isolated_env, _free_port()) | {"HF_HUB_OFFLINE": "1"}
    proc = run(["validate-all", "--device", "cpu", "--skip-torch"], env=env, timeout=60)

    assert proc.returncode == 10, proc.stderr
    assert _fix_list(proc.stdout) == [
        f"FAIL Model source: {DEFAULT_REPO_ID}/{DEFAULT_FILENAME} @ main: not in the Hub cache "
        f"{isolated_env / 'hf' / 'hub'} and offline mode is on (HF_HUB_OFFLINE=1)",
        "     fix: Unset HF_HUB_OFFLINE to download, or pass --model-path / --synthetic.",
        "FAILED at model: model not found (exit 10)",
    ]


def test_hub_that_never_answers_fails_within_five_seconds(isolated_env: Path, silent_server: int) -> None:
    """Accepts, then silence. Configured for 4 s + start-up (5.4 s before); the bound here is loose for loaded CI."""
    start = time.monotonic()
    proc = run(["load", "--device", "cpu", "--json"], env=hub_env(isolated_env, silent_server), timeout=30)
    elapsed = time.monotonic() - start

    assert proc.returncode == 11
    assert proc.stderr == (
        f"Error: cannot reach 127.0.0.1:{silent_server} (no answer within 4 s) to fetch "
        f"{DEFAULT_REPO_ID}/{DEFAULT_FILENAME} @ main\n"
        f"{UNREACHABLE_FIX} (on a slow link, raise HF_HUB_ETAG_TIMEOUT, in seconds)\n"
        f"Log: {isolated_env / 'logs' / 'kcuda-validate.log'}\n"
    )
    assert elapsed < 8
    assert_no_secret(proc.stdout, proc.stderr, log_text(isolated_env))


# ----------------------------------------------------------------------------------------------------------------
# A log that cannot be written


def test_unwritable_log_dir_is_said_once_and_the_run_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = dict(os.environ) | {"KCUDA_LOG_DIR": str(blocker / "logs")}
    proc = run(["load", "--device", "cpu", "--model-path", str(tmp_path / "none.gguf"), "--json"], env=env)

    assert proc.returncode == 5
    assert proc.stderr == (
        f"Warning: cannot write the log in {blocker / 'logs'} (Not a directory); this run continues without a log"
        " (set KCUDA_LOG_DIR to change where)\n"
        f"Error: {tmp_path / 'none.gguf'}: no such file\nFix: Check the path passed to --model-path.\n"
    )
    assert strict_json(proc.stdout)


def test_log_that_fails_mid_run_is_said_once(tmp_path: Path) -> None:
    """A full disk under the log (the log file is /dev/full): one line, no logging traceback per record."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "kcuda-validate.log").symlink_to("/dev/full")
    env = dict(os.environ) | {"KCUDA_LOG_DIR": str(logs)}
    proc = run(["load", "--device", "cpu", "--model-path", str(tmp_path / "none.gguf")], env=env)

    assert proc.returncode == 5
    assert proc.stderr == (
        f"Warning: cannot write the log file {logs / 'kcuda-validate.log'} (No space left on device); this run"
        " continues without a log (set KCUDA_LOG_DIR to change where)\n"
        f"Error: {tmp_path / 'none.gguf'}: no such file\nFix: Check the path passed to --model-path.\n"
    )
    assert "FAILED at model: model file invalid (exit 5)" in proc.stdout


def test_streamed_model_text_cannot_drive_the_terminal() -> None:
    """A model can generate ESC, CR or BEL; on stdout they arrive spelled out, its newlines and tabs as they are."""
    import io

    from kcuda_validate.cli._output import Output, OutputOptions

    out, err = io.StringIO(), io.StringIO()
    sink = Output(OutputOptions(), stdout=out, stderr=err)
    for piece in ["Hello", "\x1b]0;pwned\x07", " \x1b[2J", "line\n\tnext", "\rgone"]:
        sink.stream(piece)
    sink.end_stream()
    assert out.getvalue() == "Hello\\x1b]0;pwned\\x07 \\x1b[2Jline\n\tnext\\rgone\n"
    assert err.getvalue() == ""


@pytest.fixture
def echoing_server() -> Iterator[int]:
    """A real HTTP server that rejects every request and echoes the Authorization header it got, as some proxies
    and misconfigured mirrors do in their error text."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def _reject(self) -> None:
            self.send_response(401)
            self.send_header("X-Error-Message", f"bad token {self.headers.get('Authorization', '')}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = _reject

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, name="echo-hub", daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(2)


def test_basic_credentials_a_server_echoes_are_never_shown(isolated_env: Path, echoing_server: int) -> None:
    import base64

    env = hub_env(isolated_env, echoing_server)
    proc = run(["load", "--device", "cpu", "--repo-id", "a/b", "--filename", "m.gguf"], env=env)
    assert proc.returncode == 12, proc.stderr
    rejected = "Error: the Hub rejected your token for repo 'a/b' (HTTP 401: bad token "
    assert proc.stderr.startswith(rejected), proc.stderr
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    log = log_text(isolated_env)
    for text in (proc.stdout, proc.stderr, log):
        assert basic not in text and basic.rstrip("=") not in text
    assert_no_secret(proc.stdout, proc.stderr, log)


def test_a_url_given_as_model_path_is_named_as_one_without_its_credentials(isolated_env: Path) -> None:
    url = f"https://{USER}:{PASSWORD}@example.com/m.gguf?token={QUERY_TOKEN}"
    proc = run(["load", "--device", "cpu", "--model-path", url])
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.splitlines()[:2] == [
        "Error: https:/***@example.com/m.gguf?token=***: no such file (--model-path takes a local file, not a URL)",
        "Fix: Download the file and pass its path, or use --repo-id/--filename for a Hugging Face model.",
    ]
    assert_no_secret(proc.stdout, proc.stderr, log_text(isolated_env))
