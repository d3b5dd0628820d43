"""Thresholds turn a slow run into a failing CI job, and say by how much; an internal error is exit 70."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode


def run_json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_missed_thresholds_fail_with_the_gap(tiny_model: Path) -> None:
    code, doc = run_json(
        "infer",
        "--device",
        "cpu",
        "--model-path",
        str(tiny_model),
        "--max-tokens",
        "8",
        "--repeat",
        "1",
        "--min-gen-tps",
        "1000000",
        "--max-ttft-ms",
        "0.001",
        "--min-prompt-tps",
        "0.5",
    )
    assert code == ExitCode.BELOW_THRESHOLD
    checks = {c["id"]: c for c in doc["checks"]}
    gen = checks["threshold.min_gen_tps"]
    assert gen["status"] == "fail"
    assert "misses 1000000 tok/s (short by" in gen["summary"]
    assert gen["evidence"]["measured"] == pytest.approx(doc["metrics"]["gen_tps"]["value"])
    assert "over by" in checks["threshold.max_ttft_ms"]["summary"]
    assert checks["threshold.min_prompt_tps"]["status"] == "pass"


def test_speedup_threshold_without_a_cpu_comparison_is_refused_before_the_run(tiny_model: Path) -> None:
    """It could never be met: refused at once (exit 2), not after a whole inference (exit 6)."""
    result = CliRunner().invoke(
        cli, ["infer", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "4", "--min-speedup", "2"]
    )
    assert (result.exit_code, result.stdout) == (ExitCode.USAGE, "")
    assert result.stderr.splitlines() == [
        "Error: --min-speedup 2: the GPU-over-CPU speedup is measured only with --compare-cpu",
        "Fix: Add --compare-cpu (a GPU run), or drop --min-speedup.",
    ]


def test_without_a_warm_up_the_cold_run_is_not_counted_as_warm(tiny_model: Path) -> None:
    base = ["infer", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "4", "--no-warmup"]
    code, doc = run_json(*base, "--repeat", "3")
    assert code == 0
    runs = doc["sections"]["inference"]["runs"]
    assert doc["metrics"]["ttft_cold_ms"]["value"] == pytest.approx(runs[0]["ttft_s"] * 1000)
    assert doc["metrics"]["ttft_warm_ms"]["samples"] == pytest.approx([r["ttft_s"] * 1000 for r in runs[1:]])

    code, doc = run_json(*base, "--repeat", "1", "--max-ttft-ms", "1000")
    assert code == ExitCode.BELOW_THRESHOLD  # one cold run: there is no warm figure to hold to the limit
    assert doc["metrics"]["ttft_warm_ms"]["value"] is None
    check = next(c for c in doc["checks"] if c["id"] == "threshold.max_ttft_ms")
    assert check["summary"] == "warm time to first token was not measured, so --max-ttft-ms 1000 cannot be met"
    assert check["fix"].startswith("Keep the warm-up, or pass --repeat 2 or more")


def test_unexpected_exception_is_exit_70_with_one_line(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    import kcuda_validate.pipeline as pipeline

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(pipeline, "read_gguf", boom)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)  # outside pytest, bugs become exit 70
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--model-path", str(tiny_model)])
    assert result.exit_code == ExitCode.INTERNAL
    assert result.stderr.splitlines()[0] == "Error: internal error: RuntimeError: something nobody expected"
    assert "Traceback" not in result.stderr
    assert "--debug" in result.stderr


def test_missing_dependency_names_the_module_and_the_reinstall(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """Seen on a GPU box with huggingface-hub 1.x: an import failure is a broken install, not "report the bug"."""
    import kcuda_validate.pipeline as pipeline

    def needs_a_missing_package(*a: object, **k: object) -> None:
        import kcuda_validate_no_such_dependency  # noqa: F401

    monkeypatch.setattr(pipeline, "read_gguf", needs_a_missing_package)
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--model-path", str(tiny_model)])
    assert result.exit_code == ExitCode.INTERNAL
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "Error: a dependency is missing or incompatible: No module named 'kcuda_validate_no_such_dependency'"
    )
    assert "`uv sync --locked --inexact`" in lines[1]  # the locked set, keeping what setup added
    assert "pip install" not in lines[1]  # kcuda-validate is not a published package
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("before", "after", "env"),
    [(["--debug"], [], None), ([], ["--debug"], None), ([], [], "1")],
    ids=["group-option", "command-option", "KCUDA_DEBUG"],
)
def test_debug_shows_the_traceback_and_keeps_exit_70(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, before: list[str], after: list[str], env: str | None
) -> None:
    """It re-raised: exit 1 and no Error: line, where the spec promises 70 with or without --debug."""
    import kcuda_validate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "read_gguf", lambda *a: 1 / 0)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    if env is not None:
        monkeypatch.setenv("KCUDA_DEBUG", env)
    args = [*before, "load", "--device", "cpu", "--model-path", str(tiny_model), *after]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ExitCode.INTERNAL
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "ZeroDivisionError: division by zero" in lines  # the traceback's own last line
    assert lines[-3:-1] == [
        "Error: internal error: ZeroDivisionError: division by zero",
        "Fix: Report the bug with this traceback and the log file.",
    ]
    assert lines[-1].startswith("Log: ")


def test_a_value_that_reads_debug_does_not_turn_debug_on(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    """`--prompt --debug` is a prompt: only the --debug option click parsed counts."""
    import kcuda_validate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "read_gguf", lambda *a: 1 / 0)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.delenv("KCUDA_DEBUG", raising=False)
    result = CliRunner().invoke(
        cli, ["infer", "--device", "cpu", "--model-path", str(tiny_model), "--prompt", "--debug"]
    )
    assert result.exit_code == ExitCode.INTERNAL
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[:2] == [
        "Error: internal error: ZeroDivisionError: division by zero",
        "Fix: Rerun with --debug and report the bug with the log file.",
    ]


def test_debug_shows_a_missing_dependency_traceback_and_keeps_exit_70(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    import kcuda_validate.pipeline as pipeline

    def needs_a_missing_package(*a: object, **k: object) -> None:
        import kcuda_validate_no_such_dependency  # noqa: F401

    monkeypatch.setattr(pipeline, "read_gguf", needs_a_missing_package)
    result = CliRunner().invoke(cli, ["--debug", "load", "--device", "cpu", "--model-path", str(tiny_model)])
    assert result.exit_code == ExitCode.INTERNAL
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    error = next(i for i, line in enumerate(lines) if line.startswith("Error: "))
    assert lines[error] == (
        "Error: a dependency is missing or incompatible: No module named 'kcuda_validate_no_such_dependency'"
    )
    assert lines[error + 1].startswith("Fix: Reinstall the tool's locked dependencies")
