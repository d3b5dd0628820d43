"""A driver but no usable GPU, on every model command: exit 3 or 4, saying what the driver sees and why.

The old tool printed `Error: --device None: no such GPU` (exit 2) for all of these, naming an option the
user never passed. The hardware seam is faked with the named scenarios of fakes/hardware.py; the CLI,
NVML wrapper, detector and pipeline run for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fakes.hardware import MODEL_RUN_SCENARIOS, install
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode

DRIVER = "the NVIDIA driver 550.107.02"
CPU = "Or pass --device cpu for a CPU-only run."
UNHIDE = (
    "Unset CUDA_VISIBLE_DEVICES (`unset CUDA_VISIBLE_DEVICES`), or set it to an index or UUID that "
    f"`nvidia-smi -L` lists. {CPU}"
)
LOST = "Check `sudo dmesg | grep -i xid` (Xid 79); reboot, and check the GPU's power and seating or PCIe riser. " + CPU
RTX = "GPU 0 (NVIDIA GeForce RTX 4090)"

# scenario -> (exit code, Error line, Fix line)
CASES = {
    "no_device": (
        ExitCode.NO_GPU,
        f"no GPU: {DRIVER} is loaded but sees no GPU",
        "Check that the GPU is seated and powered (`lspci | grep -i nvidia`), and that a container was started "
        "with `--gpus all`. A pre-Turing GPU (Maxwell, Pascal, Volta) is not driven by the open kernel module (the "
        "default since driver 560): if `sudo dmesg | grep NVRM` says so, install the proprietary flavour of "
        f"branch 580 or older, the last for those GPUs (e.g. Ubuntu `nvidia-driver-580`, not `-580-open`). {CPU}",
    ),
    "all_gpus_hidden": (
        ExitCode.GPU_UNUSABLE,
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: {RTX} is hidden by CUDA_VISIBLE_DEVICES='-1'",
        UNHIDE,
    ),
    "all_gpus_hidden_empty": (
        ExitCode.GPU_UNUSABLE,
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: {RTX} is hidden by CUDA_VISIBLE_DEVICES=''",
        UNHIDE,
    ),
    "visible_devices_unknown_uuid": (
        ExitCode.GPU_UNUSABLE,
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: {RTX} is hidden by "
        "CUDA_VISIBLE_DEVICES='GPU-00000000-dead-beef-0000-000000000000'",
        UNHIDE,
    ),
    "gpu_lost": (
        ExitCode.GPU_UNUSABLE,
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: GPU 0 has fallen off the bus (NVML: GPU is lost)",
        LOST,
    ),
    "gpu_no_handle": (
        ExitCode.GPU_UNUSABLE,
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: "
        "GPU 0: NVML returned no handle for this index (Unknown Error)",
        'Run `nvidia-smi` and `sudo dmesg | grep -i xid`; "Unable to determine the device handle" usually needs a '
        f"reboot. In a container, check that /dev/nvidia* for this GPU is mounted. {CPU}",
    ),
}
COMMANDS = {"load": [], "infer": ["--max-tokens", "4"]}


def run(*args: str) -> tuple[Result, dict]:
    result = CliRunner().invoke(cli, ["--json", *args])
    return result, json.loads(result.stdout)


def assert_one_error(result: Result, error: str, fix: str) -> None:
    lines = result.stderr.splitlines()
    assert lines[:2] == [f"Error: {error}", f"Fix: {fix}"], result.stderr
    assert lines[2].startswith("Log: ") and len(lines) == 3
    assert "--device None" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_model_command_without_a_usable_gpu_says_why(
    name: str, command: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install(name, monkeypatch, tmp_path)
    code, error, fix = CASES[name]
    result, doc = run(command, "--model-path", str(tiny_model), *COMMANDS[command])
    assert result.exit_code == code
    assert_one_error(result, error, fix)
    assert not error.startswith("--")  # the message names no option: the user passed none
    assert doc["stopped_at"] == "gpu"
    select = next(c for c in doc["checks"] if c["id"] == "gpu.select")
    assert (select["status"], select["summary"], select["fix"], select["exit_code"]) == ("fail", error, fix, code)
    assert [c["id"] for c in doc["checks"]] == ["gpu.select"]  # nothing else was tried: no model was read
    assert doc["versions"]["nvidia_driver"] == "550.107.02"


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_all_without_a_usable_gpu_stops_at_detect_with_3_or_4(
    name: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install(name, monkeypatch, tmp_path)
    code = CASES[name][0]
    result, doc = run("validate-all", "--model-path", str(tiny_model), "--max-tokens", "4")
    assert result.exit_code == code, result.stderr
    assert doc["stopped_at"] == "detect"
    assert "--device None" not in result.stdout + result.stderr
    assert not any(c["stage"] in ("gpu", "model", "load", "infer") for c in doc["checks"])


def test_validate_all_when_the_gpu_is_lost_after_detect(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Detect saw a healthy GPU; by the model stage it has fallen off the bus: exit 4, and why."""
    installed = install("gpu_lost_after_detect", monkeypatch, tmp_path)
    result, doc = run("validate-all", "--model-path", str(tiny_model), "--max-tokens", "4", "--skip-torch")
    assert installed.nvml.inits == 3  # worker pin, detect, GPU selection: the loss came where it was meant to
    assert next(c for c in doc["checks"] if c["id"] == "gpu.0")["status"] == "pass"
    error = (
        f"no usable GPU: {DRIVER} sees 1 GPU, and none can be used: GPU 0 has fallen off the bus (NVML: GPU is lost)"
    )
    assert result.exit_code == ExitCode.GPU_UNUSABLE
    assert_one_error(result, error, LOST)
    assert doc["stopped_at"] == "gpu"


def test_all_devices_with_every_gpu_hidden(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install("all_gpus_hidden_empty", monkeypatch, tmp_path)
    code, error, fix = CASES["all_gpus_hidden_empty"]
    result, doc = run("load", "--all-devices", "--model-path", str(tiny_model))
    assert result.exit_code == code
    assert_one_error(result, error, fix)
    assert doc["stopped_at"] == "gpu"


def test_device_n_on_a_lost_gpu_is_unusable_not_tried(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("gpu_lost", monkeypatch, tmp_path)
    result, doc = run("load", "--device", "0", "--model-path", str(tiny_model))
    assert result.exit_code == ExitCode.GPU_UNUSABLE
    assert_one_error(result, "--device 0: GPU 0 has fallen off the bus (NVML: GPU is lost)", LOST)
    assert not any(c["stage"] == "load" for c in doc["checks"])


def test_device_n_without_any_gpu_is_no_gpu(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install("no_device", monkeypatch, tmp_path)
    code, error, fix = CASES["no_device"]
    result, _ = run("infer", "--device", "0", "--model-path", str(tiny_model))
    assert result.exit_code == code
    assert_one_error(result, error, fix)


def test_device_n_beyond_the_gpus_is_a_usage_error_listing_them(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("healthy_one_gpu", monkeypatch, tmp_path)
    result = CliRunner().invoke(cli, ["load", "--device", "3", "--model-path", str(tiny_model)])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [
        "Error: --device 3: no such GPU (the driver sees 1 GPU: 0)",
        "Fix: Pick an index from `kcuda-validate detect`, or --device cpu.",
    ]


@pytest.mark.parametrize("name", sorted(MODEL_RUN_SCENARIOS))
def test_the_extra_scenarios_pin_their_detect_verdict(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    installed = install(name, monkeypatch, tmp_path)
    result = CliRunner().invoke(cli, ["detect", "--skip-torch"])
    assert result.exit_code == installed.scenario.exit_code, result.stdout


@pytest.mark.parametrize("command", ["load", "infer", "validate-all"])
@pytest.mark.parametrize(
    ("size", "error"),
    [
        ("bogus", "--synthetic bogus: not a size: expected a number with an optional unit"),
        ("10KiB", "--synthetic 10KiB: 10240 bytes is out of range: a synthetic model must be between 1MiB and 64GiB"),
    ],
)
def test_a_bad_synthetic_size_is_a_usage_error_before_the_gpu_is_looked_at(
    command: str, size: str, error: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a machine without a GPU a typo in --synthetic is still named as the typo (exit 2), not as exit 3."""
    install("no_driver", monkeypatch, tmp_path)
    result = CliRunner().invoke(cli, [command, "--synthetic", size])
    assert (result.exit_code, result.stdout) == (ExitCode.USAGE, "")
    assert result.stderr.splitlines()[0].startswith(f"Error: {error}")
