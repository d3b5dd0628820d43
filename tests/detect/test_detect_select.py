"""`detect --list-checks` and `detect --check ID` through the real CLI, on the scenario fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fakes.hardware import Installed
from kcuda_validate.cli import cli
from kcuda_validate.detect import CHECKS, NODE_HEALTH


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_list_checks_prints_every_check_in_order() -> None:
    result = invoke("detect", "--list-checks")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = [line.split("  ") for line in result.stdout.splitlines()]
    # Columns are aligned: ID, title, tags (comma-separated), one row per registry entry, in run order.
    parsed = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert parsed == [[c.id, c.title, ", ".join(c.tags)] for c in CHECKS]
    assert parsed[0] == ["platform.os", "Operating system", "fast, no-model, no-torch, node-health"]
    assert parsed[8] == ["torch.cuda", "PyTorch CUDA", "no-model"]


def test_list_checks_json_is_a_list() -> None:
    result = invoke("detect", "--list-checks", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == [c.to_json() for c in CHECKS]
    assert doc[4] == {
        "id": "driver.nvml",
        "title": "NVIDIA driver (NVML)",
        "tags": ["fast", "no-model", "no-torch", "node-health"],
        "reads": ["platform", "nvml"],
    }
    assert [d["id"] for d in doc if "node-health" in d["tags"]] == list(NODE_HEALTH)


def test_list_checks_with_a_results_file_is_refused_rather_than_writing_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "r.prom"
    result = invoke("--prometheus", str(dest), "detect", "--list-checks")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[:2] == [
        f"Error: --list-checks runs no check, so --prometheus {dest} would get no results",
        "Fix: Drop --list-checks to run the checks and write the file, or drop the file option.",
    ]
    assert result.stdout == "" and not dest.exists()


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_check_runs_only_the_named_checks_in_registry_order(scenario: Installed) -> None:
    result = invoke("detect", "--json", "--check", "cuda.driver_api", "--check", "driver.nvml")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [c["id"] for c in doc["checks"]] == ["driver.nvml", "cuda.driver_api"]
    assert doc["sections"]["detect"]["only"] == ["driver.nvml", "cuda.driver_api"]
    # Only the facts those checks read were gathered: PyTorch and the engine build never ran.
    assert doc["sections"]["detect"]["torch"] is None
    assert doc["sections"]["detect"]["llama_cpp"] is None


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_check_keeps_the_exit_code_of_its_failure(scenario: Installed) -> None:
    result = invoke("detect", "--json", "--check", "driver.nvml")
    doc = json.loads(result.stdout)
    assert result.exit_code == scenario.scenario.exit_code
    assert [(c["id"], c["status"]) for c in doc["checks"]] == [("driver.nvml", "fail")]


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_unknown_check_is_a_usage_error_naming_it(scenario: Installed) -> None:
    result = invoke("detect", "--check", "gpu", "--check", "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: --check nope: no such check\n"
        "Fix: Use one of: " + ", ".join(c.id for c in CHECKS) + " (see `kcuda-validate detect --list-checks`).\n"
    )


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
@pytest.mark.parametrize("check_id", ["gpu", "perf.idle", "min", "llama.archs"])
def test_a_gpu_check_with_no_gpu_to_check_fails_as_the_driver_does(scenario: Installed, check_id: str) -> None:
    """`detect --check gpu` on a machine without a driver: not an empty table that exits 0 and reads as a pass."""
    result = invoke("detect", "--check", check_id)
    assert result.exit_code == 3
    lines = result.stdout.splitlines()
    assert lines[-1] == "FAILED: no NVIDIA driver or GPU (exit 3)"
    doc = json.loads(invoke("detect", "--json", "--check", check_id).stdout)
    ((cid, status, summary),) = [(c["id"], c["status"], c["summary"]) for c in doc["checks"]]
    assert (cid, status) == (check_id, "fail")
    assert summary == "no GPU to check: No NVIDIA driver: libnvidia-ml.so.1 was not found"


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_with_the_driver_check_asked_for_too_the_gpu_check_defers_to_it(scenario: Installed) -> None:
    doc = json.loads(invoke("detect", "--json", "--check", "driver.nvml", "--check", "gpu").stdout)
    assert [(c["id"], c["status"], c["summary"]) for c in doc["checks"]] == [
        ("driver.nvml", "fail", "No NVIDIA driver: libnvidia-ml.so.1 was not found"),
        ("gpu", "skip", "no GPU to check (see NVIDIA driver (NVML))"),
    ]


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_a_check_with_nothing_to_judge_says_so(scenario: Installed) -> None:
    result = invoke("detect", "--check", "env.cuda_visible_devices")
    assert result.exit_code == 0
    assert "CUDA_VISIBLE_DEVICES is not set: CUDA sees every GPU" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "PASSED: nothing failed in env.cuda_visible_devices; the rest of the stack was not checked."
    )
