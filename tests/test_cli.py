"""The command line as users and scripts see it: help, version, usage errors, exit codes, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fakes.hardware import install
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from machine import driver_present

COMMANDS = ["detect", "setup", "load", "infer", "validate-all", "health", "fleet", "exit-codes"]


def invoke(*args: str, **kw: object) -> object:
    return CliRunner().invoke(cli, list(args), **kw)


def test_every_command_has_help_text() -> None:
    for name, command in cli.commands.items():
        assert command.help and len(command.help.strip()) > 20, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"
    result = invoke("--help")
    assert result.exit_code == 0
    assert sorted(cli.commands) == sorted(COMMANDS)  # a new command joins the list, and its help is checked
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name: str) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert f"Usage: cli {name}" in result.output or f"Usage: kcuda-validate {name}" in result.output


def test_version_names_the_stack() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("kcuda-validate 0.")
    text = result.output
    for pkg in ("llama-cpp-python", "torch", "nvidia-ml-py", "huggingface-hub"):
        assert pkg in text
    if driver_present():
        assert re.search(r"nvidia driver \d+\.\d+", text), text
    else:  # no driver: the version output says so instead of failing
        assert "nvidia driver not found (library not found)" in text


@pytest.mark.parametrize("args", [("--json", "--version"), ("--version", "--json"), ("--json", "--version", "detect")])
def test_version_as_json_says_what_the_text_says(args: tuple[str, ...]) -> None:
    """`--version` is eager; `--json` after it must still be honoured, and a command name after it is not run."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    text = invoke("--version").output
    assert doc["tool"] == "kcuda-validate"
    assert text.splitlines()[0] == f"kcuda-validate {doc['version']}"
    for name, version in doc["packages"].items():
        assert f"  {name} {version or 'not installed'}" in text.splitlines()
    if driver_present():
        assert doc["nvidia_driver"]["found"] is True
    else:
        assert doc["nvidia_driver"] == {
            "found": False,
            "version": None,
            "cuda_version": None,
            "reason": "library not found",
        }


def test_version_names_the_driver_nvml_reports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install("healthy_one_gpu", monkeypatch, tmp_path)
    doc = json.loads(invoke("--version", "--json").output)
    assert doc["nvidia_driver"] == {"found": True, "version": "550.107.02", "cuda_version": "12.4", "reason": None}
    assert "  nvidia driver 550.107.02 (CUDA 12.4)" in invoke("--version").output.splitlines()


def test_exit_codes_command_matches_enum() -> None:
    result = invoke("exit-codes", "--json")
    assert result.exit_code == 0
    table = json.loads(result.output)
    assert {int(k): v["name"] for k, v in table.items()} == {int(c): c.reason for c in ExitCode}
    before = invoke("--json", "exit-codes")  # a global option before the command name counts as after it
    assert (before.exit_code, json.loads(before.output)) == (0, table)


@pytest.mark.parametrize(
    ("option", "kind"), [("--report", "report"), ("--junit-xml", "junit-xml"), ("--prometheus", "prometheus")]
)
def test_exit_codes_refuses_output_files_it_would_not_write(tmp_path: Path, option: str, kind: str) -> None:
    target = tmp_path / "out"
    result = invoke(option, str(target), "exit-codes")
    assert (result.exit_code, result.stdout) == (ExitCode.USAGE, "")
    assert result.stderr.splitlines() == [
        f"Error: {option}: exit-codes writes no {kind} file (it prints a fixed table)",
        f"Fix: Leave {option} out; `kcuda-validate exit-codes --json` prints the table as JSON.",
    ]
    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["load", "--n-ctx", "10"],
            "Error: cli load: Invalid value for '--n-ctx': 10 is not in the range 64<=x<=1048576.",
        ),
        (["infer", "--max-tokens", "0"], "Error: cli infer: Invalid value for '--max-tokens': 0 is not in the range"),
        (  # llama.cpp's GGML_MAX_N_THREADS: 100000 threads crashed the worker with SIGSEGV
            ["infer", "--threads", "100000", "--device", "cpu"],
            "Error: cli infer: Invalid value for '--threads': 100000 is not in the range 1<=x<=512.",
        ),
        (["detect", "--device", "gpu0"], "Error: cli detect: Invalid value for '--device': 'gpu0' is not a GPU index"),
        (["load", "--bogus"], "Error: cli load: No such option '--bogus'"),
        (  # click's parser gives no context here: the command is still named, and its --help in the fix
            ["validate-all", "--max-tokens"],
            "Error: kcuda-validate validate-all: Option '--max-tokens' requires an argument.",
        ),
        (["infer", "   ", "--device", "cpu"], "Error: prompt: the prompt is empty"),
        (
            ["load", "--model-path", "x.gguf", "--synthetic", "8MiB"],
            "Error: --model-path and --synthetic: choose one model source",
        ),
        (["infer", "--compare-cpu", "--device", "cpu"], "Error: --compare-cpu: needs a GPU run"),
        (["-v", "detect", "-q"], "Error: -q and -v: -q prints only the verdict line, -v more detail"),
        (
            ["load", "--synthetic", "8MiB", "--revision", "v1"],
            "Error: --filename/--revision: only valid with --repo-id",
        ),
        (["load", "--model-path", "x.gguf", "--synthetic-type", "f16"], "Error: --synthetic-type F16: only used with"),
        (  # refused before the run, not after a whole inference that could never measure it
            ["infer", "--min-speedup", "2", "--device", "cpu", "--synthetic", "8MiB"],
            "Error: --min-speedup 2: the GPU-over-CPU speedup is measured only with --compare-cpu",
        ),
        (["--report", "", "detect"], "Error: cli: Invalid value for '--report': an empty path names no file."),
        (["detect", "--junit-xml", "/"], "Error: --junit-xml /: is a directory, not a file to write"),
        (
            ["infer", "hello", "--prompt-tokens", "10", "--device", "cpu"],
            "Error: --prompt-tokens 10: replaces the prompt with synthetic tokens, so a prompt cannot be given too",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == ExitCode.USAGE
    first = result.stderr.splitlines()[0]
    assert first.startswith(message), result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("option", "args"),
    [
        ("--model-path", ["load", "--device", "cpu", "--model-path", ""]),
        ("--model-path", ["infer", "--device", "cpu", "--model-path", "  "]),
        ("--ready-file", ["validate-all", "--device", "cpu", "--ready-file", ""]),
        ("--ready-file", ["validate-all", "--device", "cpu", "--ready-file="]),
    ],
)
def test_an_empty_path_is_a_usage_error_naming_the_option(
    option: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pathlib reads "" as `.`: it was `.: is a directory, not a GGUF file` (exit 5), or the same for the ready
    file, as if the user had named the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = invoke(*args)
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [
        f"Error: cli {args[0]}: Invalid value for '{option}': an empty path names no file.",
        f"Fix: See `cli {args[0]} --help`.",
    ]
    assert result.stdout == ""
    assert list(cwd.iterdir()) == []  # nothing written into the directory "" would have named


@pytest.mark.parametrize(
    ("args", "code", "lines"),
    [
        (
            ["fleet", "/nonexistent/reports"],
            ExitCode.USAGE,
            [
                "Error: REPORT /nonexistent/reports: no such file or directory",
                "Fix: Name report files written by `--json`/`--report`, or directories of them.",
            ],
        ),
        (
            ["load", "--device", "cpu", "--synthetic", "99TiB"],
            ExitCode.USAGE,
            [
                "Error: --synthetic 99TiB: 108851651149824 bytes is out of range: a synthetic model must be between"
                " 1MiB and 64GiB",
                "Fix: Pick a size between 1MiB and 64GiB, e.g. --synthetic 1GiB.",
            ],
        ),
        (
            ["setup", "--cuda", "12"],
            ExitCode.USAGE,
            [
                "Error: --cuda 12: not a CUDA version as MAJOR.MINOR",
                "Fix: Pass the newest CUDA the target driver supports, e.g. --cuda 12.8 (`nvidia-smi` on that machine"
                " shows it).",
            ],
        ),
        (
            ["infer", "--device", "cpu", "--model-path", "<tiny>", "--max-tokens", "5000"],
            ExitCode.USAGE,
            [
                "Error: --max-tokens 5000: prompt (65 tokens) + max tokens = 5065 exceeds --n-ctx 4096",
                "Fix: Lower --max-tokens to at most 4031 (--n-ctx 4096 is already the model's trained context).",
            ],
        ),
    ],
    ids=["fleet", "load", "setup", "infer"],
)
@pytest.mark.parametrize("how", ["group-option", "command-option", "KCUDA_DEBUG"])
def test_debug_keeps_the_code_and_lines_of_an_expected_error(
    args: list[str],
    code: int,
    lines: list[str],
    how: str,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--debug re-raised every expected error: a traceback and exit 1, with no Error:/Fix: lines. It only adds
    tracebacks for unexpected errors (specs/cli.md); an expected one reads as it does without it."""
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)  # as outside pytest, where the bug was
    args = [str(tiny_model) if a == "<tiny>" else a for a in args]
    plain = invoke(*args)
    if how == "KCUDA_DEBUG":
        monkeypatch.setenv("KCUDA_DEBUG", "1")
        debug = invoke(*args)
    else:
        debug = invoke(*(["--debug", *args] if how == "group-option" else [*args, "--debug"]))
    for result in (plain, debug):
        assert (result.exit_code, result.stderr.splitlines(), result.stdout) == (code, lines, "")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("missing", "{p}: no such file"),
        ("directory", "{p}: is a directory, not a GGUF file"),
        ("not_gguf", "{p}: not a GGUF file (starts with b'<htm', expected b'GGUF')"),
        ("empty", "{p}: not a GGUF file (starts with b'', expected b'GGUF')"),
        ("truncated", "{p}: file is truncated: tensor"),
    ],
)
def test_bad_model_files_exit_5_with_one_line(tmp_path: Path, tiny_model: Path, make: str, expected: str) -> None:
    p = tmp_path / "model.gguf"
    if make == "directory":
        p.mkdir()
    elif make == "not_gguf":
        p.write_text("<html>404 Not Found</html>")
    elif make == "empty":
        p.write_bytes(b"")
    elif make == "truncated":
        data = tiny_model.read_bytes()
        p.write_bytes(data[: len(data) * 2 // 3])
    before = sorted(tmp_path.rglob("*"))
    result = invoke("load", "--device", "cpu", "--model-path", str(p))
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[0].startswith("Error: " + expected.format(p=p))
    assert "Traceback" not in result.stdout + result.stderr
    # Nothing half-written left behind (logs live elsewhere, under KCUDA_LOG_DIR).
    assert sorted(x for x in tmp_path.rglob("*") if "logs" not in x.parts and "hf" not in x.parts) == [
        x for x in before if "logs" not in x.parts and "hf" not in x.parts
    ]


def test_unreadable_model_file(tmp_path: Path, tiny_model: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    p = tmp_path / "m.gguf"
    p.write_bytes(tiny_model.read_bytes())
    p.chmod(0)
    result = invoke("load", "--device", "cpu", "--model-path", str(p))
    assert result.exit_code == ExitCode.MODEL_INVALID
    assert result.stderr.startswith(f"Error: {p}: permission denied")


def test_n_ctx_beyond_the_model_is_refused_at_once(tiny_model: Path) -> None:
    result = invoke("load", "--device", "cpu", "--model-path", str(tiny_model), "--n-ctx", "1000000")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("Error: --n-ctx 1000000: out of range for")


def test_gpu_run_without_driver_exits_3_and_suggests_cpu(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("no_driver", monkeypatch, tmp_path)  # on every machine, GPU boxes included
    result = invoke("load", "--model-path", str(tiny_model))
    assert result.exit_code == ExitCode.NO_GPU
    assert "no usable NVIDIA GPU" in result.stdout
    assert "--device cpu" in result.stdout


def test_json_mode_prints_only_json_on_stdout(tiny_model: Path) -> None:
    result = invoke("--json", "validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "8")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "validate-all"
    assert doc["device_mode"] == "cpu"
    assert doc["gpu_validated"] is False


def test_log_file_is_named_on_errors_and_written(isolated_env: Path) -> None:
    result = invoke("load", "--device", "cpu", "--model-path", "/nonexistent/model.gguf")
    assert result.exit_code == ExitCode.MODEL_INVALID
    log_file = isolated_env / "logs" / "kcuda-validate.log"
    assert log_file.exists()
    assert "start: " in log_file.read_text()


def test_installed_console_script_runs_the_cpu_pipeline(tiny_model: Path, tmp_path: Path) -> None:
    """The real entry point in a subprocess: exit code, parseable JSON, a written report and JUnit file."""
    exe = Path(sys.executable).parent / "kcuda-validate"
    assert exe.exists(), "the console script is installed with the package"
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    proc = subprocess.run(
        [str(exe), "validate-all", "--json", "--device", "cpu", "--model-path", str(tiny_model)]
        + ["--max-tokens", "8", "--repeat", "2", "--report", str(report), "--junit-xml", str(junit)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "100"},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 0 and doc["passed"] is True
    assert json.loads(report.read_text())["checks"] == doc["checks"]
    assert junit.read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>')


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kcuda_validate", "exit-codes"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "hub_unreachable" in proc.stdout


def test_no_ansi_when_piped(tiny_model: Path) -> None:
    exe = Path(sys.executable).parent / "kcuda-validate"
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.run([str(exe), "detect", "--skip-torch"], capture_output=True, text=True, timeout=60, env=env)
    # A real run on this machine: no driver -> exit 3; on a GPU box (checked on an H100) detect passes.
    assert proc.returncode == (ExitCode.OK if driver_present() else ExitCode.NO_GPU), proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_infer_streams_real_text_from_the_real_model(real_model: Path) -> None:
    prompt = "The capital of France is Paris. The capital of Germany is"
    result = invoke("infer", prompt, "--device", "cpu", "--model-path", str(real_model), "--max-tokens", "6", "-v")
    assert result.exit_code == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert "Berlin" in first_line  # streamed before the report
    assert "kcuda-validate infer — CPU RUN (not a GPU validation)" in result.stdout
    assert "warm-up" in result.stdout  # -v shows every run
    assert "PASSED (CPU run)" in result.stdout.splitlines()[-1]


def test_two_runs_at_once_share_the_synthetic_cache_safely(tmp_path: Path) -> None:
    env = os.environ | {"KCUDA_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "kcuda_validate", "load", "--device", "cpu", "--synthetic", "24MiB", "--json"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    paths = {json.loads(out)["sections"]["model"]["path"] for out, _ in outs}
    assert len(paths) == 1
    files = sorted(p.name for p in (tmp_path / "cache" / "synthetic").iterdir() if not p.name.startswith("."))
    assert files == ["synthetic-llama-24MiB-Q8_0-s0.gguf"]


def test_gpu_layers_0_on_a_gpu_run_is_a_usage_error(tiny_model: Path) -> None:
    """On the H100, --gpu-layers 0 still reserved a GPU compute buffer while proving nothing about offload."""
    result = invoke("load", "--model-path", str(tiny_model), "--gpu-layers", "0")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[:2] == [
        "Error: --gpu-layers 0: offloads nothing, so the GPU cannot be validated",
        "Fix: Use --device cpu for a CPU run, or --gpu-layers -1 (all) or N > 0.",
    ]


def test_no_telemetry_reaches_the_pipeline() -> None:
    """The GPU effect (no NVML figures) is tested in tests/test_gpu.py; here: the flag is parsed and passed on."""
    from kcuda_validate.cli._common import build_run

    base = {"model_path": "m.gguf", "max_tokens": 8, "repeat": 1, "synthetic_type": "Q8_0"}
    assert build_run(base, with_infer=True).telemetry is True
    assert build_run({**base, "no_telemetry": True}, with_infer=True).telemetry is False


@pytest.mark.parametrize("option", ["--report", "--junit-xml"])
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_report_destination_is_refused_before_the_run(
    tiny_model: Path, tmp_path: Path, option: str, where: str
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory")
    dest = blocker / "sub" / "r.out" if where == "under_a_file" else Path("/proc/kcuda-validate-test/r.out")
    result = invoke("infer", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "4", option, str(dest))
    assert result.exit_code == ExitCode.USAGE, result.output
    if where == "under_a_file":
        assert result.stderr.splitlines()[0] == f"Error: {option} {dest}: {blocker} is not a directory"
    else:
        assert result.stderr.splitlines()[0].startswith(f"Error: {option} {dest}: cannot write in /proc (")
    assert result.stderr.splitlines()[1].startswith("Fix: Pass a path in a directory you can write to")
    assert result.stdout == ""  # refused up front: no model was loaded, nothing was generated
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--report", "--junit-xml", "--prometheus"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink_to_fifo", "symlink_loop", "dangling_parent", "long"])
def test_a_destination_that_is_no_file_to_write_is_refused_and_left_as_it_was(
    tmp_path: Path, option: str, kind: str
) -> None:
    """Only a regular file is ever replaced: as root, `--report /dev/null` must not replace the device."""
    tmp_path = tmp_path / "dest"  # the run's own log directory is tmp_path/logs
    tmp_path.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = {
        "fifo": (fifo, "is a FIFO (named pipe), not a file to write"),
        "directory": (tmp_path / "outdir", "is a directory, not a file to write"),
        "symlink_to_fifo": (
            tmp_path / "r.link",
            f"is a FIFO (named pipe), not a file to write (the symlink leads to {fifo})",
        ),
        "symlink_loop": (tmp_path / "loop1", "cannot be resolved (Too many levels of symbolic links)"),
        "dangling_parent": (
            tmp_path / "gone" / "r.out",
            f"{tmp_path / 'gone'} is a symlink to nowhere, which does not exist",
        ),
        "long": (tmp_path / ("r" * 300), "the file name is 300 bytes, more than this filesystem allows"),
    }
    (tmp_path / "outdir").mkdir()
    (tmp_path / "r.link").symlink_to(fifo)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "gone").symlink_to("nowhere")
    before = sorted((p.name, p.lstat().st_mode) for p in tmp_path.iterdir())
    dest, why = cases[kind]

    result = invoke("detect", "--skip-torch", option, str(dest))

    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.splitlines()[0] == f"Error: {option} {dest}: {why}"
    assert sorted((p.name, p.lstat().st_mode) for p in tmp_path.iterdir()) == before
    assert result.stdout == ""


def test_a_symlink_to_a_file_is_written_through_and_kept(tmp_path: Path) -> None:
    target, link = tmp_path / "reports" / "node.json", tmp_path / "latest.json"
    target.parent.mkdir()
    target.write_text("old")
    link.symlink_to(target)

    result = invoke("detect", "--skip-torch", "--report", str(link))

    assert result.exit_code in (ExitCode.OK, ExitCode.NO_GPU), result.output
    assert link.is_symlink() and link.resolve() == target
    assert json.loads(target.read_text())["command"] == "detect"
    assert sorted(p.name for p in target.parent.iterdir()) == ["node.json"]  # no temp file left


@pytest.mark.parametrize(
    ("first", "second"), [("--report", "--prometheus"), ("--report", "--junit-xml"), ("--report", "--ready-file")]
)
def test_two_options_naming_one_file_are_refused(tmp_path: Path, first: str, second: str) -> None:
    dest = tmp_path / "out.json"
    command = "validate-all" if second == "--ready-file" else "detect"
    result = invoke(command, "--skip-torch", second, str(dest), first, str(dest))  # named in a fixed order

    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.splitlines()[:2] == [
        f"Error: {first} and {second} both name {dest}: each file would overwrite the other",
        "Fix: Give each option its own file.",
    ]
    assert not dest.exists()


def test_a_long_file_name_that_fits_is_written(tmp_path: Path) -> None:
    """The temp file beside it must fit too: its name is not the final name plus a suffix."""
    dest = tmp_path / ("r" * 250)
    result = invoke("detect", "--skip-torch", "--report", str(dest))
    assert result.exit_code in (ExitCode.OK, ExitCode.NO_GPU), result.output
    assert json.loads(dest.read_text())["command"] == "detect"


def test_report_parent_directories_are_created_at_the_end(tiny_model: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ci" / "artifacts" / "report.json"
    result = invoke("load", "--device", "cpu", "--model-path", str(tiny_model), "--report", str(dest))
    assert result.exit_code == 0, result.output
    assert json.loads(dest.read_text())["command"] == "load"
    assert [p.name for p in dest.parent.iterdir()] == ["report.json"]  # no temp files left


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no space left: a 64 KiB tmpfs, filled (needs the right to mount, as root here)."""
    where = tmp_path / "full"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, bytes(4096)):
                pass
        os.close(fd)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("option", ["--report", "--junit-xml", "--prometheus"])
def test_an_output_file_on_a_full_disk_is_refused_before_the_run(
    tiny_model: Path, full_disk: Path, option: str
) -> None:
    """A full disk still lets an empty file be made: the up-front check writes, so it is found before the run."""
    dest = full_disk / "out" / "r.json"
    result = invoke(option, str(dest), "load", "--device", "cpu", "--model-path", str(tiny_model))

    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""  # nothing ran
    assert result.stderr.splitlines()[:2] == [
        f"Error: {option} {dest}: no space left in {full_disk} (No space left on device)",
        "Fix: Free some space there, or pass a path on another filesystem.",
    ]
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # the probe went, no folder was made


def test_a_report_that_cannot_be_written_at_the_end_still_leaves_the_result(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up during a long run: the result is still printed, then the write failure is the error."""
    import errno

    import kcuda_validate.report as report_mod

    def disk_full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report_mod, "write_atomic", disk_full)
    dest = tmp_path / "r.json"
    result = invoke("--json", "load", "--device", "cpu", "--model-path", str(tiny_model), "--report", str(dest))
    assert json.loads(result.stdout)["passed"] is True
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[0] == (
        f"Error: --report {dest}: the report could not be written (No space left on device); the result above stands"
    )
    assert not dest.exists()


def test_synthetic_prompt_tokens_past_the_context_are_refused_before_the_load(tiny_model: Path, tmp_path: Path) -> None:
    """--prompt-tokens and --max-tokens against --n-ctx (as llama.cpp pads it) are known once the header is read:
    refused then, naming --prompt-tokens, before a worker loads anything (it had run into the 600 s timeout)."""
    report = tmp_path / "r.json"
    args = ["infer", "--device", "cpu", "--model-path", str(tiny_model), "--n-ctx", "64", "--prompt-tokens", "300"]
    result = CliRunner().invoke(cli, [*args, "--max-tokens", "4", "--report", str(report)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.splitlines() == [
        "Error: --prompt-tokens 300: with --max-tokens 4 that is 304 tokens, more than the context holds "
        "(--n-ctx 64, which llama.cpp made 256)",
        "Fix: Raise --n-ctx to at least 304 or lower --max-tokens or --prompt-tokens.",
    ]
    assert not report.exists()  # a usage error, as an out-of-range --n-ctx is: no report of a run that never ran
