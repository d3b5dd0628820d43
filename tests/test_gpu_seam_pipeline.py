"""The model pipeline with the hardware seam faked (NVML says there is a GPU) and llama.cpp real (a CPU build).

This is the old tool's worst failure, pinned: a GPU is present, the llama.cpp build cannot offload, and
the run must FAIL with the offload evidence — never pass. Also: telemetry sampling and --all-devices.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fakes.hardware import MIB, RTX_4090, SCENARIOS, FakeHandle, FakeProcess, FakePynvml, Scenario, install
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from kcuda_validate.gpu.nvml import Nvml
from kcuda_validate.pipeline import token_agreement
from kcuda_validate.telemetry import TelemetrySampler, summarize
from test_report import validate


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_load_on_a_cpu_only_build_with_a_gpu_present_fails(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("healthy_one_gpu", monkeypatch, tmp_path)
    code, doc = run_json("load", "--model-path", str(tiny_model))
    assert code == ExitCode.GPU_UNUSABLE
    offload = next(c for c in doc["checks"] if c["id"] == "load.offload")
    assert offload["status"] == "fail"
    assert offload["summary"].startswith("no offload evidence")
    assert "Run `kcuda-validate setup`: it builds llama-cpp-python with CUDA" in offload["fix"]
    assert doc["gpu_validated"] is False
    assert doc["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    # The fit check used the (fake) GPU's free VRAM, not host memory.
    fit = next(c for c in doc["checks"] if c["id"] == "model.fit")
    assert fit["evidence"]["budget"] == "free VRAM"


def test_validate_all_trusts_the_load_evidence_over_the_build_claim(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The faked build says CUDA (detect passes); the real load happens on the CPU build: the verdict is FAIL."""
    install("healthy_one_gpu", monkeypatch, tmp_path)
    code, doc = run_json("validate-all", "--model-path", str(tiny_model), "--max-tokens", "4")
    assert code == ExitCode.GPU_UNUSABLE
    assert doc["stopped_at"] == "load"
    assert all(c["status"] != "fail" for c in doc["checks"] if c["stage"] == "detect")
    assert not any(c["stage"] == "infer" for c in doc["checks"])


def test_all_devices_validates_each_gpu_and_reports_the_worst(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    two = dataclasses.replace(SCENARIOS["two_gpus_one_hidden"], env={})
    install(two, monkeypatch, tmp_path)
    code, doc = run_json("load", "--all-devices", "--model-path", str(tiny_model))
    assert code == ExitCode.GPU_UNUSABLE
    assert set(doc["sections"]["devices"]) == {"0", "1"}
    ids = [c["id"] for c in doc["checks"]]
    assert "gpu0.load.offload" in ids
    assert "gpu1.load.offload" in ids
    assert doc["stopped_at"] == "gpu0.load"
    validate(doc)  # the gpuN. prefixes are ids the report schema accepts


def test_all_devices_conflicts_with_device() -> None:
    result = CliRunner().invoke(cli, ["load", "--all-devices", "--device", "0"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("Error: --all-devices: cannot be combined with --device")


class EnergyCountingNvml(FakePynvml):
    """A GPU drawing 100 W while we watch: the energy counter advances with time, as the driver's does."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.t0 = time.perf_counter()

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        super().nvmlDeviceGetTotalEnergyConsumption(h)
        return 1_000_000 + int((time.perf_counter() - self.t0) * 100_000)


def test_telemetry_sampler_reads_at_most_10_hz_and_integrates_the_energy_counter() -> None:
    gpu = SCENARIOS["healthy_one_gpu"].gpus[0]
    with Nvml.open(EnergyCountingNvml((gpu,))) as nvml:
        sampler = TelemetrySampler(nvml, 0, hz=50).start()  # asks for 50 Hz, gets 10
        time.sleep(0.55)
        summary = sampler.stop()
    assert 2 <= summary.samples <= 8  # never more than 10 Hz (+ one closing read); fewer if the box is busy
    assert summary.interval_s == pytest.approx(0.1)
    assert summary.energy_j == pytest.approx(100 * summary.duration_s, rel=0.2)
    assert summary.vram_peak_bytes == gpu.memory_used
    metrics = {m.name: m for m in summary.metrics(generated_tokens=50)}
    assert metrics["energy_per_token"].value == pytest.approx(summary.energy_j / 50)
    assert metrics["energy_per_token"].unit == "J/token"


def test_telemetry_is_na_where_the_driver_cannot_report_it() -> None:
    gpu = SCENARIOS["wsl2_unsupported_fields"].gpus[0]
    with Nvml.open(FakePynvml((gpu,))) as nvml:
        sampler = TelemetrySampler(nvml, 0).start()
        time.sleep(0.25)
        summary = sampler.stop()
    assert summary.samples >= 2
    assert summary.energy_j is None
    assert summary.power_mean_w is None
    assert summary.util_mean is None
    metrics = {m.name: m for m in summary.metrics(generated_tokens=10)}
    assert metrics["energy_per_token"].value is None
    assert metrics["vram_peak"].value == gpu.memory_used


def test_summary_of_nothing_is_empty_not_invented() -> None:
    s = summarize([], 0.1)
    assert s.samples == 0
    assert all(m.value is None for m in s.metrics(generated_tokens=10))


@pytest.mark.parametrize(
    ("gpu", "cpu", "temperature", "expected"),
    [
        ((1, 2, 3), (1, 2, 3), 0.0, (True, None, "outputs identical token for token (3 tokens)")),
        (
            (1, 2, 3),
            (1, 9, 3),
            0.0,
            (False, 1, "outputs diverge at token 1 (normal: GPU and CPU kernels round differently)"),
        ),
        (
            (1, 2),
            (1, 2, 3),
            0.0,
            (False, 2, "outputs diverge at token 2 (normal: GPU and CPU kernels round differently)"),
        ),
        (
            (1, 2, 3),
            (1, 2, 3),
            0.8,
            (
                None,
                None,
                "outputs not compared token for token"
                " (the GPU run sampled at --temperature 0.8; the CPU run is greedy)",
            ),
        ),
    ],
)
def test_gpu_and_cpu_outputs_are_compared_only_when_both_are_greedy(
    gpu: tuple[int, ...], cpu: tuple[int, ...], temperature: float, expected: tuple[bool | None, int | None, str]
) -> None:
    assert token_agreement(gpu, cpu, temperature) == expected


def _processes_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path, scenario: Scenario | str
) -> dict[str, Any]:
    install(scenario, monkeypatch, tmp_path)
    _, doc = run_json("load", "--model-path", str(tiny_model))  # the load itself fails: a CPU build of llama.cpp
    return next(c for c in doc["checks"] if c["id"] == "gpu.processes")


def _with_processes(*procs: FakeProcess, unsupported: frozenset[str] = frozenset()) -> Scenario:
    gpu = dataclasses.replace(RTX_4090, processes=procs, unsupported=RTX_4090.unsupported | unsupported)
    return dataclasses.replace(SCENARIOS["healthy_one_gpu"], gpus=(gpu,))


def test_other_processes_on_the_gpu_are_named_as_a_warning(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    busy = _with_processes(
        FakeProcess(4242, 2048 * MIB, "/usr/bin/python3"),
        FakeProcess(77, None, None),  # in another namespace
    )
    check = _processes_check(monkeypatch, tmp_path, tiny_model, busy)
    assert check["status"] == "warn"
    assert check["summary"] == (
        "2 other processes are using GPU 0: pid 4242 (python3, 2,048 MiB), pid 77 (name n/a, VRAM n/a); "
        "the speed, VRAM and energy figures include their work"
    )
    assert check["fix"].startswith("Stop them for clean figures")
    assert check["evidence"]["processes"] == [
        {"pid": 4242, "name": "python3", "used_memory_bytes": 2048 * MIB},
        {"pid": 77, "name": None, "used_memory_bytes": None},
    ]


def test_many_other_processes_are_summarised(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    busy = _with_processes(*(FakeProcess(100 + i, 100 * MIB, f"job{i}") for i in range(5)))
    check = _processes_check(monkeypatch, tmp_path, tiny_model, busy)
    assert check["summary"].startswith("5 other processes are using GPU 0: pid 100 (job0, 100 MiB), ")
    assert "pid 102 (job2, 100 MiB) and 2 more;" in check["summary"]
    assert len(check["evidence"]["processes"]) == 5


@pytest.mark.parametrize(
    ("scenario", "status", "summary"),
    [
        (_with_processes(), "pass", "the driver lists no other process on GPU 0"),
        (
            _with_processes(unsupported=frozenset({"nvmlDeviceGetComputeRunningProcesses"})),
            "skip",
            "the driver cannot list the processes using GPU 0",
        ),
        (
            "wsl2_unsupported_fields",  # WSL2 lists no processes at all: an empty list proves nothing there
            "skip",
            "WSL2's driver does not list GPU processes: make sure nothing else runs",
        ),
    ],
)
def test_an_idle_gpu_passes_and_an_unlistable_one_is_not_called_idle(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scenario: Scenario, status: str, summary: str
) -> None:
    check = _processes_check(monkeypatch, tmp_path, tiny_model, scenario)
    assert (check["status"], check["summary"]) == (status, summary)


@pytest.mark.parametrize(("depth", "command"), [(None, "kcuda-validate"), ("1", "./run kcuda-validate")])
def test_no_gpu_hint_names_the_command_as_it_was_started(
    depth: str | None, command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CPU-run hint after exit 3 is a command to copy: under `uv run` (the README's line) it must say so."""
    install("no_driver", monkeypatch, tmp_path)
    if depth:
        monkeypatch.setenv("UV_RUN_RECURSION_DEPTH", depth)
    result = CliRunner().invoke(cli, ["load", "--synthetic", "4MiB"])
    assert result.exit_code == ExitCode.NO_GPU
    assert result.stdout.splitlines()[-1] == (
        "Without a GPU you can still check the rest of the pipeline, labelled as a CPU run: "
        f"{command} load --device cpu --synthetic 64MiB"
    )


@pytest.mark.parametrize(("order", "warns"), [(None, True), ("PCI_BUS_ID", False)])
def test_gpu_choice_by_index_on_mixed_gpus_says_cuda_may_mean_another(
    order: str | None, warns: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RTX 3090 + 4090 with CUDA_VISIBLE_DEVICES=1: the tool reads 1 as nvidia-smi's GPU 1 (the 4090) and pins the
    worker to its UUID, but CUDA's default numbering (fastest first) may call the 3090 device 1: a warning."""
    from kcuda_validate.checks import Status
    from kcuda_validate.gpu_choice import select_gpu

    env = {"CUDA_VISIBLE_DEVICES": "1"} | ({} if order is None else {"CUDA_DEVICE_ORDER": order})
    install(dataclasses.replace(SCENARIOS["two_gpus_one_hidden"], env=env), monkeypatch, tmp_path)
    if order is None:
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    verdict, ctx = select_gpu(None, cpu_mode=False)
    assert ctx is not None and ctx.info.index == 1
    ctx.nvml.close()
    check = verdict.checks[0]
    assert check.status == (Status.WARN if warns else Status.PASS)
    selected = "GPU 1: NVIDIA GeForce RTX 4090 (cc 8.9, 23.6 GiB free)"
    if warns:
        assert (check.summary, check.fix) == (
            f"{selected}, read from CUDA_VISIBLE_DEVICES='1' in nvidia-smi's numbering; CUDA numbers these mixed"
            " GPUs fastest first, so it may have meant another",
            "Set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA's indices are nvidia-smi's, or name GPUs by UUID"
            " (`nvidia-smi -L`): CUDA_VISIBLE_DEVICES=GPU-<uuid>. Or pass --device N (nvidia-smi's index).",
        )
    else:
        assert check.summary == selected


@pytest.mark.parametrize(
    ("cuda_sees", "chosen"), [((RTX_4090.uuid,), 1), ((SCENARIOS["two_gpus_one_hidden"].gpus[0].uuid,), 0)]
)
def test_gpu_choice_on_mixed_gpus_follows_cuda_own_numbering(
    cuda_sees: tuple[str, ...], chosen: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where CUDA can say which device its index 1 is (cuDeviceGetUuid_v2), the run uses that GPU and does not
    warn: CUDA_VISIBLE_DEVICES=1 may be the 3090 when CUDA numbered the 4090 first."""
    from kcuda_validate.checks import Status
    from kcuda_validate.gpu.nvml import worker_pin
    from kcuda_validate.gpu_choice import select_gpu

    base = SCENARIOS["two_gpus_one_hidden"]
    libcuda = dataclasses.replace(base.libcuda, uuids=cuda_sees)
    install(dataclasses.replace(base, env={"CUDA_VISIBLE_DEVICES": "1"}, libcuda=libcuda), monkeypatch, tmp_path)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    verdict, ctx = select_gpu(None, cpu_mode=False)
    assert ctx is not None
    ctx.nvml.close()
    assert (ctx.info.index, verdict.checks[0].status) == (chosen, Status.PASS)
    assert worker_pin(False, None) == cuda_sees[0]  # the early worker is pinned to the same GPU


@pytest.mark.parametrize(("depth", "command"), [(None, "kcuda-validate"), ("1", "./run kcuda-validate")])
def test_fixes_that_name_a_command_name_it_as_it_was_started(
    depth: str | None, command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From a clone the tool runs as `./run kcuda-validate`; a bare `kcuda-validate detect` is "command not found"."""
    install("no_driver", monkeypatch, tmp_path)
    if depth:
        monkeypatch.setenv("UV_RUN_RECURSION_DEPTH", depth)

    def fix(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code in (ExitCode.USAGE, ExitCode.NO_GPU), result.output
        return next(line for line in result.output.splitlines() if "fix:" in line.lower())

    assert fix("detect", "--check", "nope").endswith(f" (see `{command} detect --list-checks`).")
    assert fix("health", "--check", "nope").endswith(f" (slower checks need `{command} detect`).")
    assert fix("--report", str(tmp_path / "r.json"), "exit-codes") == (
        f"Fix: Leave --report out; `{command} exit-codes --json` prints the table as JSON."
    )
    assert fix("setup", "--dry-run") == (
        f"     fix: Install the NVIDIA driver (`{command} detect` says how), or pass --arch (and --cuda) to build an "
        "engine for another machine."
    )


# -- NVML does not start: the model commands' GPU selection reads it as detect does ----------------------------------

CPU_HINT = "Or pass --device cpu for a CPU-only run."
PERMISSION_FIX = (
    "Check /dev/nvidia* permissions (add your user to the `video` group) or run the container with `--gpus all`."
)
WSL_NO_MODULE_FIX = (
    "WSL2 has no NVIDIA kernel module to load: a Linux libnvidia-ml is shadowing the Windows driver's. Remove any "
    "Linux NVIDIA driver inside WSL2 (keep /usr/lib/wsl/lib), run `sudo ldconfig`, then `wsl --shutdown` in "
    "PowerShell (or `wsl.exe --shutdown` from inside WSL)."
)
MISMATCH_FIX = (
    "The kernel module and user-space driver differ (usually after a driver upgrade): reboot, or reload with "
    "`sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia`."
)
# scenario -> (exit code, detect's summary, NVML's own message, the fix): 4 where driver and GPU are there.
NVML_START_FAILURES = {
    "nvml_no_permission": (
        ExitCode.GPU_UNUSABLE,
        "No permission to open the NVIDIA device files",
        "Insufficient Permissions",
        PERMISSION_FIX,
    ),
    "driver_mismatch": (
        ExitCode.GPU_UNUSABLE,
        "Driver/library version mismatch",
        "RM has detected an NVML/RM version mismatch.",
        MISMATCH_FIX,
    ),
    "wsl2_linux_driver_installed": (
        ExitCode.NO_GPU,
        "NVIDIA driver installed but its kernel module is not loaded",
        "Driver Not Loaded",
        WSL_NO_MODULE_FIX,
    ),
}


@pytest.mark.parametrize("command", [("load",), ("infer", "--max-tokens", "1")])
@pytest.mark.parametrize("name", sorted(NVML_START_FAILURES))
def test_gpu_selection_gives_detects_diagnosis_and_exit_code_when_nvml_does_not_start(
    name: str, command: tuple[str, ...], tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No permission on /dev/nvidia* is a GPU the stack cannot use (4), not "no NVIDIA driver or GPU" (3): the
    model commands say what detect says, with its fix and code."""
    install(name, monkeypatch, tmp_path)
    code, why, detail, fix = NVML_START_FAILURES[name]
    detect_code, detect = run_json("detect", "--skip-torch")
    driver = next(c for c in detect["checks"] if c["id"] == "driver.nvml")
    assert (detect_code, driver["summary"], driver["fix"], driver["exit_code"]) == (code, why, fix, code)
    result = CliRunner().invoke(cli, ["--json", command[0], "--model-path", str(tiny_model), *command[1:]])
    doc = json.loads(result.stdout)
    error = f"no usable NVIDIA GPU ({why}; NVML: {detail})"
    assert result.exit_code == code
    assert result.stderr.splitlines()[:2] == [f"Error: {error}", f"Fix: {fix} {CPU_HINT}"]
    assert doc["stopped_at"] == "gpu"
    (select,) = doc["checks"]
    assert (select["id"], select["status"], select["summary"], select["fix"], select["exit_code"]) == (
        "gpu.select",
        "fail",
        error,
        f"{fix} {CPU_HINT}",
        code,
    )
    assert select["evidence"] == {"kind": driver["evidence"]["kind"], "detail": detail}


def test_validate_all_without_permission_on_the_device_files_stops_at_detect_with_4(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install("nvml_no_permission", monkeypatch, tmp_path)
    code, doc = run_json("validate-all", "--model-path", str(tiny_model), "--max-tokens", "1")
    assert (code, doc["stopped_at"]) == (ExitCode.GPU_UNUSABLE, "detect")
    failed = [(c["id"], c["summary"], c["exit_code"]) for c in doc["checks"] if c["status"] == "fail"]
    assert failed == [
        ("driver.nvml", "No permission to open the NVIDIA device files", ExitCode.GPU_UNUSABLE),
        ("cuda.driver_api", "cuInit failed: CUDA_ERROR_NO_DEVICE", ExitCode.GPU_UNUSABLE),
    ]


def test_gpu_selection_without_the_nvml_bindings_is_unusable_not_absent() -> None:
    """No scenario removes nvidia-ml-py (the fakes stand in for it): the judge is called on the real error."""
    from kcuda_validate.checks import Status
    from kcuda_validate.gpu.nvml import NvmlInitError
    from kcuda_validate.gpu_choice import nvml_unavailable

    exc = NvmlInitError("bindings_missing", "nvidia-ml-py is not installed (No module named 'pynvml')")
    check = nvml_unavailable(exc, wsl2=False)
    assert (check.status, check.summary, check.fix, check.exit_code) == (
        Status.FAIL,
        "no usable NVIDIA GPU (nvidia-ml-py is not installed in this environment; NVML: nvidia-ml-py is not "
        "installed (No module named 'pynvml'))",
        "Reinstall the tool's locked dependencies: `uv sync --inexact` in the checkout, which keeps what setup added "
        f"(a plain `uv sync` removes it), or run through `./run kcuda-validate ...`, which syncs. {CPU_HINT}",
        ExitCode.GPU_UNUSABLE,
    )
