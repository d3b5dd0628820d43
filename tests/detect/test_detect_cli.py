"""`kcuda-validate detect` through the real CLI on every hardware scenario: exit codes, JSON, golden output.

The human output is compared byte for byte (after stripping trailing spaces) with
tests/golden/detect/<scenario>.txt. After an intended change to the output, regenerate with:

    KCUDA_UPDATE_GOLDEN=1 uv run pytest tests/detect/test_detect_cli.py

and review the diff of tests/golden/ like any other code change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fakes.hardware import SCENARIOS, Installed
from goldens import GOLDEN as GOLDEN_ROOT
from goldens import assert_golden
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode

ALL = sorted(SCENARIOS)
GOLDEN = GOLDEN_ROOT / "detect"
CHECK_KEYS = {"id", "stage", "title", "status", "summary", "evidence", "fix", "exit_code", "duration_s"}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def detect_json(*args: str) -> tuple[Result, dict[str, Any]]:
    result = invoke("detect", "--json", *args)
    return result, json.loads(result.stdout)


def normalise(text: str, tmp_path: Path) -> str:
    """Make output comparable across machines: no tmp paths, no trailing spaces (rich pads table rows)."""
    text = text.replace(str(tmp_path), "<tmp>")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


@pytest.mark.parametrize("scenario", ALL, indirect=True)
def test_golden_output(scenario: Installed, tmp_path: Path) -> None:
    result = invoke("detect")
    assert result.exit_code == scenario.scenario.exit_code, result.output
    assert result.stderr == ""  # not a terminal: no progress line; stderr is for errors only
    got = normalise(result.stdout, tmp_path)
    assert_golden(GOLDEN / f"{scenario.name}.txt", got)


def test_no_stale_golden_files() -> None:
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(SCENARIOS)


@pytest.mark.parametrize("scenario", ALL, indirect=True)
def test_golden_output_shape(scenario: Installed) -> None:
    """What every golden file must show, whatever the scenario: width, verdict, a fix under each failure."""
    out = invoke("detect").stdout
    lines = out.splitlines()
    assert lines[0] == "kcuda-validate detect"
    # Not a terminal: rich renders the table at width 100. Fix lines are never wrapped (they are commands to copy).
    table = lines[: next((i for i, line in enumerate(lines) if not line.strip()), len(lines))]
    assert max(len(line) for line in table) <= 100
    fixes = [line for line in lines if line.startswith("     fix: ")]
    assert all("\n" not in f for f in fixes)
    assert "\x1b[" not in out
    assert "Traceback" not in out
    verdict = lines[-1]
    code = scenario.scenario.exit_code
    if code == ExitCode.OK:
        assert verdict == "PASSED: this machine's GPU stack is ready."
    else:
        assert verdict.startswith("FAILED: ")
        assert verdict.endswith(f"(exit {int(code)})")


@pytest.mark.parametrize("scenario", ALL, indirect=True)
def test_json_output(scenario: Installed) -> None:
    result, doc = detect_json()
    assert result.exit_code == scenario.scenario.exit_code
    assert result.stderr == ""
    # stdout is exactly one JSON document and nothing else.
    assert result.stdout.startswith("{")
    assert result.stdout.rstrip("\n").endswith("}")
    assert doc["command"] == "detect"
    assert doc["exit_code"] == int(scenario.scenario.exit_code)
    assert doc["exit_reason"] == scenario.scenario.exit_code.reason
    assert doc["passed"] is (scenario.scenario.exit_code == ExitCode.OK)
    assert doc["gpu_validated"] is False  # detect alone never validates the GPU
    assert doc["device_mode"] == "gpu"
    assert doc["checks"], "detect reports its checks"
    for check in doc["checks"]:
        assert set(check) == CHECK_KEYS, check["id"]
        assert check["stage"] == "detect"
        assert check["status"] in ("pass", "warn", "fail", "skip")
        assert isinstance(check["evidence"], dict)
        if check["status"] == "fail":
            assert check["fix"], check["id"]
            assert check["exit_code"] != 0
        else:
            assert check["exit_code"] == 0
    assert doc["summary"] == {s: sum(c["status"] == s for c in doc["checks"]) for s in ("pass", "warn", "fail", "skip")}
    section = doc["sections"]["detect"]
    s = scenario.scenario
    # Every GPU NVML enumerates is in the report (one it cannot open without a name); none when NVML cannot start.
    opened = [None if g.lost or g.handle_error is not None else g.name for g in s.gpus]
    expected = [] if s.nvml_init_error is not None else opened
    assert [g["name"] for g in section["gpus"]] == expected
    assert section["llama_cpp"]["version"] in ("0.3.36", None)


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_json_identifies_the_gpu_and_driver(scenario: Installed) -> None:
    _, doc = detect_json()
    assert doc["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    assert doc["gpu"]["uuid"] == "GPU-5f3c2a8e-1b7d-4c9a-9e42-7d1c0b6a3f21"
    assert doc["versions"]["nvidia_driver"] == "550.107.02"
    assert doc["versions"]["cuda_driver"] == "12.4"
    assert doc["versions"]["torch_cuda"] == "12.4"
    section = doc["sections"]["detect"]
    assert section["cuda_driver_api"]["cuInit"] == "CUDA_SUCCESS"
    assert section["llama_cpp"]["cuda_archs"] == ["8.9"]
    assert section["llama_cpp"]["backends"] == ["CUDA", "CPU"]
    assert section["torch"]["devices"][0]["kernel_ok"] is True
    assert section["platform"]["kernel"] == "6.8.0-45-generic"


@pytest.mark.parametrize("scenario", ["wsl2_unsupported_fields"], indirect=True)
def test_json_unsupported_fields_are_null(scenario: Installed) -> None:
    _, doc = detect_json()
    gpu = doc["gpu"]
    for key in ("temperature_c", "power_w", "power_limit_w", "persistence_mode", "ecc_enabled", "mig_enabled"):
        assert gpu[key] is None, key
    for key in ("utilization_gpu_percent", "pcie_gen_current", "pcie_width_max", "retired_pages"):
        assert gpu[key] is None, key
    assert doc["sections"]["detect"]["platform"]["wsl2"] is True


@pytest.mark.parametrize("scenario", ["two_gpus_one_hidden"], indirect=True)
def test_json_marks_hidden_gpus(scenario: Installed) -> None:
    _, doc = detect_json()
    gpus = doc["sections"]["detect"]["gpus"]
    assert [(g["index"], g["name"], g["hidden"]) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 3090", True),
        (1, "NVIDIA GeForce RTX 4090", False),
    ]
    assert doc["gpu"]["index"] == 1  # the first usable GPU, not the hidden one
    env = next(c for c in doc["checks"] if c["id"] == "env.cuda_visible_devices")
    assert env["evidence"] == {"CUDA_VISIBLE_DEVICES": "1", "hidden": [0]}


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_unknown_device_is_a_one_line_usage_error(scenario: Installed) -> None:
    result = invoke("detect", "--device", "5")
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    assert first == "Error: --device 5: no such GPU (found 1: 0)"
    assert rest == ["Fix: Pick an index from `kcuda-validate detect`."]


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_skip_torch_never_imports_torch(scenario: Installed) -> None:
    result, doc = detect_json("--skip-torch")
    assert result.exit_code == ExitCode.OK
    assert scenario.torch_imports == 0
    torch = next(c for c in doc["checks"] if c["id"] == "torch.cuda")
    assert (torch["status"], torch["summary"]) == ("skip", "skipped (--skip-torch)")
    # Without the flag the fake torch is imported exactly once.
    invoke("detect")
    assert scenario.torch_imports == 1


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_cpu_run_on_no_driver_passes_with_skips(scenario: Installed) -> None:
    result, doc = detect_json("--device", "cpu")
    assert result.exit_code == ExitCode.OK
    assert doc["device_mode"] == "cpu"
    assert doc["passed"] is True
    assert doc["gpu_validated"] is False
    status = {c["id"]: c["status"] for c in doc["checks"]}
    for cid in ("driver.nvml", "cuda.driver_api", "torch.cuda", "llama.build"):
        assert status[cid] == "skip", cid
    assert "fail" not in status.values()
    assert scenario.torch_imports == 0

    human = invoke("detect", "--device", "cpu")
    assert human.exit_code == ExitCode.OK
    assert human.stdout.startswith("kcuda-validate detect — CPU RUN (not a GPU validation)\n")
    assert "PASSED (CPU run): the pipeline works on the CPU; no GPU was validated." in human.stdout


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_quiet_prints_only_the_verdict(scenario: Installed) -> None:
    result = invoke("detect", "-q")
    assert result.exit_code == ExitCode.GPU_UNUSABLE
    assert result.stdout == "FAILED: GPU present but the stack cannot use it (exit 4)\n"


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_rebuild_command_is_printed_whole(scenario: Installed) -> None:
    """The fix is copy-pasted into a shell: the rebuild command must survive rendering (modulo wrapping)."""
    out = " ".join(invoke("detect").stdout.split())
    assert "fix: Run `kcuda-validate setup`: it builds llama-cpp-python with CUDA for this machine's GPUs" in out


@pytest.mark.parametrize("scenario", ["below_minimums"], indirect=True)
def test_minimum_options_reach_the_detector(scenario: Installed) -> None:
    assert invoke("detect", "--min-vram-gb", "1.5", "--min-compute", "5.0").exit_code == ExitCode.OK
    assert invoke("detect", "--min-vram-gb", "1.5").exit_code == ExitCode.BELOW_THRESHOLD


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_report_and_junit_files(scenario: Installed, tmp_path: Path) -> None:
    report, junit = tmp_path / "out" / "report.json", tmp_path / "out" / "detect.xml"
    result = invoke("detect", "--report", str(report), "--junit-xml", str(junit))
    assert result.exit_code == ExitCode.OK
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 0
    assert 'name="gpu.0: GPU 0"' in junit.read_text()
