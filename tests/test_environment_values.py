"""Hostile and odd values of the environment variables the tool reads (specs/cli.md, Environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakes.hardware import install
from kcuda_validate import cache_dir, logs
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.gpu.nvml import GpuInfo, parse_visible_devices


def _no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run as a uid with no passwd entry and no HOME: Path.home() raises RuntimeError there."""
    import pwd

    def missing(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("KCUDA_CACHE_DIR", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", missing)


# -- no home directory --------------------------------------------------------------------------------------


def test_no_home_is_a_log_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_home(monkeypatch)
    monkeypatch.delenv("KCUDA_LOG_DIR")
    assert logs.setup_logging() is None
    err = capsys.readouterr().err
    assert err.startswith("Warning: cannot write the log: HOME is not set")
    assert "KCUDA_LOG_DIR" in err


def test_no_home_cache_is_a_usage_error_naming_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_home(monkeypatch)
    with pytest.raises(UsageError) as caught:
        cache_dir.kcuda_cache_dir("synthetic")
    assert caught.value.fix is not None and "KCUDA_CACHE_DIR" in caught.value.fix


def test_load_with_no_home_is_exit_2_not_70(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_home(monkeypatch)
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--synthetic", "1MiB"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Error: no cache directory: HOME is not set" in result.stderr
    assert "Traceback" not in result.output


# -- paths: `~` and relative XDG values -----------------------------------------------------------------------


def test_kcuda_cache_dir_expands_a_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KCUDA_CACHE_DIR", "~/kc")
    assert cache_dir.kcuda_cache_dir("synthetic") == tmp_path / "kc" / "synthetic"


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "XDG_STATE_HOME"])
def test_a_relative_xdg_directory_is_ignored(variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KCUDA_CACHE_DIR", raising=False)
    monkeypatch.delenv("KCUDA_LOG_DIR")
    monkeypatch.setenv(variable, "relative/dir")
    assert cache_dir.kcuda_cache_dir("engine") == tmp_path / ".cache" / "kcuda-validate" / "engine"
    assert logs.default_log_dir() == tmp_path / ".local" / "state" / "kcuda-validate"


# -- KCUDA_LOG_LEVEL ------------------------------------------------------------------------------------------


def test_an_unknown_log_level_is_said(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KCUDA_LOG_LEVEL", "verbose")
    assert logs.setup_logging() is not None
    assert "Warning: KCUDA_LOG_LEVEL='VERBOSE' is not a log level; logging at INFO" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "level"), [("debug", 10), (" warning ", 30), ("warn", 30), ("15", 15)])
def test_log_levels_accepted(
    value: str, level: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KCUDA_LOG_LEVEL", value)
    logs.setup_logging()
    assert logs.logging.getLogger("kcuda_validate").level == level
    assert capsys.readouterr().err == ""


# -- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------------------------

TWINS = (
    GpuInfo(index=0, name="a", uuid="GPU-aaaa1111-0000"),
    GpuInfo(index=1, name="b", uuid="GPU-aaaa2222-0000"),
    GpuInfo(index=2, name="c", uuid="GPU-bbbb3333-0000"),
)


@pytest.mark.parametrize(
    ("value", "hidden"),
    [
        ("²", (0, 1, 2)),  # str.isdigit() says yes; int() refuses it: was a ValueError (exit 70)
        ("--1", (0, 1, 2)),  # was a ValueError too
        ("١", (0, 1, 2)),  # an Arabic-Indic 1: not an index CUDA reads (was GPU 1)
        ("+1", (0, 1, 2)),
        ("99999999999999999999", (0, 1, 2)),
        ("GPU-aaaa", (0, 1, 2)),  # a prefix two GPUs share is invalid (was the first of them)
        ("GPU-aaaa2", (0, 2)),
        ("2,GPU-aaaa,0", (0, 1)),  # enumeration stops at the ambiguous entry
        ("NoDevFiles", (0, 1, 2)),
        ("0,0", (1, 2)),
    ],
)
def test_visible_devices_by_cuda_rules(value: str, hidden: tuple[int, ...]) -> None:
    assert parse_visible_devices(value, TWINS) == hidden


@pytest.mark.parametrize("value", ["²", "--1"])
def test_a_hostile_visible_devices_is_never_internal(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("healthy_one_gpu", monkeypatch, tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    result = CliRunner().invoke(cli, ["load", "--synthetic", "1MiB"])
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # was a ValueError: exit 70
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    assert "is hidden by CUDA_VISIBLE_DEVICES=" in result.stderr


# -- PYTHONWARNINGS=error -------------------------------------------------------------------------------------


def test_a_passing_cpu_load_warns_nothing_under_pythonwarnings_error(tmp_path: Path) -> None:
    """The worker's pipes are closed: an unclosed one is a ResourceWarning, printed as a traceback."""
    env = dict(os.environ, PYTHONWARNINGS="error", KCUDA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "kcuda_validate", "load", "--device", "cpu", "--synthetic", "1MiB"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ResourceWarning" not in proc.stderr
    assert "Traceback" not in proc.stderr


# -- an output encoding that cannot spell the tool's text ----------------------------------------------------


def test_an_ascii_only_output_encoding_escapes_instead_of_failing(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii (or a locale Python's UTF-8 mode does not cover): the first em dash of the
    heading raised UnicodeEncodeError, exit 70. Now it is written as an escape and the run passes."""
    env = dict(os.environ, PYTHONIOENCODING="ascii", LC_ALL="C", KCUDA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "kcuda_validate", "load", "--device", "cpu", "--synthetic", "1MiB"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("ascii").splitlines()[0] == "kcuda-validate load \\u2014 CPU RUN (not a GPU validation)"


# -- HF_ENDPOINT ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("huggingface.co", "huggingface.co"),
        ("https://", "https://"),
        ("ftp://mirror.example", "ftp://mirror.example"),
        ("http://[::1", "http://[::1"),
        ("user:hf_abcdefghijklmnopqrstuvwxyz@mirror", "***@mirror"),  # the credential is never shown
    ],
)
def test_an_hf_endpoint_that_is_no_url_is_a_usage_error(
    value: str, shown: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a scheme it was 'cannot reach huggingface.co ... check your network' (exit 11)."""
    monkeypatch.setenv("HF_ENDPOINT", value)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(cli, ["load", "--device", "cpu"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[:2] == [
        f"Error: HF_ENDPOINT={shown!r} is not a Hub address (it needs http:// or https:// and a host)",
        "Fix: Set HF_ENDPOINT to the Hub's URL with its scheme, e.g. HF_ENDPOINT=https://huggingface.co, or unset it.",
    ]
    assert "hf_abcdefghij" not in result.output and not (tmp_path / "hub").exists()


@pytest.mark.parametrize("value", ["-1", "0"])
def test_an_etag_timeout_of_zero_or_less_is_a_usage_error(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It was 'cannot reach ... (no answer within 0 s)', blamed on the network (exit 11)."""
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", value)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(cli, ["load", "--device", "cpu"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [
        f"Error: HF_HUB_ETAG_TIMEOUT={value!r} is not above 0 seconds (the request would give up before any answer)",
        "Fix: Set HF_HUB_ETAG_TIMEOUT to a whole number of seconds above 0 (e.g. HF_HUB_ETAG_TIMEOUT=10), or unset it.",
    ]
    assert not (tmp_path / "hub").exists()
