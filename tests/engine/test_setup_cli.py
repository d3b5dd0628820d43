"""`kcuda-validate setup` and `validate-all --setup` through the real CLI on hardware scenarios: the plan as
JSON that the report schema accepts, and the documented exit codes when there is nothing to build for."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from fakes.hardware import Installed
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "specs" / "report.schema.json").read_text())


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KCUDA_CACHE_DIR", str(cache))
    return cache


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_dry_run_json_is_a_schema_valid_plan_and_changes_nothing(scenario: Installed, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["setup", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["command"] == "setup"
    plan = doc["sections"]["setup"]["plan"]
    gpu = scenario.scenario.gpus[0]
    want = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    assert plan["archs"] == [want]
    assert doc["sections"]["setup"]["outcome"] == "dry_run"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_setup_without_a_gpu_or_arch_is_exit_3_naming_arch(scenario: Installed) -> None:
    result = CliRunner().invoke(cli, ["setup"])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    assert "--arch" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_validate_all_setup_without_a_gpu_skips_setup_and_exits_3(scenario: Installed) -> None:
    result = CliRunner().invoke(cli, ["validate-all", "--setup", "--json", "--synthetic", "tiny"])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    doc = json.loads(result.stdout)
    setup = [c for c in doc["checks"] if c["stage"] == "setup"]
    assert setup and all(c["status"] == "skip" for c in setup)


@pytest.mark.parametrize("value", ["abc", "9.x", "0"])
def test_a_bad_arch_is_a_one_line_usage_error(value: str) -> None:
    result = CliRunner().invoke(cli, ["setup", "--dry-run", "--arch", value])
    assert result.exit_code == ExitCode.USAGE
    assert value in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_validate_all_setup_passes_toolkit_through_to_the_plan(scenario: Installed) -> None:
    """The scenario's driver supports CUDA 12.4: a system toolkit, if any, is CUDA 13.0 here or absent, so forcing
    `system` is refused by the plan (exit 4) before anything is built, and the run stops at setup."""
    args = ["validate-all", "--setup", "--toolkit", "system", "--json", "--synthetic", "tiny"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["stopped_at"] == "setup"
    assert doc["sections"]["setup"]["outcome"] == "refused"
    (failed,) = [c for c in doc["checks"] if c["status"] == "fail"]
    assert failed["stage"] == "setup" and failed["summary"].startswith("--toolkit system: ")
    assert [c["stage"] for c in doc["checks"]] == ["setup"]  # no worker, no model


def test_validate_all_toolkit_without_setup_is_a_one_line_usage_error() -> None:
    result = CliRunner().invoke(cli, ["validate-all", "--toolkit", "pypi", "--synthetic", "tiny"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.output == (
        "Error: --toolkit: only means something with --setup\n"
        "Fix: Add --setup, or run `kcuda-validate setup --toolkit pypi` first.\n"
    )
