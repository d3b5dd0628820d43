"""The real detector (run_detect over the check registry) on every named hardware scenario, plus the NVML
wrapper, CUDA_VISIBLE_DEVICES parsing and the platform probe on fake filesystem roots.

Only the hardware seams are faked (tests/fakes/hardware.py); the detector logic runs for real.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pynvml
import pytest

from fakes.hardware import (
    RTX_3060_LAPTOP,
    RTX_3090,
    RTX_4090,
    SCENARIOS,
    FakePynvml,
    Installed,
    build_root,
)
from kcuda_validate.cache_dir import hub_cache_dir
from kcuda_validate.checks import Check, Status
from kcuda_validate.detect import DetectOptions, DetectReport, parse_visible_devices
from kcuda_validate.detect import run_detect as detect_all
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.gpu.nvml import GpuInfo, GpuLostError, Nvml, NvmlInitError
from kcuda_validate.gpu.platform import mount_fstype, on_windows_mount, probe_platform
from kcuda_validate.llm.build import setup_fix

ALL = sorted(SCENARIOS)


@dataclasses.dataclass(frozen=True)
class Expect:
    """What detect must conclude on a scenario: the failing checks and key words of summaries and fixes."""

    failing: frozenset[str] = frozenset()
    warning: frozenset[str] = frozenset({"env.hub"})  # tests/conftest.py sets HF_HUB_OFFLINE=1
    summary: tuple[tuple[str, str], ...] = ()  # (check id, text the summary contains)
    fix: tuple[tuple[str, str], ...] = ()  # (check id, text the fix contains)
    absent: frozenset[str] = frozenset()  # check ids that must not appear


def expect(failing: tuple[str, ...] = (), warning: tuple[str, ...] = ("env.hub",), **kw: object) -> Expect:
    return Expect(frozenset(failing), frozenset(warning), **kw)  # type: ignore[arg-type]


EXPECT: dict[str, Expect] = {
    "healthy_one_gpu": expect(
        summary=(
            ("platform.os", "Linux, kernel 6.8.0-45-generic"),
            ("driver.nvml", "driver 550.107.02, supports CUDA ≤ 12.4, 1 GPU(s)"),
            ("gpu.0", "NVIDIA GeForce RTX 4090, cc 8.9, 24.0 GiB"),
            ("cuda.driver_api", "cuInit ok, CUDA 12.4, 1 device(s) visible"),
            ("torch.kernel.0", "512×512 matmul on NVIDIA GeForce RTX 4090 matches CPU (1.5 ms)"),
            ("llama.build", "backends CUDA+CPU"),
            ("llama.archs.0", "built for 8.9; GPU is 8.9"),
            ("min.0", "24.0 GiB ≥ 2 GiB, cc 8.9 ≥ 6.1"),
        ),
        absent=frozenset({"env.cuda_visible_devices", "platform.wsl_libs"}),
    ),
    "two_gpus_one_hidden": expect(
        warning=("env.cuda_visible_devices", "env.hub"),
        summary=(
            ("env.cuda_visible_devices", "CUDA_VISIBLE_DEVICES='1' hides GPU 0 (NVIDIA GeForce RTX 3090)"),
            ("gpu.0", "NVIDIA GeForce RTX 3090 hidden by CUDA_VISIBLE_DEVICES"),
            ("gpu.1", "NVIDIA GeForce RTX 4090"),
            ("torch.kernel.0", "NVIDIA GeForce RTX 4090"),  # torch renumbers: cuda:0 is NVML GPU 1
            ("llama.archs.1", "built for 8.6, 8.9; GPU is 8.9"),
        ),
        absent=frozenset({"min.0", "llama.archs.0", "torch.kernel.1"}),
    ),
    "all_gpus_hidden": expect(
        failing=("cuda.driver_api", "torch.cuda", "env.cuda_visible_devices"),
        summary=(
            ("env.cuda_visible_devices", "hides every GPU: 0 (NVIDIA GeForce RTX 4090)"),
            ("cuda.driver_api", "CUDA_ERROR_NO_DEVICE"),
        ),
        fix=(("env.cuda_visible_devices", "unset CUDA_VISIBLE_DEVICES"),),
        absent=frozenset({"min.0"}),
    ),
    "wsl2_unsupported_fields": expect(
        summary=(
            ("platform.os", "WSL2, kernel 5.15.153.1-microsoft-standard-WSL2"),
            ("platform.wsl_libs", "present in /usr/lib/wsl/lib"),
            ("gpu.0", "NVIDIA GeForce RTX 3060 Laptop GPU, cc 8.6, 6.0 GiB (6.0 free)"),
            ("min.0", "6.0 GiB ≥ 2 GiB"),
            ("platform.wsl_linux_driver", "none installed: CUDA uses the Windows driver's libraries"),
        ),
        absent=frozenset({"platform.model_dir"}),
    ),
    "wsl2_models_on_windows_drive": expect(
        warning=("platform.model_dir", "env.hub"),
        summary=(("platform.model_dir", "/mnt/c/Users/dev/.cache/huggingface/hub is on a Windows drive"),),
        fix=(("platform.model_dir", "Linux filesystem"),),
    ),
    "wsl2_linux_driver_installed": expect(
        failing=("platform.wsl_linux_driver", "driver.nvml"),
        summary=(
            ("platform.wsl_linux_driver", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
            ("driver.nvml", "kernel module is not loaded"),
            ("cuda.driver_api", "cuInit ok"),
        ),
        fix=(
            ("platform.wsl_linux_driver", "`dpkg -S /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1` names them"),
            ("platform.wsl_linux_driver", "'nvidia-driver-*' 'libnvidia-compute-*'"),
            ("platform.wsl_linux_driver", "keep nvidia-container-toolkit"),
            ("driver.nvml", "WSL2 has no NVIDIA kernel module"),
        ),
    ),
    "wsl2_missing_libs": expect(
        failing=("platform.wsl_libs", "driver.nvml"),
        summary=(("platform.wsl_libs", "missing libcuda.so.1, libnvidia-ml.so.1 from the Windows driver"),),
        fix=(("platform.wsl_libs", "`wsl --shutdown` in PowerShell"),),
    ),
    "wsl1": expect(
        failing=("platform.os", "driver.nvml"),
        summary=(("platform.os", "WSL1 has no GPU support"),),
        fix=(("platform.os", "wsl --set-version <distro> 2"),),
    ),
    "no_driver": expect(
        failing=("driver.nvml",),
        summary=(
            ("driver.nvml", "No NVIDIA driver: libnvidia-ml.so.1 was not found"),
            ("cuda.driver_api", "libcuda.so.1 not found (no driver)"),
            ("torch.cuda", "skipped: no NVIDIA driver"),
            ("llama.build", "CPU-only build (CPU); no GPU to offload to"),
        ),
        fix=(
            ("driver.nvml", "sudo ubuntu-drivers install"),
            ("driver.nvml", "sudo dnf install nvidia-open"),
            ("driver.nvml", "`wsl --update` in PowerShell"),
        ),
    ),
    "driver_mismatch": expect(
        failing=("driver.nvml", "cuda.driver_api"),
        summary=(
            ("driver.nvml", "Driver/library version mismatch"),
            ("cuda.driver_api", "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
        ),
        fix=(("driver.nvml", "reboot"), ("cuda.driver_api", "reboot")),
    ),
    "no_device": expect(
        failing=("driver.nvml", "cuda.driver_api", "torch.cuda"),
        summary=(("driver.nvml", "loaded but it sees no GPU"), ("torch.cuda", "PyTorch sees no CUDA device")),
        fix=(("driver.nvml", "--gpus all"),),
    ),
    "gpu_lost": expect(
        failing=("gpu.0", "cuda.driver_api", "torch.cuda"),
        summary=(("gpu.0", "fallen off the bus"), ("cuda.driver_api", "CUDA_ERROR_UNKNOWN")),
        fix=(("gpu.0", "Xid 79"),),
        absent=frozenset({"min.0", "llama.archs.0"}),
    ),
    "gpu_no_handle": expect(
        failing=("gpu.0", "cuda.driver_api", "torch.cuda"),
        summary=(("gpu.0", "NVML cannot open this GPU: NVML returned no handle for this index (Unknown Error)"),),
        fix=(("gpu.0", "Unable to determine the device handle"),),
        absent=frozenset({"min.0", "llama.archs.0"}),
    ),
    "cuda_stub_library": expect(
        failing=("cuda.driver_api", "torch.cuda"),
        summary=(("cuda.driver_api", "cuInit failed: CUDA_ERROR_STUB_LIBRARY"),),
        fix=(("cuda.driver_api", "lib64/stubs from LD_LIBRARY_PATH"),),
    ),
    "torch_cpu_only": expect(
        failing=("torch.cuda",),
        summary=(("torch.cuda", "torch 2.5.1+cpu is a CPU-only build"),),
        fix=(("torch.cuda", "--index-url https://download.pytorch.org/whl/cu124"),),
    ),
    "torch_newer_cuda_than_driver": expect(
        failing=("torch.cuda",),
        summary=(("torch.cuda", "torch is built for CUDA 13.0 but the driver supports only CUDA 12.4"),),
        fix=(("torch.cuda", "Update the NVIDIA driver"), ("torch.cuda", "whl/cu124")),
    ),
    "torch_no_driver": expect(
        failing=("torch.cuda",),
        summary=(("torch.cuda", "PyTorch found no NVIDIA driver"),),
        fix=(("torch.cuda", "LD_LIBRARY_PATH"),),
    ),
    "torch_not_installed": expect(
        failing=("torch.cuda",),
        summary=(("torch.cuda", "PyTorch is not installed"),),
        fix=(("torch.cuda", "`uv sync --inexact`"),),
    ),
    "torch_no_kernel_image": expect(
        failing=("torch.cuda",),
        summary=(
            ("torch.cuda", "cuda:0: RuntimeError: CUDA error: no kernel image is available for execution"),
            ("llama.archs.0", "built for 12.0; GPU is 12.0"),
        ),
        fix=(("torch.cuda", "compute capability"),),
    ),
    "llama_cpu_only_with_gpu": expect(
        failing=("llama.build",),
        summary=(("llama.build", "llama-cpp-python 0.3.36 is a CPU-only build (CPU)"),),
        fix=(("llama.build", "Run `kcuda-validate setup`"), ("llama.build", setup_fix("kcuda-validate"))),
    ),
    "llama_not_installed": expect(
        failing=("llama.build",),
        summary=(("llama.build", "llama-cpp-python is not installed"),),
        fix=(("llama.build", "`uv sync --inexact` in the checkout"), ("llama.build", "run `kcuda-validate setup`.")),
    ),
    "llama_missing_cudart": expect(
        failing=("llama.build",),
        summary=(("llama.build", "libllama failed to load: libcudart.so.12"),),
        fix=(("llama.build", "Run `kcuda-validate setup`: it puts back the CUDA 12 runtime libraries"),),
    ),
    "arch_mismatch": expect(
        failing=("llama.archs.0",),
        summary=(("llama.archs.0", "built for 9.0; nothing runs on a 8.6 GPU"),),
        fix=(("llama.archs.0", "Run `kcuda-validate setup`: it rebuilds llama-cpp-python for sm_86"),),
    ),
    "below_minimums": expect(
        failing=("min.0",),
        summary=(
            ("min.0", "VRAM 1.95 GiB < 2 GiB (short by 50 MiB)"),
            ("min.0", "compute capability 5.0 < 6.1"),
            ("llama.archs.0", "GPU is 5.0"),
        ),
        fix=(("min.0", "--min-vram-gb"),),
    ),
    "datacenter_mig_ecc": expect(
        warning=("gpu.0", "env.hub"),
        summary=(
            ("gpu.0", "retired memory pages pending"),
            ("gpu.0", "MIG mode is on"),
            ("gpu.0", "PCIe link x8, card and slot allow x16"),
        ),
        fix=(("gpu.0", "Reboot to retire the pending pages"), ("gpu.0", "-mig 0"), ("gpu.0", "reseat the card")),
    ),
    "power_capped": expect(
        warning=("perf.idle.0", "env.hub"),
        summary=(("perf.idle.0", "power limit 200 W, default 450 W"),),
        fix=(("perf.idle.0", "`sudo nvidia-smi -i 0 -pl 450`"),),
    ),
    "thermal_slowdown_idle": expect(
        warning=("perf.idle.0", "env.hub"),
        summary=(("perf.idle.0", "clocks held back at idle by HW slowdown, HW thermal slowdown at 91 °C"),),
        fix=(("perf.idle.0", "Improve cooling"),),
    ),
    "degraded_pcie": expect(
        warning=("gpu.0", "env.hub"),  # the width, in the GPU check; gen 1 of 4 at idle is not a fault
        summary=(
            ("gpu.0", "PCIe link x4, card and slot allow x16"),
            ("perf.idle.0", "power limit 450 W = default; no slowdown"),
        ),
        fix=(("gpu.0", "The link trained narrower than card and slot allow: reseat the card (no riser)"),),
    ),
    "row_remap_pending": expect(
        warning=("perf.idle.0", "env.hub"),
        summary=(("perf.idle.0", "row remap pending (0 correctable, 1 uncorrectable)"),),
        fix=(("perf.idle.0", "`sudo nvidia-smi -r -i 0`"),),
    ),
    "nvml_fields_unavailable": expect(
        warning=("min.0", "env.hub"),
        summary=(
            ("gpu.0", "GRID T4-2Q, cc n/a, VRAM n/a"),
            ("min.0", "VRAM and compute capability not reported by NVML; minimums not verified"),
        ),
        absent=frozenset({"llama.archs.0"}),
    ),
}


def run_detect(**options: object) -> DetectReport:
    """The detector as the CLI builds it (including the Hub cache directory it checks on WSL2)."""
    return detect_all(DetectOptions(model_dir=hub_cache_dir(), **options))  # type: ignore[arg-type]


def by_id(report: DetectReport) -> dict[str, Check]:
    checks = {c.id: c for c in report.checks}
    assert len(checks) == len(report.checks), "check ids must be unique"
    return checks


def test_every_scenario_is_pinned() -> None:
    assert set(EXPECT) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", ALL, indirect=True)
def test_detect_scenario(scenario: Installed) -> None:
    report = run_detect()
    exp = EXPECT[scenario.name]
    checks = by_id(report)
    failing = {c.id for c in report.checks if c.status == Status.FAIL}
    warning = {c.id for c in report.checks if c.status == Status.WARN}

    assert report.exit_code == scenario.scenario.exit_code, [c.to_json() for c in report.checks if c.id in failing]
    assert failing == exp.failing
    assert warning == exp.warning
    for cid, text in exp.summary:
        assert text in checks[cid].summary, (cid, checks[cid].summary)
    for cid, text in exp.fix:
        assert text in (checks[cid].fix or ""), (cid, checks[cid].fix)
    assert not exp.absent & set(checks)
    # Every failure and warning tells the user what to do; passes and skips do not nag.
    for c in report.checks:
        if c.status == Status.FAIL:
            assert c.fix, c.id
        if c.status in (Status.PASS, Status.SKIP):
            assert c.fix is None, c.id
    # The report is plain JSON: no NaN, no objects that need default=str.
    json.dumps(report.to_json(), allow_nan=False)
    json.dumps([c.to_json() for c in report.checks], allow_nan=False)


@pytest.mark.parametrize("scenario", ALL, indirect=True)
def test_nvml_is_shut_down_after_detect(scenario: Installed) -> None:
    run_detect()
    if scenario.scenario.nvml_init_error is None:
        assert scenario.nvml.calls.count("nvmlInit") == 1
        assert scenario.nvml.initialised == 0, "nvmlShutdown must balance nvmlInit"


@pytest.mark.parametrize("scenario", ["wsl2_unsupported_fields"], indirect=True)
def test_wsl2_unsupported_fields_are_none(scenario: Installed) -> None:
    report = run_detect()
    gpu = report.to_json()["gpus"][0]
    for key in (
        "temperature_c",
        "power_w",
        "power_limit_w",
        "persistence_mode",
        "pcie_gen_current",
        "pcie_gen_max",
        "pcie_width_current",
        "pcie_width_max",
        "ecc_enabled",
        "retired_pages",
        "retired_pages_pending",
        "mig_enabled",
        "utilization_gpu_percent",
    ):
        assert gpu[key] is None, key
    # What WSL2 does report is still there.
    assert gpu["name"] == RTX_3060_LAPTOP.name
    assert gpu["memory_total_bytes"] == RTX_3060_LAPTOP.memory_total
    assert gpu["compute_capability"] == "8.6"
    assert gpu["peak_bandwidth_bytes_per_s"] == pytest.approx(192 / 8 * 7001e6 * 2)
    # The telemetry sampler on the same GPU: unsupported readings are None, not exceptions.
    with Nvml.open() as nvml:
        sample = nvml.sample(0, t=0.0)
    assert (sample.utilization_gpu, sample.power_w, sample.temperature_c, sample.energy_mj) == (None,) * 4
    assert sample.memory_used == RTX_3060_LAPTOP.memory_used
    assert sample.sm_clock_mhz == RTX_3060_LAPTOP.sm_clock_mhz


@pytest.mark.parametrize("scenario", ["datacenter_mig_ecc"], indirect=True)
def test_ecc_retired_pages_are_counted(scenario: Installed) -> None:
    gpu = run_detect().to_json()["gpus"][0]
    assert gpu["ecc_enabled"] is True
    assert gpu["retired_pages"] == 3
    assert gpu["retired_pages_pending"] is True
    assert gpu["mig_enabled"] is True
    assert gpu["persistence_mode"] is True
    assert (gpu["pcie_width_current"], gpu["pcie_width_max"]) == (8, 16)
    assert gpu["power_limit_w"] == 400.0


@pytest.mark.parametrize("scenario", ["gpu_lost"], indirect=True)
def test_lost_gpu_is_reported_not_raised(scenario: Installed) -> None:
    report = run_detect()
    (gpu,) = report.gpus
    assert gpu.lost
    assert gpu.index == 0
    assert "GPU is lost" in (gpu.error or "")
    assert report.usable_gpus == ()


@pytest.mark.parametrize("scenario", ["two_gpus_one_hidden"], indirect=True)
def test_device_option_selects_one_gpu(scenario: Installed) -> None:
    report = run_detect(device=1)
    ids = set(by_id(report))
    assert {"gpu.1", "min.1", "llama.archs.1"} <= ids
    assert not {"gpu.0", "min.0"} & ids
    # The hidden GPU is still named by the environment check: it looks at every GPU, not only the selected one.
    assert "NVIDIA GeForce RTX 3090" in by_id(report)["env.cuda_visible_devices"].summary


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_unknown_device_index_is_a_usage_error(scenario: Installed) -> None:
    with pytest.raises(UsageError, match=r"--device 5: no such GPU \(found 1: 0\)") as info:
        run_detect(device=5)
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_skip_torch_never_imports_torch(scenario: Installed) -> None:
    checks = by_id(run_detect(skip_torch=True))
    assert scenario.torch_imports == 0
    assert checks["torch.cuda"].status == Status.SKIP
    assert "torch.kernel.0" not in checks


@pytest.mark.parametrize("scenario", ["no_driver", "healthy_one_gpu"], indirect=True)
def test_cpu_mode_requires_no_gpu(scenario: Installed) -> None:
    report = run_detect(cpu_mode=True)
    assert report.exit_code == ExitCode.OK
    checks = by_id(report)
    for cid in ("torch.cuda", "llama.build"):
        assert checks[cid].status == Status.SKIP, cid
    assert scenario.torch_imports == 0  # a CPU run reads torch's version from metadata
    assert not any(c.status == Status.FAIL for c in report.checks)


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_cpu_mode_on_no_driver_skips_the_driver(scenario: Installed) -> None:
    checks = by_id(run_detect(cpu_mode=True))
    assert checks["driver.nvml"].status == Status.SKIP
    assert checks["driver.nvml"].summary.endswith("(CPU run: no GPU needed)")
    assert checks["driver.nvml"].fix is None
    assert checks["cuda.driver_api"].summary == "libcuda.so.1 not found (CPU run)"


@pytest.mark.parametrize("scenario", ["below_minimums"], indirect=True)
def test_lowered_minimums_pass(scenario: Installed) -> None:
    report = run_detect(min_vram_gb=1.5, min_compute=5.0)
    assert report.exit_code == ExitCode.OK
    assert by_id(report)["min.0"].status == Status.PASS


# -- Nvml.query and Nvml.open, directly ------------------------------------------------------------------


def open_fake(*gpus: object, **kw: object) -> tuple[Nvml, FakePynvml]:
    fake = FakePynvml(tuple(gpus), **kw)  # type: ignore[arg-type]
    return Nvml.open(fake), fake  # type: ignore[arg-type]


def test_query_not_supported_is_none() -> None:
    nvml, _ = open_fake(dataclasses.replace(RTX_4090, unsupported=frozenset({"nvmlDeviceGetPowerUsage"})))
    h = nvml.handle(0)
    assert nvml.query("nvmlDeviceGetPowerUsage", h) is None
    assert nvml.query("nvmlDeviceGetName", h) == RTX_4090.name


def test_query_gpu_lost_raises() -> None:
    nvml, fake = open_fake(RTX_4090)
    h = nvml.handle(0)
    fake.gpus = (dataclasses.replace(RTX_4090, lost=True),)  # it falls off the bus after we got its handle
    with pytest.raises(GpuLostError, match="GPU is lost"):
        nvml.query("nvmlDeviceGetMemoryInfo", h)
    info = nvml.gpu(0)
    assert info.lost
    assert info.name is None


def test_query_function_not_found_is_none(caplog: pytest.LogCaptureFixture) -> None:
    class OldDriver(FakePynvml):
        def nvmlDeviceGetMemoryBusWidth(self, h: object) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    fake = OldDriver((RTX_4090,))
    nvml = Nvml.open(fake)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="kcuda_validate.gpu.nvml"):
        assert nvml.query("nvmlDeviceGetMemoryBusWidth", nvml.handle(0)) is None
    assert caplog.records == []  # an older driver lacking a function is expected, not worth a warning
    assert nvml.gpu(0).memory_bus_width_bits is None
    assert nvml.gpu(0).peak_bandwidth_bytes_s is None


def test_query_missing_binding_is_none() -> None:
    nvml, _ = open_fake(RTX_4090)
    assert nvml.query("nvmlDeviceGetNoSuchThing", nvml.handle(0)) is None


def test_query_unexpected_error_is_none_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(FakePynvml):
        def nvmlDeviceGetTemperature(self, h: object, sensor: int) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    nvml = Nvml.open(Flaky((RTX_4090,)))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="kcuda_validate.gpu.nvml"):
        assert nvml.gpu(0).temperature_c is None
    assert "nvmlDeviceGetTemperature" in caplog.text


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "library_not_found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver_not_loaded"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "version_mismatch"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission"),
        (pynvml.NVML_ERROR_UNKNOWN, "other"),
    ],
)
def test_open_names_the_init_failure(code: int, kind: str) -> None:
    with pytest.raises(NvmlInitError) as info:
        Nvml.open(FakePynvml(init_error=code))  # type: ignore[arg-type]
    assert info.value.kind == kind
    assert info.value.detail == str(pynvml.NVMLError(code))


def test_open_without_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    import kcuda_validate.gpu.nvml as nvml_mod

    def no_pynvml() -> None:
        raise ModuleNotFoundError("No module named 'pynvml'")

    monkeypatch.setattr(nvml_mod, "import_pynvml", no_pynvml)
    with pytest.raises(NvmlInitError) as info:
        Nvml.open()
    assert info.value.kind == "bindings_missing"


def test_driver_info() -> None:
    nvml, _ = open_fake(RTX_4090, RTX_3090, driver_version="570.86.15", cuda_driver_version=12080)
    d = nvml.driver()
    assert (d.driver_version, d.cuda_version, d.device_count) == ("570.86.15", "12.8", 2)
    assert nvml.gpu(1).pci_bus_id == RTX_3090.pci_bus_id
    nvml.close()


# -- CUDA_VISIBLE_DEVICES ----------------------------------------------------------------------------------

GPUS = tuple(GpuInfo(index=i, name=g.name, uuid=g.uuid) for i, g in enumerate((RTX_3090, RTX_4090, RTX_3060_LAPTOP)))


@pytest.mark.parametrize(
    ("value", "hidden"),
    [
        (None, None),
        ("0,1,2", ()),
        ("1", (0, 2)),
        (" 2 , 0 ", (1,)),
        ("1,0", (2,)),  # order does not matter for which are hidden
        (RTX_4090.uuid, (0, 2)),
        ("GPU-5f3c2a8e", (0, 2)),  # a UUID prefix
        ("GPU-0a9d,2", (1,)),
        ("1,foo,0", (0, 2)),  # CUDA stops at the first invalid entry
        ("0,7,1", (1, 2)),  # an index that does not exist is invalid too
        ("-1", (0, 1, 2)),
        ("0,-1,1", (1, 2)),
        ("", (0, 1, 2)),
        ("GPU-ffffffff", (0, 1, 2)),
    ],
)
def test_parse_visible_devices(value: str | None, hidden: tuple[int, ...] | None) -> None:
    assert parse_visible_devices(value, GPUS) == hidden


# -- the platform probe on fake roots ---------------------------------------------------------------------


def test_platform_plain_linux(tmp_path: Path) -> None:
    p = probe_platform(build_root("linux", tmp_path))
    assert (p.kernel, p.is_wsl, p.is_wsl2, p.has_dxg) == ("6.8.0-45-generic", False, False, False)
    assert (p.wsl_libs, p.wsl_libs_in_loader_path, p.linux_driver_in_wsl) == ({}, None, ())


def test_platform_wsl2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    p = probe_platform(build_root("wsl2", tmp_path))
    assert (p.is_wsl, p.is_wsl2, p.has_dxg) == (True, True, True)
    assert p.wsl_libs == {"libcuda.so.1": True, "libnvidia-ml.so.1": True}
    assert p.wsl_libs_in_loader_path is True
    assert p.linux_driver_in_wsl == ()


def test_platform_wsl2_without_loader_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    root = build_root("wsl2_no_loader_path", tmp_path)
    assert probe_platform(root).wsl_libs_in_loader_path is False
    # The detector turns that into a warning with the ldconfig fix...
    checks = {c.id: c for c in detect_all(DetectOptions(root=root, skip_torch=True)).checks}
    assert checks["platform.wsl_libs"].status == Status.WARN
    assert "ld.wsl.conf" in (checks["platform.wsl_libs"].fix or "")
    # ...and LD_LIBRARY_PATH counts as being in the loader path.
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x:/usr/lib/wsl/lib/")
    assert probe_platform(root).wsl_libs_in_loader_path is True


def test_platform_wsl2_linux_driver(tmp_path: Path) -> None:
    root = build_root("wsl2_linux_driver", tmp_path)
    assert probe_platform(root).linux_driver_in_wsl == ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",)
    # A loaded Linux kernel module shows too.
    (root / "proc/driver/nvidia").mkdir(parents=True)
    (root / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.107.02\n")
    assert "/proc/driver/nvidia/version" in probe_platform(root).linux_driver_in_wsl


def test_platform_wsl2_link_into_wsl_lib_is_fine(tmp_path: Path) -> None:
    root = build_root("wsl2", tmp_path)
    link = root / "usr/lib/x86_64-linux-gnu/libcuda.so.1"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("../wsl/lib/libcuda.so.1")
    assert link.exists()
    assert probe_platform(root).linux_driver_in_wsl == ()


def test_platform_wsl2_missing_libs(tmp_path: Path) -> None:
    p = probe_platform(build_root("wsl2_missing_libs", tmp_path))
    assert p.is_wsl2
    assert p.wsl_libs == {"libcuda.so.1": False, "libnvidia-ml.so.1": False}


def test_platform_wsl1(tmp_path: Path) -> None:
    p = probe_platform(build_root("wsl1", tmp_path))
    assert (p.is_wsl, p.is_wsl2, p.has_dxg) == (True, False, False)


def test_platform_unreadable_root(tmp_path: Path) -> None:
    p = probe_platform(tmp_path / "empty")
    assert p.kernel is None
    assert not p.is_wsl


@pytest.mark.parametrize(
    ("path", "windows"),
    [
        ("/mnt/c/Users/dev/models", True),  # 9p (WSL2)
        ("/mnt/c", True),
        ("/mnt/d/models", True),  # drvfs
        ("/home/dev/models", False),  # ext4 root
        ("/usr/lib/wsl/lib", False),  # overlay
        ("/mnt/cache/models", False),  # longest-prefix match must respect path components
    ],
)
def test_on_windows_mount(tmp_path: Path, path: str, windows: bool) -> None:
    root = build_root("wsl2", tmp_path)
    assert on_windows_mount(Path(path), root) is windows


def test_mount_fstype_octal_escapes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "proc").mkdir(parents=True)
    (root / "proc/mounts").write_text(
        "/dev/sda1 / ext4 rw 0 0\nE:\\134 /mnt/my\\040drive 9p rw,aname=drvfs 0 0\n", encoding="utf-8"
    )
    assert mount_fstype(Path("/mnt/my drive/models"), root) == ("/mnt/my drive", "9p")
    assert on_windows_mount(Path("/mnt/my drive/models"), root) is True


@pytest.mark.parametrize(
    ("path", "windows"), [("/mnt/c/models", True), ("/mnt/c", True), ("/mnt/data/models", False), ("/srv", False)]
)
def test_on_windows_mount_without_proc_mounts(tmp_path: Path, path: str, windows: bool) -> None:
    assert on_windows_mount(Path(path), tmp_path / "no-proc") is windows


def test_scenarios_do_not_leak_into_the_environment() -> None:
    """install() uses monkeypatch: after a scenario test the real seams are back."""
    import kcuda_validate.gpu.nvml as nvml_mod
    import kcuda_validate.gpu.platform as platform_mod

    assert Path("/") == platform_mod.ROOT
    assert nvml_mod.import_pynvml.__module__ == "kcuda_validate.gpu.nvml"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_an_engine_missing_its_cuda_library_gets_the_fix_for_where_that_library_comes_from() -> None:
    from kcuda_validate.detect.software import load_error_fix

    cu12 = "libllama failed to load: libcublasLt.so.12: cannot open shared object file: No such file or directory"
    assert load_error_fix("kcuda-validate", cu12) == (
        "Run `kcuda-validate setup`: it puts back the CUDA 12 runtime libraries this build loads (libcublasLt.so.12; "
        "a plain `uv sync` removes the ones setup added, `uv run` and `uv sync --inexact` keep them), from its cache "
        "in seconds, or rebuilds."
    )
    cu13 = "libllama failed to load: libcudart.so.13: cannot open shared object file: No such file or directory"
    assert load_error_fix("uv run kcuda-validate", cu13) == (
        "Run `uv sync --inexact`: it restores the environment's NVIDIA runtime wheels, which hold libcudart.so.13, "
        "and keeps what setup added; then `uv run kcuda-validate setup` if this check still fails."
    )
    other = "libllama failed to load: undefined symbol: ggml_backend_cuda_init"
    assert load_error_fix("kcuda-validate", other) == setup_fix(
        "kcuda-validate", "installs a llama-cpp-python build that loads here"
    )


def test_a_gpu_too_full_to_probe_reports_bandwidth_as_na_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fakes.hardware import MIB, Scenario, install

    full = dataclasses.replace(RTX_4090, memory_used=RTX_4090.memory_total - 6 * MIB)
    install(Scenario("full_gpu", "a GPU another process has filled", ExitCode.OK, gpus=(full,)), monkeypatch, tmp_path)
    bw = by_id(run_detect())["torch.bandwidth.0"]
    assert (bw.status, bw.summary) == (Status.SKIP, "n/a: too little free GPU memory to probe (6 MiB)")
    assert bw.evidence["mem_bw_bytes_s"] is None and bw.evidence["h2d_bytes_s"] is None


@pytest.mark.parametrize("scenario", ["degraded_pcie"], indirect=True)
def test_a_narrow_link_shows_in_the_host_to_gpu_figure(scenario: Installed) -> None:
    """degraded_pcie: an x4 link on an x16 card moves a quarter of what the link's maximum allows."""
    bw = by_id(run_detect())["torch.bandwidth.0"]
    assert bw.status == Status.PASS
    assert "host→GPU 6.3 GB/s (gen4 x16: 31.5 GB/s max)" in bw.summary


@pytest.mark.parametrize(
    ("init_result", "fix"),
    [
        (999, "reload the unified-memory module (`sudo modprobe -r nvidia_uvm && sudo modprobe nvidia_uvm`)"),
        (46, "check `nvidia-smi -q -d COMPUTE`"),
        (46, "`sudo nvidia-smi -i N -c DEFAULT`"),
        (804, "`cuda-compat-<major>-<minor>`: /usr/local/cuda/compat on LD_LIBRARY_PATH"),
        (804, "forward compatibility is for data-center GPUs only"),
        (34, "lib64/stubs from LD_LIBRARY_PATH"),
        (304, "Reboot; if it persists reinstall the driver."),  # no specific fix: the general one
    ],
)
def test_cuinit_errors_get_the_fix_for_their_cause(
    init_result: int, fix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fakes.hardware import LibcudaSpec, Scenario, install

    machine = Scenario(
        "cuinit", "cuInit fails on a healthy GPU", ExitCode.GPU_UNUSABLE, libcuda=LibcudaSpec(init_result=init_result)
    )
    install(machine, monkeypatch, tmp_path)
    api = by_id(run_detect(skip_torch=True))["cuda.driver_api"]
    assert api.status == Status.FAIL
    assert fix in (api.fix or ""), api.fix


@pytest.mark.parametrize("scenario", ["gpu_lost", "gpu_no_handle"], indirect=True)
def test_cuinit_unknown_beside_a_broken_gpu_is_not_blamed_on_the_uvm_module(scenario: Installed) -> None:
    checks = by_id(run_detect())
    assert checks["cuda.driver_api"].summary == "cuInit failed: CUDA_ERROR_UNKNOWN"
    assert checks["cuda.driver_api"].fix == "Reboot; if it persists reinstall the driver."
    assert "sudo dmesg | grep -i xid" in (checks["gpu.0"].fix or "")


def test_wsl2_without_dev_dxg_points_at_the_wsl_kernel_not_the_driver(tmp_path: Path) -> None:
    from kcuda_validate.detect.stack import FIX_WSL_DXG, FIX_WSL_LIBS, check_wsl_libs
    from kcuda_validate.gpu.platform import PlatformInfo

    def check(**kw: object) -> Check:
        plat = PlatformInfo(
            **{
                "system": "Linux",
                "kernel": "5.15-microsoft-standard-WSL2",
                "is_wsl": True,
                "is_wsl2": True,
                "has_dxg": True,
                "wsl_libs": {"libcuda.so.1": True},
                **kw,
            }
        )
        (got,) = check_wsl_libs(dataclasses.make_dataclass("F", [("platform", PlatformInfo)])(plat))
        return got

    no_dxg = check(has_dxg=False)
    assert no_dxg.summary == "missing /dev/dxg (the WSL kernel's GPU device, dxgkrnl)"
    assert no_dxg.fix == FIX_WSL_DXG
    assert "`wsl --update` in PowerShell" in FIX_WSL_DXG and "kernel=" in FIX_WSL_DXG
    no_libs = check(wsl_libs={"libcuda.so.1": False})
    assert (no_libs.summary, no_libs.fix) == ("missing libcuda.so.1 from the Windows driver", FIX_WSL_LIBS)
    both = check(has_dxg=False, wsl_libs={"libcuda.so.1": False})
    assert both.fix == f"{FIX_WSL_LIBS} {FIX_WSL_DXG}"


@pytest.mark.parametrize(
    ("env", "command"),
    [
        ({"HF_HUB_CACHE": "/mnt/c/hub", "HF_HOME": "/home/dev/hf"}, "`export HF_HUB_CACHE=~/.cache/huggingface/hub`"),
        ({"HF_HOME": "/mnt/c/hf"}, "`export HF_HOME=~/.cache/huggingface`"),
        ({"XDG_CACHE_HOME": "/mnt/c/cache"}, "`export HF_HUB_CACHE=~/.cache/huggingface/hub`"),
    ],
)
def test_the_windows_drive_fix_names_the_variable_the_hub_cache_comes_from(env: dict[str, str], command: str) -> None:
    """hub_cache_dir prefers HF_HUB_CACHE over HF_HOME: moving HF_HOME would not move a cache HF_HUB_CACHE names."""
    from kcuda_validate.detect.stack import model_dir_fix

    assert command in model_dir_fix(env)
    if "HF_HUB_CACHE" in env:
        assert "HF_HUB_CACHE points at the Windows drive" in model_dir_fix(env)


def test_the_wsl2_driver_removal_names_the_owner_of_the_file_found_and_keeps_the_container_toolkit() -> None:
    from kcuda_validate.detect.stack import wsl_linux_driver_fix

    fix = wsl_linux_driver_fix(("/proc/driver/nvidia/version", "/usr/lib/wsl/../x86_64-linux-gnu/libcuda.so.1"))
    assert "`dpkg -S /usr/lib/wsl/../x86_64-linux-gnu/libcuda.so.1`" in fix
    assert "'^nvidia-.*'" not in fix and "keep nvidia-container-toolkit" in fix
    assert "`dpkg -S libcuda.so.1`" in wsl_linux_driver_fix(("/proc/driver/nvidia/version",))


@pytest.mark.parametrize(
    ("order", "value", "uncertain"),
    [
        (None, "1", True),  # CUDA's default, FASTEST_FIRST: its index 1 may be the 3090
        ("FASTEST_FIRST", "1", True),
        (" pci_bus_id ", "1", False),
        (None, "GPU-5f3c2a8e", False),  # a UUID (prefix) names one GPU whatever the order
    ],
)
def test_indices_on_mixed_gpus_without_pci_bus_order_say_which_gpu_is_unsure(
    order: str | None, value: str, uncertain: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NVML numbers GPUs by PCI bus, CUDA fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID: on an RTX 3090 +
    4090 box, CUDA_VISIBLE_DEVICES=1 may be either card, and detect must not name one as if it knew."""
    from fakes.hardware import install

    env = {"CUDA_VISIBLE_DEVICES": value} | ({} if order is None else {"CUDA_DEVICE_ORDER": order})
    install(dataclasses.replace(SCENARIOS["two_gpus_one_hidden"], env=env), monkeypatch, tmp_path)
    if order is None:
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    check = by_id(run_detect())["env.cuda_visible_devices"]
    assert check.status == Status.WARN
    if uncertain:
        assert (check.summary, check.fix) == (
            f"CUDA_VISIBLE_DEVICES='{value}' hides 1 of 2 GPUs, GPU 0 (NVIDIA GeForce RTX 3090) if its indices are"
            " nvidia-smi's; but CUDA numbers these mixed GPUs fastest first, so it may hide others",
            "Set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA's indices are nvidia-smi's, or name GPUs by UUID"
            " (`nvidia-smi -L`): CUDA_VISIBLE_DEVICES=GPU-<uuid>.",
        )
    else:
        assert check.summary == f"CUDA_VISIBLE_DEVICES={value!r} hides GPU 0 (NVIDIA GeForce RTX 3090)"


@pytest.mark.parametrize(
    ("cuda_sees", "hidden", "summary"),
    [
        # CUDA numbered the 4090 first (fastest first), so its device 1 is the 3090: the 4090 is the hidden one.
        (
            (RTX_3090.uuid,),
            (1,),
            "CUDA_VISIBLE_DEVICES='1' hides GPU 1 (NVIDIA GeForce RTX 4090) (as CUDA itself numbers them)",
        ),
        (
            (RTX_4090.uuid,),
            (0,),
            "CUDA_VISIBLE_DEVICES='1' hides GPU 0 (NVIDIA GeForce RTX 3090) (as CUDA itself numbers them)",
        ),
        # A UUID NVML does not know (a formatting surprise): CUDA's answer is not trusted, the doubt is said.
        (("GPU-00000000-0000-0000-0000-000000000000",), (0,), None),
    ],
)
def test_cuda_own_device_uuids_settle_which_mixed_gpu_an_index_hides(
    cuda_sees: tuple[str, ...],
    hidden: tuple[int, ...],
    summary: str | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Where NVML's numbering is unsure (mixed GPUs, no PCI_BUS_ID), detect asks CUDA which devices it
    enumerates (cuDeviceGetUuid_v2) and names the hidden GPU from that answer."""
    from fakes.hardware import install

    base = SCENARIOS["two_gpus_one_hidden"]
    libcuda = dataclasses.replace(base.libcuda, uuids=cuda_sees)
    install(dataclasses.replace(base, env={"CUDA_VISIBLE_DEVICES": "1"}, libcuda=libcuda), monkeypatch, tmp_path)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    report = run_detect()
    check = by_id(report)["env.cuda_visible_devices"]
    assert check.evidence["hidden"] == list(hidden)
    if summary is None:
        assert check.fix is not None and check.fix.startswith("Set CUDA_DEVICE_ORDER=PCI_BUS_ID")
    else:
        assert (check.status, check.summary, check.evidence.get("cuda_said")) == (Status.WARN, summary, True)
        assert by_id(report)[f"gpu.{hidden[0]}"].status == Status.SKIP  # the GPU rows follow CUDA's answer too
