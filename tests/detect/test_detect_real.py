"""`detect` on this machine, with nothing faked: the real no-driver path.

These run where no NVIDIA driver is installed (CI, laptops without a GPU) and skip themselves on a
machine whose libnvidia-ml.so.1 loads: there the real path is the GPU tests' business.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from machine import driver_present

pytestmark = pytest.mark.skipif(driver_present(), reason="an NVIDIA driver is installed: not the no-driver path")

NO_DRIVER = "No NVIDIA driver: libnvidia-ml.so.1 was not found"


def _checks(doc: dict) -> dict[str, dict]:
    return {c["id"]: c for c in doc["checks"]}


@pytest.mark.parametrize("args", [["--skip-torch"], []], ids=["skip-torch", "with-torch"])
def test_real_detect_without_driver(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["detect", *args])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    assert "Traceback" not in result.output
    assert NO_DRIVER in result.stdout
    assert result.stdout.rstrip().endswith("FAILED: no NVIDIA driver or GPU (exit 3)")

    doc = json.loads(CliRunner().invoke(cli, ["detect", "--json", *args]).stdout)
    checks = _checks(doc)
    nvml = checks["driver.nvml"]
    assert (nvml["status"], nvml["summary"]) == ("fail", NO_DRIVER)
    assert nvml["evidence"]["kind"] == "library_not_found"
    assert "ubuntu-drivers" in nvml["fix"]
    assert checks["cuda.driver_api"]["status"] == "skip"
    # Without a driver torch is never imported (it would cost seconds and say nothing new).
    assert checks["torch.cuda"]["status"] == "skip"
    assert "torch.kernel.0" not in checks
    # This machine's llama-cpp-python is inspected for real: whatever its build, there is no GPU to offload to.
    assert checks["llama.build"]["status"] in ("skip", "pass")
    assert doc["sections"]["detect"]["gpus"] == []


def test_real_detect_cpu_run_passes() -> None:
    result = CliRunner().invoke(cli, ["detect", "--device", "cpu", "--json"])
    assert result.exit_code == ExitCode.OK
    doc = json.loads(result.stdout)
    assert doc["device_mode"] == "cpu"
    assert doc["gpu_validated"] is False
    assert _checks(doc)["driver.nvml"]["status"] == "skip"


def _console_script() -> list[str]:
    bin_dir = Path(sys.executable).parent
    exe = shutil.which("kcuda-validate", path=str(bin_dir))
    return [exe] if exe else [sys.executable, "-m", "kcuda_validate"]


def test_console_script_json_without_driver(tmp_path: Path) -> None:
    env = {**os.environ, "KCUDA_LOG_DIR": str(tmp_path / "logs")}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(
        [*_console_script(), "detect", "--json"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == ExitCode.NO_GPU, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert doc["exit_code"] == 3
    assert doc["exit_reason"] == "no_gpu"
    assert _checks(doc)["driver.nvml"]["summary"] == NO_DRIVER
