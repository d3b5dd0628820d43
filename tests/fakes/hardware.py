"""Named hardware scenarios: fake NVML, libcuda, PyTorch, llama.cpp build and filesystem root.

Only the hardware seams are replaced (gpustat/nvitop style: one configured fake per named machine):

- ``kcuda_validate.gpu.nvml.import_pynvml``      -> ``FakePynvml`` (raises the real ``pynvml.NVMLError`` classes)
- ``kcuda_validate.gpu.cudadrv.load_libcuda``    -> ``FakeLibcuda`` (ctypes-call compatible) or ``OSError``
- ``kcuda_validate.gpu.torchprobe.import_torch`` -> ``FakeTorch`` (its "GPU" computes with numpy on the CPU)
- ``kcuda_validate.llm.build.raw_llama_build``   -> ``FakeLlamaBuild`` (system-info text as llama.cpp prints it)
- ``kcuda_validate.gpu.platform.ROOT``           -> a fake filesystem tree built under ``tmp_path``

Everything else (the NVML wrapper, the detector, the renderer, the CLI) runs for real. Every scenario is
fully deterministic except the PyTorch matmul time, which the golden tests normalise.

Importing ``pynvml`` here is only for its exception classes and constants: it loads no driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pynvml
import pytest

from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.build import BackendDevice

MIB = 1024**2

# --------------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------------

# Every per-device function FakePynvml implements; `FakeGpu.unsupported` names a subset of them.
WSL2_UNSUPPORTED = frozenset(
    {
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetCurrPcieLinkGeneration",
        "nvmlDeviceGetMaxPcieLinkGeneration",
        "nvmlDeviceGetCurrPcieLinkWidth",
        "nvmlDeviceGetMaxPcieLinkWidth",
        "nvmlDeviceGetEccMode",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetTemperatureThreshold",
        "nvmlDeviceGetPerformanceState",
    }
)


@dataclass(frozen=True)
class FakeProcess:
    """pynvml's c_nvmlProcessInfo_t (pid, usedGpuMemory: None where the driver will not say), plus the name
    nvmlSystemGetProcessName gives (None: it raises NOT_FOUND, as for a process it cannot name)."""

    pid: int
    usedGpuMemory: int | None  # pynvml's attribute name
    name: str | None = None


@dataclass(frozen=True)
class FakeGpu:
    """One GPU as NVML would describe it. Units as NVML returns them (bytes, mW, MHz, mJ)."""

    name: str
    uuid: str
    pci_bus_id: str
    compute_capability: tuple[int, int]
    memory_total: int
    memory_used: int = 400 * MIB
    temperature_c: int = 38
    power_mw: int = 23_500
    power_limit_mw: int = 450_000  # the limit in force (nvmlDeviceGetEnforcedPowerLimit)
    power_default_mw: int | None = None  # the board's default limit; None: the same as the limit in force
    persistence: int = 0
    pcie_gen: tuple[int, int] = (1, 4)  # (current, max): an idle GPU drops to gen 1
    pcie_width: tuple[int, int] = (16, 16)
    ecc: tuple[int, int] = (0, 0)  # (current, pending)
    retired_sbe: tuple[int, ...] = ()  # page addresses retired for multiple single-bit errors
    retired_dbe: tuple[int, ...] = ()  # ... for a double-bit error
    retired_pending: int = 0
    mig: tuple[int, int] = (0, 0)  # (current, pending)
    utilization_gpu: int = 0
    utilization_memory: int = 0
    memory_bus_width: int = 384
    max_sm_clock_mhz: int = 2100
    max_mem_clock_mhz: int = 10_501
    sm_clock_mhz: int = 210
    mem_clock_mhz: int | None = None  # the memory clock now; None: at its maximum
    temp_slowdown_c: int = 87  # nvmlDeviceGetTemperatureThreshold(NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
    pstate: int = 8  # an idle GPU sits in P8
    clocks_event_reasons: int = 0x1  # nvmlClocksEventReason* bits; an idle GPU reports GpuIdle (0x1)
    # nvmlDeviceGetRemappedRows: (correctable, uncorrectable, pending, failed); None: NotSupported (pre-Ampere,
    # GeForce), as the real driver answers there.
    remapped_rows: tuple[int, int, int, int] | None = None
    energy_mj: int = 123_456_789
    unsupported: frozenset[str] = frozenset()  # pynvml function names that raise NVMLError_NotSupported
    lost: bool = False  # every call for this GPU raises NVMLError_GpuIsLost
    # Falls off the bus during the run: lost from the N-th nvmlInit of the process on (1 = from the start).
    lost_from_init: int | None = None
    handle_error: int | None = None  # nvmlDeviceGetHandleByIndex raises this NVML_ERROR_* code
    processes: tuple[FakeProcess, ...] = ()  # other processes with a CUDA context on this GPU
    # What torch's timed copies find (bytes/s). None: what a healthy card of this kind gets, 90 % of its
    # memory's peak for a device-to-device copy, and for host-to-device 80 % of its link at the link's top
    # generation (an idle link's low one recovers under load) and its present width (a narrow one does not).
    copy_bw: float | None = None
    h2d_bw: float | None = None

    @property
    def memory_free(self) -> int:
        return self.memory_total - self.memory_used

    @property
    def achieved_copy_bw(self) -> float:
        return self.copy_bw or 0.9 * self.memory_bus_width / 8 * self.max_mem_clock_mhz * 1e6 * 2

    @property
    def achieved_h2d_bw(self) -> float:
        per_lane = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}[self.pcie_gen[1]]
        return self.h2d_bw or 0.8 * per_lane * self.pcie_width[0]


@dataclass(frozen=True)
class PciInfo:
    """The attributes of pynvml's c_nvmlPciInfo_t that callers read."""

    busId: str
    busIdLegacy: str
    domain: int
    bus: int
    device: int
    pciDeviceId: int


@dataclass(frozen=True)
class MemoryInfo:
    """pynvml's c_nvmlMemory_t."""

    total: int
    free: int
    used: int


@dataclass(frozen=True)
class Utilization:
    """pynvml's c_nvmlUtilization_t."""

    gpu: int
    memory: int


@dataclass(frozen=True)
class FakeHandle:
    """What nvmlDeviceGetHandleByIndex returns (an opaque pointer in the real library)."""

    index: int


class FakePynvml:
    """The pynvml functions kcuda_validate.gpu.nvml calls, answering for a list of FakeGpus.

    Errors are the real pynvml exception classes: ``pynvml.NVMLError(code)`` builds the subclass
    (NVMLError_NotSupported, NVMLError_GpuIsLost, ...), exactly as the real bindings raise them.
    """

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = (
        pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
    )
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR

    def __init__(
        self,
        gpus: tuple[FakeGpu, ...] = (),
        *,
        driver_version: str = "550.107.02",
        cuda_driver_version: int = 12040,
        init_error: int | None = None,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error
        self.initialised = 0
        self.inits = 0  # successful nvmlInit calls so far (see FakeGpu.lost_from_init)
        self.calls: list[str] = []

    # -- library lifetime --------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self._need_init()
        self.initialised -= 1

    def _need_init(self) -> None:
        if self.initialised <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _is_lost(self, gpu: FakeGpu) -> bool:
        return gpu.lost or (gpu.lost_from_init is not None and self.inits >= gpu.lost_from_init)

    # -- system ------------------------------------------------------------------------------------
    def nvmlSystemGetDriverVersion(self) -> str:
        self._need_init()
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._need_init()
        return self.cuda_driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._need_init()
        return f"{self.cuda_driver_version // 1000}.{self.driver_version}"

    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._need_init()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self._is_lost(self.gpus[index]):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if self.gpus[index].handle_error is not None:
            raise pynvml.NVMLError(self.gpus[index].handle_error)
        return FakeHandle(index)

    # -- per device --------------------------------------------------------------------------------
    def _gpu(self, fn: str, handle: FakeHandle) -> FakeGpu:
        self.calls.append(fn)
        self._need_init()
        gpu = self.gpus[handle.index]
        if self._is_lost(gpu):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlDeviceGetName(self, h: FakeHandle) -> str:
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str:
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetPciInfo(self, h: FakeHandle) -> PciInfo:
        g = self._gpu("nvmlDeviceGetPciInfo", h)
        domain, bus, rest = g.pci_bus_id.split(":")
        return PciInfo(g.pci_bus_id, g.pci_bus_id[4:], int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16), 0)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeHandle) -> tuple[int, int]:
        return self._gpu("nvmlDeviceGetCudaComputeCapability", h).compute_capability

    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle, version: int | None = None) -> MemoryInfo:
        g = self._gpu("nvmlDeviceGetMemoryInfo", h)
        return MemoryInfo(g.memory_total, g.memory_free, g.memory_used)

    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        g = self._gpu("nvmlDeviceGetTemperature", h)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.temperature_c

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", h).power_limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: FakeHandle) -> int:
        g = self._gpu("nvmlDeviceGetPowerManagementDefaultLimit", h)
        return g.power_default_mw if g.power_default_mw is not None else g.power_limit_mw

    def nvmlDeviceGetTemperatureThreshold(self, h: FakeHandle, threshold: int) -> int:
        g = self._gpu("nvmlDeviceGetTemperatureThreshold", h)
        if threshold != pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.temp_slowdown_c

    def nvmlDeviceGetPerformanceState(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetPerformanceState", h).pstate

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", h).clocks_event_reasons

    def nvmlDeviceGetRemappedRows(self, h: FakeHandle) -> tuple[int, int, int, int]:
        g = self._gpu("nvmlDeviceGetRemappedRows", h)
        if g.remapped_rows is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.remapped_rows

    def nvmlDeviceGetPersistenceMode(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetPersistenceMode", h).persistence

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkGeneration", h).pcie_gen[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkGeneration", h).pcie_gen[1]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkWidth", h).pcie_width[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkWidth", h).pcie_width[1]

    def nvmlDeviceGetEccMode(self, h: FakeHandle) -> list[int]:
        return list(self._gpu("nvmlDeviceGetEccMode", h).ecc)

    def nvmlDeviceGetRetiredPages(self, h: FakeHandle, cause: int) -> list[int]:
        g = self._gpu("nvmlDeviceGetRetiredPages", h)
        if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS:
            return list(g.retired_sbe)
        if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
            return list(g.retired_dbe)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetRetiredPagesPendingStatus", h).retired_pending

    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:
        return list(self._gpu("nvmlDeviceGetMigMode", h).mig)

    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> Utilization:
        g = self._gpu("nvmlDeviceGetUtilizationRates", h)
        return Utilization(g.utilization_gpu, g.utilization_memory)

    def nvmlDeviceGetMemoryBusWidth(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetMemoryBusWidth", h).memory_bus_width

    def nvmlDeviceGetMaxClockInfo(self, h: FakeHandle, clock: int) -> int:
        g = self._gpu("nvmlDeviceGetMaxClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: g.max_sm_clock_mhz, pynvml.NVML_CLOCK_MEM: g.max_mem_clock_mhz}[clock]

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:
        g = self._gpu("nvmlDeviceGetClockInfo", h)
        mem = g.mem_clock_mhz if g.mem_clock_mhz is not None else g.max_mem_clock_mhz
        return {pynvml.NVML_CLOCK_SM: g.sm_clock_mhz, pynvml.NVML_CLOCK_MEM: mem}[clock]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[FakeProcess]:
        return list(self._gpu("nvmlDeviceGetComputeRunningProcesses", h).processes)

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        self.calls.append("nvmlSystemGetProcessName")
        self._need_init()
        for gpu in self.gpus:
            for p in gpu.processes:
                if p.pid == pid and p.name is not None:
                    return p.name.encode()
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)


# --------------------------------------------------------------------------------------------------
# libcuda (the CUDA driver API through ctypes)
# --------------------------------------------------------------------------------------------------

CU_NAMES = {
    0: "CUDA_SUCCESS",
    34: "CUDA_ERROR_STUB_LIBRARY",
    100: "CUDA_ERROR_NO_DEVICE",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    999: "CUDA_ERROR_UNKNOWN",
}
CUDA_ERROR_INVALID_VALUE = 1


@dataclass(frozen=True)
class LibcudaSpec:
    """How the fake libcuda answers. `loaded=False` makes load_libcuda raise OSError."""

    loaded: bool = True
    init_result: int = 0
    driver_version: int = 12040
    device_count: int = 1
    path: str = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    # cuDeviceGetUuid_v2's answers in CUDA's order (None: CUDA_ERROR_NOT_SUPPORTED, as a driver that cannot say)
    uuids: tuple[str, ...] | None = None


class FakeLibcuda:
    """Stands in for ctypes.CDLL("libcuda.so.1"). Out-parameters arrive as ctypes.byref(...)."""

    def __init__(self, spec: LibcudaSpec) -> None:
        self.spec = spec
        self._name = spec.path
        self.calls: list[str] = []
        self.initialised = False

    def cuInit(self, flags: int) -> int:
        self.calls.append("cuInit")
        self.initialised = self.spec.init_result == 0
        return self.spec.init_result

    def cuDriverGetVersion(self, version_ref: Any) -> int:
        self.calls.append("cuDriverGetVersion")
        version_ref._obj.value = self.spec.driver_version  # works even before cuInit, like the real one
        return 0

    def cuDeviceGetCount(self, count_ref: Any) -> int:
        self.calls.append("cuDeviceGetCount")
        if not self.initialised:
            return 3  # CUDA_ERROR_NOT_INITIALIZED
        count_ref._obj.value = self.spec.device_count
        return 0

    def cuDeviceGet(self, device_ref: Any, ordinal: int) -> int:
        self.calls.append("cuDeviceGet")
        if not self.initialised:
            return 3  # CUDA_ERROR_NOT_INITIALIZED
        if not 0 <= ordinal < self.spec.device_count:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        device_ref._obj.value = ordinal
        return 0

    def cuDeviceGetUuid_v2(self, raw: Any, device: Any) -> int:
        """Fills the 16-byte CUuuid from a "GPU-8-4-4-4-12" UUID, as the real driver does."""
        self.calls.append("cuDeviceGetUuid_v2")
        if self.spec.uuids is None:
            return 801  # CUDA_ERROR_NOT_SUPPORTED
        raw[:] = bytes.fromhex(self.spec.uuids[device.value].removeprefix("GPU-").replace("-", ""))
        return 0

    def cuGetErrorName(self, code: int, name_ref: Any) -> int:
        self.calls.append("cuGetErrorName")
        if code not in CU_NAMES:
            return CUDA_ERROR_INVALID_VALUE
        name_ref._obj.value = CU_NAMES[code].encode()
        return 0


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------

# The texts real torch produces (from torch 2.x's libc10_cuda.so and torch/cuda/__init__.py).
TORCH_DRIVER_TOO_OLD = (
    "The NVIDIA driver on your system is too old (found version {found}). Please update your GPU driver by "
    "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
    "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your "
    "version of the CUDA driver."
)
TORCH_NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver "
    "from http://www.nvidia.com/Download/index.aspx"
)
TORCH_NO_GPUS = "No CUDA GPUs are available"
TORCH_INIT_FAILED = "CUDA driver initialization failed, you might not have a CUDA gpu."
TORCH_UNKNOWN_ERROR = (
    "CUDA unknown error - this may be due to an incorrectly set up environment, e.g. changing env variable "
    "CUDA_VISIBLE_DEVICES after program start. Setting the available devices to be zero."
)
TORCH_NO_KERNEL_IMAGE = (
    "CUDA error: no kernel image is available for execution on the device\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
    "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
# The warning torch.cuda.is_available() emits (c10::cuda::device_count's TORCH_WARN).
TORCH_WARNING = "CUDA initialization: {message} (Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:109.)"


@dataclass(frozen=True)
class TorchSpec:
    """How the fake torch behaves.

    installed=False: import_torch raises ImportError. cuda=None: a CPU-only build. available=False:
    is_available() returns False, emitting `warning` (if any) and making cuda.init() raise `init_error`.
    `kernel_error`: moving a tensor to the GPU raises RuntimeError with this text.
    """

    installed: bool = True
    version: str = "2.5.1+cu124"
    cuda: str | None = "12.4"
    available: bool = True
    warning: str | None = None
    init_error: str | None = None
    kernel_error: str | None = None


class FakeTensor:
    """A tensor backed by a numpy array; the fake "GPU" computes on the CPU, honestly."""

    def __init__(self, array: np.ndarray, device: str = "cpu", kernel_error: str | None = None) -> None:
        self.array = array
        self.device = device
        self._kernel_error = kernel_error

    def to(self, device: str) -> FakeTensor:
        if str(device).startswith("cuda") and self._kernel_error:
            raise RuntimeError(self._kernel_error)
        return FakeTensor(self.array, str(device), self._kernel_error)

    def cpu(self) -> FakeTensor:
        return FakeTensor(self.array, "cpu", self._kernel_error)

    def __matmul__(self, other: FakeTensor) -> FakeTensor:
        if self.device != other.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{self.device} and {other.device}!"
            )
        return FakeTensor(self.array @ other.array, self.device, self._kernel_error)


class FakeBuffer:
    """torch.empty(n, dtype=torch.uint8, ...): no bytes behind it, only where it lives. A copy into it costs the
    fake GPU the time its scenario's bandwidth gives, on the clock the fake CUDA events read."""

    def __init__(self, nbytes: int, device: str, pinned: bool, cuda: FakeTorchCuda) -> None:
        self.nbytes, self.device, self.pinned, self._cuda = nbytes, device, pinned, cuda

    def copy_(self, src: FakeBuffer, non_blocking: bool = False) -> FakeBuffer:
        assert src.nbytes == self.nbytes, "copy between buffers of different sizes"
        if self.device.startswith("cuda") and src.device.startswith("cuda"):
            gpu = self._cuda._device(int(self.device.split(":")[1]))
            self._cuda.clock_s += 2 * self.nbytes / gpu.achieved_copy_bw  # read and write every byte
        elif self.device.startswith("cuda"):
            assert src.pinned, "the probe copies from pinned memory"
            gpu = self._cuda._device(int(self.device.split(":")[1]))
            self._cuda.clock_s += self.nbytes / gpu.achieved_h2d_bw
        return self


class FakeEvent:
    def __init__(self, cuda: FakeTorchCuda, enable_timing: bool = False) -> None:
        self._cuda, self._timing, self.at = cuda, enable_timing, None

    def record(self) -> None:
        self.at = self._cuda.clock_s

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self._timing and self.at is not None and end.at is not None
        return (end.at - self.at) * 1000


class FakeGenerator:
    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def manual_seed(self, seed: int) -> FakeGenerator:
        self.rng = np.random.default_rng(seed)
        return self


@dataclass(frozen=True)
class TorchVersion:
    cuda: str | None


class FakeTorchCuda:
    """torch.cuda: sees the GPUs left visible by CUDA_VISIBLE_DEVICES, renumbered from 0 like CUDA does."""

    def __init__(self, spec: TorchSpec, devices: tuple[FakeGpu, ...]) -> None:
        self._spec = spec
        self._devices = devices
        self.synchronized: list[int] = []
        self.clock_s = 0.0  # the fake GPU's time, which its copies advance and its events read
        self.current = 0

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing)

    @contextlib.contextmanager
    def device(self, index: int) -> Iterator[None]:
        self._device(index)
        before, self.current = self.current, index
        try:
            yield
        finally:
            self.current = before

    def mem_get_info(self, index: int = 0) -> tuple[int, int]:
        gpu = self._device(index)
        return gpu.memory_free, gpu.memory_total

    def _usable(self) -> bool:
        return self._spec.cuda is not None and self._spec.available

    def is_available(self) -> bool:
        if self._spec.cuda is None:
            return False
        if not self._spec.available and self._spec.warning:
            warnings.warn(self._spec.warning, UserWarning, stacklevel=2)
        return self._usable()

    def init(self) -> None:
        if self._spec.cuda is None:
            raise AssertionError("Torch not compiled with CUDA enabled")
        if not self._usable():
            raise RuntimeError(self._spec.init_error or TORCH_NO_GPUS)

    def device_count(self) -> int:
        return len(self._devices) if self._usable() else 0

    def _device(self, index: int) -> FakeGpu:
        self.init()
        if not 0 <= index < len(self._devices):
            raise RuntimeError("CUDA error: invalid device ordinal")
        return self._devices[index]

    def get_device_name(self, index: int = 0) -> str:
        return self._device(index).name

    def get_device_capability(self, index: int = 0) -> tuple[int, int]:
        return self._device(index).compute_capability

    def synchronize(self, index: int = 0) -> None:
        self._device(index)
        self.synchronized.append(index)


class FakeTorch:
    """The part of the torch module probe_torch uses."""

    def __init__(self, spec: TorchSpec, devices: tuple[FakeGpu, ...]) -> None:
        self.__version__ = spec.version
        self.version = TorchVersion(spec.cuda)
        self.cuda = FakeTorchCuda(spec, devices)
        self._kernel_error = spec.kernel_error

    uint8 = "uint8"

    def empty(self, n: int, dtype: str, device: str = "cpu", pin_memory: bool = False) -> FakeBuffer:
        assert dtype == self.uint8
        if str(device).startswith("cuda"):
            gpu = self.cuda._device(int(str(device).split(":")[1]))
            if n > gpu.memory_free:
                raise RuntimeError(f"CUDA out of memory. Tried to allocate {n >> 20} MiB")
        return FakeBuffer(n, str(device), pin_memory, self.cuda)

    @staticmethod
    def Generator() -> FakeGenerator:
        return FakeGenerator()

    def randn(self, *shape: int, generator: FakeGenerator | None = None) -> FakeTensor:
        rng = generator.rng if generator is not None else np.random.default_rng()
        return FakeTensor(rng.standard_normal(shape, dtype=np.float32), "cpu", self._kernel_error)

    @staticmethod
    def allclose(a: FakeTensor, b: FakeTensor, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        return bool(np.allclose(a.array, b.array, rtol=rtol, atol=atol))


class FakeGpuClock:
    """Stands in for the `time` module inside torchprobe: the fake GPU's work takes fixed fake time.

    Each perf_counter() call advances 1.5 ms, so the timed matmul always reads "1.5 ms" and golden output
    stays byte-identical on any machine (the real CPU time of the numpy matmul varies from run to run).
    """

    STEP_S = 0.0015

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        self.now += self.STEP_S
        return self.now


# --------------------------------------------------------------------------------------------------
# llama-cpp-python build
# --------------------------------------------------------------------------------------------------

# Exactly what this machine's CPU-only llama-cpp-python 0.3.36 prints from llama_print_system_info().
CPU_SYSTEM_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
CPU_DEVICE = BackendDevice("CPU", "AMD Ryzen 9 7950X 16-Core Processor", "cpu", 60 * 1024 * MIB, 64 * 1024 * MIB)


def cuda_system_info(archs: str) -> str:
    """llama_print_system_info() of a CUDA build (ggml-cuda lists __CUDA_ARCH_LIST__ as ARCHS)."""
    return f"CUDA : ARCHS = {archs} | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | " + CPU_SYSTEM_INFO


@dataclass(frozen=True)
class LlamaSpec:
    """The installed llama-cpp-python build. `archs=None`: a CPU-only build. `error`: raw_llama_build raises it."""

    version: str = "0.3.36"
    archs: str | None = "890"
    error: type[Exception] | None = None
    error_text: str = ""


class FakeLlamaBuild:
    """Replaces llm.build.raw_llama_build: (version, supports_gpu_offload, system_info, devices)."""

    def __init__(self, spec: LlamaSpec, devices: tuple[FakeGpu, ...]) -> None:
        self.spec = spec
        self.gpus = devices
        self.calls = 0

    def __call__(self) -> tuple[str, bool, str, tuple[BackendDevice, ...]]:
        self.calls += 1
        if self.spec.error is not None:
            raise self.spec.error(self.spec.error_text)
        if self.spec.archs is None:
            return self.spec.version, False, CPU_SYSTEM_INFO, (CPU_DEVICE,)
        gpu_devices = tuple(
            BackendDevice(f"CUDA{i}", g.name, "gpu", g.memory_free, g.memory_total) for i, g in enumerate(self.gpus)
        )
        return self.spec.version, True, cuda_system_info(self.spec.archs), (*gpu_devices, CPU_DEVICE)


# --------------------------------------------------------------------------------------------------
# Filesystem roots
# --------------------------------------------------------------------------------------------------

LINUX_KERNEL = "6.8.0-45-generic"
WSL2_KERNEL = "5.15.153.1-microsoft-standard-WSL2"
WSL1_KERNEL = "4.4.0-19041-Microsoft"
WSL_CONF = (
    "# This file was automatically generated by WSL. To stop automatic generation of this file, add the "
    "following entry to /etc/wsl.conf:\n# [automount]\n# ldconfig = false\n/usr/lib/wsl/lib\n"
)
LD_CONF_MULTIARCH = "/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n"
LINUX_MOUNTS = "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
WSL2_MOUNTS = (
    "/dev/sdc / ext4 rw,relatime,discard,errors=remount-ro,data=ordered 0 0\n"
    "none /usr/lib/wsl/lib overlay ro,relatime,lowerdir=/gpu_lib_packaged:/gpu_lib_inbox,"
    "upperdir=/gpu_lib/rw/upper 0 0\n"
    "C:\\134 /mnt/c 9p rw,noatime,aname=drvfs;path=C:\\;uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,"
    "msize=65536,trans=fd,rfd=5,wfd=5 0 0\n"
    "D:\\134 /mnt/d drvfs rw,noatime,uid=1000,gid=1000 0 0\n"
)
ROOT_KINDS = ("linux", "wsl2", "wsl2_linux_driver", "wsl2_missing_libs", "wsl2_no_loader_path", "wsl1")


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def build_root(kind: str, base: Path) -> Path:
    """A fake filesystem tree of the given kind under `base` (see ROOT_KINDS); returns its root."""
    if kind not in ROOT_KINDS:
        raise ValueError(f"unknown root kind {kind!r}")
    root = base / f"root-{kind}"
    if kind == "linux":
        _write(root, "proc/sys/kernel/osrelease", LINUX_KERNEL + "\n")
        _write(root, "proc/mounts", LINUX_MOUNTS)
        _write(root, "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
        _write(root, "etc/ld.so.conf.d/x86_64-linux-gnu.conf", LD_CONF_MULTIARCH)
        return root
    if kind == "wsl1":
        _write(root, "proc/sys/kernel/osrelease", WSL1_KERNEL + "\n")
        return root
    _write(root, "proc/sys/kernel/osrelease", WSL2_KERNEL + "\n")
    _write(root, "proc/mounts", WSL2_MOUNTS)
    _write(root, "dev/dxg")
    _write(root, "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    _write(root, "etc/ld.so.conf.d/x86_64-linux-gnu.conf", LD_CONF_MULTIARCH)
    if kind != "wsl2_no_loader_path":
        _write(root, "etc/ld.so.conf.d/ld.wsl.conf", WSL_CONF)
    if kind != "wsl2_missing_libs":
        _write(root, "usr/lib/wsl/lib/libcuda.so.1", "ELF")
        _write(root, "usr/lib/wsl/lib/libnvidia-ml.so.1", "ELF")
    if kind == "wsl2_linux_driver":
        # `apt install nvidia-driver-550` (or the `cuda` meta-package) inside WSL2: real files, not links to wsl/lib.
        _write(root, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "ELF")
    return root


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------

RTX_4090 = FakeGpu(
    name="NVIDIA GeForce RTX 4090",
    uuid="GPU-5f3c2a8e-1b7d-4c9a-9e42-7d1c0b6a3f21",
    pci_bus_id="00000000:01:00.0",
    compute_capability=(8, 9),
    memory_total=24_564 * MIB,
    memory_used=412 * MIB,
    max_sm_clock_mhz=3120,
    max_mem_clock_mhz=10_501,
    unsupported=frozenset({"nvmlDeviceGetMigMode"}),
)
RTX_3090 = FakeGpu(
    name="NVIDIA GeForce RTX 3090",
    uuid="GPU-0a9d7e61-4c2b-8f53-1e7a-b2c64d9f0e18",
    pci_bus_id="00000000:21:00.0",
    compute_capability=(8, 6),
    memory_total=24_576 * MIB,
    memory_used=256 * MIB,
    power_limit_mw=350_000,
    max_sm_clock_mhz=2100,
    max_mem_clock_mhz=9751,
    unsupported=frozenset({"nvmlDeviceGetMigMode"}),
)
RTX_3060_LAPTOP = FakeGpu(
    name="NVIDIA GeForce RTX 3060 Laptop GPU",
    uuid="GPU-7c21b9d4-93e0-5a6f-2d8c-41f0e7a5b36c",
    pci_bus_id="00000000:01:00.0",
    compute_capability=(8, 6),
    memory_total=6144 * MIB,
    memory_used=0,
    memory_bus_width=192,
    max_sm_clock_mhz=2100,
    max_mem_clock_mhz=7001,
    unsupported=WSL2_UNSUPPORTED,
)
RTX_5090 = FakeGpu(
    name="NVIDIA GeForce RTX 5090",
    uuid="GPU-e3b0c442-98fc-1c14-9afb-f4c8996fb924",
    pci_bus_id="00000000:01:00.0",
    compute_capability=(12, 0),
    memory_total=32_607 * MIB,
    memory_used=520 * MIB,
    power_limit_mw=575_000,
    memory_bus_width=512,
    max_sm_clock_mhz=3090,
    max_mem_clock_mhz=14_001,
    unsupported=frozenset({"nvmlDeviceGetMigMode"}),
)
QUADRO_K620 = FakeGpu(
    name="Quadro K620",
    uuid="GPU-2d6f0b8a-5e41-c7d3-9a02-6b8e1f4c7d95",
    pci_bus_id="00000000:02:00.0",
    compute_capability=(5, 0),
    memory_total=1998 * MIB,
    memory_used=150 * MIB,
    power_limit_mw=45_000,
    pcie_gen=(2, 2),
    memory_bus_width=128,
    max_sm_clock_mhz=1124,
    max_mem_clock_mhz=900,
    unsupported=frozenset({"nvmlDeviceGetMigMode", "nvmlDeviceGetEccMode", "nvmlDeviceGetTotalEnergyConsumption"}),
)
A100_80GB = FakeGpu(
    name="NVIDIA A100-SXM4-80GB",
    uuid="GPU-4b1f8c2e-6d3a-9e07-a5c1-83f2d0b6e4a9",
    pci_bus_id="00000000:07:00.0",
    compute_capability=(8, 0),
    memory_total=81_920 * MIB,
    memory_used=0,
    power_limit_mw=400_000,
    persistence=1,
    pcie_gen=(4, 4),
    pcie_width=(8, 16),
    ecc=(1, 1),
    retired_sbe=(0x1F2A0, 0x2B310),
    retired_dbe=(0x3C000,),
    retired_pending=1,
    mig=(1, 1),
    remapped_rows=(0, 0, 0, 0),
    memory_bus_width=5120,
    max_sm_clock_mhz=1410,
    max_mem_clock_mhz=1593,
)
H100_80GB = FakeGpu(
    name="NVIDIA H100 80GB HBM3",
    uuid="GPU-8c3e5a71-2f90-4d6b-b1e8-5a7c9d0f2e43",
    pci_bus_id="00000000:19:00.0",
    compute_capability=(9, 0),
    memory_total=81_559 * MIB,
    memory_used=0,
    power_limit_mw=700_000,
    persistence=1,
    pcie_gen=(5, 5),
    remapped_rows=(0, 0, 0, 0),
    memory_bus_width=5120,
    max_sm_clock_mhz=1980,
    max_mem_clock_mhz=2619,
)
TESLA_P100 = FakeGpu(
    name="Tesla P100-PCIE-16GB",
    uuid="GPU-1e7b4d92-0c35-6a8f-d2e1-9f4a3b7c5d60",
    pci_bus_id="00000000:03:00.0",
    compute_capability=(6, 0),
    memory_total=16_280 * MIB,
    memory_used=0,
    power_limit_mw=250_000,
    pcie_gen=(3, 3),
    memory_bus_width=4096,
    max_sm_clock_mhz=1328,
    max_mem_clock_mhz=715,
    unsupported=frozenset({"nvmlDeviceGetMigMode"}),
)
# Answers only for identity: every measured field is NotSupported (some vGPU profiles, very old drivers).
BARE_GPU = FakeGpu(
    name="GRID T4-2Q",
    uuid="GPU-9e8d7c6b-5a49-3827-1605-f4e3d2c1b0a9",
    pci_bus_id="00000000:02:01.0",
    compute_capability=(7, 5),
    memory_total=2048 * MIB,
    unsupported=WSL2_UNSUPPORTED
    | {
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetCudaComputeCapability",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMemoryBusWidth",
        "nvmlDeviceGetMaxClockInfo",
    },
)


@dataclass(frozen=True)
class Scenario:
    """One named machine: every seam's behaviour plus the environment variables it runs with."""

    name: str
    description: str
    exit_code: ExitCode  # the pinned verdict of `kcuda-validate detect` on this machine
    gpus: tuple[FakeGpu, ...] = (RTX_4090,)
    root: str = "linux"
    nvml_init_error: int | None = None  # a pynvml NVML_ERROR_* code nvmlInit raises
    driver_version: str = "550.107.02"
    cuda_driver_version: int = 12040
    libcuda: LibcudaSpec = LibcudaSpec()
    torch: TorchSpec = TorchSpec()
    llama: LlamaSpec = LlamaSpec()
    env: dict[str, str] = field(default_factory=dict)

    def visible_gpus(self) -> tuple[FakeGpu, ...]:
        """GPUs CUDA enumerates: CUDA_VISIBLE_DEVICES indices until the first invalid one (indices only)."""
        value = self.env.get("CUDA_VISIBLE_DEVICES")
        alive = [g for g in self.gpus if not g.lost]
        if value is None:
            return tuple(alive)
        out: list[FakeGpu] = []
        for token in (t.strip() for t in value.split(",")):
            if not token.isdigit() or int(token) >= len(self.gpus) or self.gpus[int(token)].lost:
                break
            out.append(self.gpus[int(token)])
        return tuple(out)


def _scenarios(*items: Scenario) -> dict[str, Scenario]:
    return {s.name: s for s in items}


NO_LIBCUDA = LibcudaSpec(loaded=False)

SCENARIOS: dict[str, Scenario] = _scenarios(
    Scenario(
        "healthy_one_gpu",
        "Ubuntu 24.04, RTX 4090, driver 550 (CUDA 12.4), CUDA builds of torch and llama.cpp",
        exit_code=ExitCode.OK,
    ),
    Scenario(
        "two_gpus_one_hidden",
        "RTX 3090 + RTX 4090 with CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES=1: GPU 0 hidden (a "
        "warning, not a failure); without PCI_BUS_ID, CUDA's index 1 could be either card",
        exit_code=ExitCode.OK,
        gpus=(RTX_3090, RTX_4090),
        libcuda=LibcudaSpec(device_count=1),
        llama=LlamaSpec(archs="860,890"),
        env={"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
    ),
    Scenario(
        "all_gpus_hidden",
        "CUDA_VISIBLE_DEVICES=-1 hides the only GPU: CUDA, torch and the environment check all fail",
        exit_code=ExitCode.GPU_UNUSABLE,
        libcuda=LibcudaSpec(init_result=100),
        torch=TorchSpec(available=False, init_error=TORCH_NO_GPUS),
        env={"CUDA_VISIBLE_DEVICES": "-1"},
    ),
    Scenario(
        "wsl2_unsupported_fields",
        "WSL2 laptop: NVML cannot report utilisation, temperature, power, PCIe, ECC, MIG or energy",
        exit_code=ExitCode.OK,
        gpus=(RTX_3060_LAPTOP,),
        root="wsl2",
        driver_version="560.94",
        cuda_driver_version=12060,
        libcuda=LibcudaSpec(driver_version=12060, path="/usr/lib/wsl/lib/libcuda.so.1"),
        llama=LlamaSpec(archs="860"),
    ),
    Scenario(
        "wsl2_models_on_windows_drive",
        "WSL2 with the Hugging Face cache on C: (9p mount): a slow-load warning",
        exit_code=ExitCode.OK,
        gpus=(RTX_3060_LAPTOP,),
        root="wsl2",
        driver_version="560.94",
        cuda_driver_version=12060,
        libcuda=LibcudaSpec(driver_version=12060, path="/usr/lib/wsl/lib/libcuda.so.1"),
        llama=LlamaSpec(archs="860"),
        env={"HF_HUB_CACHE": "/mnt/c/Users/dev/.cache/huggingface/hub"},
    ),
    Scenario(
        "wsl2_linux_driver_installed",
        "WSL2 after `apt install nvidia-driver-550`: the Linux libnvidia-ml shadows the Windows driver's",
        exit_code=ExitCode.NO_GPU,
        gpus=(RTX_3060_LAPTOP,),
        root="wsl2_linux_driver",
        nvml_init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        libcuda=LibcudaSpec(path="/usr/lib/wsl/lib/libcuda.so.1"),
        llama=LlamaSpec(archs="860"),
    ),
    Scenario(
        "wsl2_missing_libs",
        "WSL2 without the Windows NVIDIA driver: /usr/lib/wsl/lib is empty",
        exit_code=ExitCode.NO_GPU,
        gpus=(),
        root="wsl2_missing_libs",
        nvml_init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        libcuda=NO_LIBCUDA,
        llama=LlamaSpec(archs=None),
    ),
    Scenario(
        "wsl1",
        "A WSL1 distro: no GPU support at all",
        exit_code=ExitCode.NO_GPU,
        gpus=(),
        root="wsl1",
        nvml_init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        libcuda=NO_LIBCUDA,
        llama=LlamaSpec(archs=None),
    ),
    Scenario(
        "no_driver",
        "No NVIDIA driver installed: libnvidia-ml.so.1 and libcuda.so.1 are missing",
        exit_code=ExitCode.NO_GPU,
        gpus=(),
        nvml_init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        libcuda=NO_LIBCUDA,
        llama=LlamaSpec(archs=None),
    ),
    Scenario(
        "driver_mismatch",
        "Driver upgraded without a reboot: the kernel module and libnvidia-ml differ",
        exit_code=ExitCode.GPU_UNUSABLE,
        nvml_init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        libcuda=LibcudaSpec(init_result=803),
    ),
    Scenario(
        "no_device",
        "Driver loaded but no GPU (a container started without --gpus all)",
        exit_code=ExitCode.NO_GPU,
        gpus=(),
        libcuda=LibcudaSpec(init_result=100, device_count=0),
        torch=TorchSpec(available=False, init_error=TORCH_NO_GPUS),
    ),
    Scenario(
        "gpu_lost",
        "The GPU fell off the bus (Xid 79): every NVML call for it fails with GPU_IS_LOST",
        exit_code=ExitCode.GPU_UNUSABLE,
        gpus=(dataclasses.replace(RTX_4090, lost=True),),
        libcuda=LibcudaSpec(init_result=999),
        torch=TorchSpec(available=False, init_error=TORCH_UNKNOWN_ERROR),
    ),
    Scenario(
        "gpu_no_handle",
        'nvidia-smi says "Unable to determine the device handle for GPU 0000:01:00.0: Unknown Error"',
        exit_code=ExitCode.GPU_UNUSABLE,
        gpus=(dataclasses.replace(RTX_4090, handle_error=pynvml.NVML_ERROR_UNKNOWN),),
        libcuda=LibcudaSpec(init_result=999),
        torch=TorchSpec(available=False, init_error=TORCH_UNKNOWN_ERROR),
    ),
    Scenario(
        "cuda_stub_library",
        "The CUDA toolkit's stub libcuda (lib64/stubs) is on LD_LIBRARY_PATH: cuInit returns 34",
        exit_code=ExitCode.GPU_UNUSABLE,
        libcuda=LibcudaSpec(init_result=34, path="/usr/local/cuda-12.4/lib64/stubs/libcuda.so"),
        torch=TorchSpec(available=False, init_error=TORCH_INIT_FAILED),
    ),
    Scenario(
        "torch_cpu_only",
        "PyTorch from PyPI's CPU index (torch 2.5.1+cpu)",
        exit_code=ExitCode.GPU_UNUSABLE,
        torch=TorchSpec(version="2.5.1+cpu", cuda=None, available=False),
    ),
    Scenario(
        "torch_newer_cuda_than_driver",
        "torch 2.9 built for CUDA 13.0 on a driver that supports CUDA 12.4",
        exit_code=ExitCode.GPU_UNUSABLE,
        torch=TorchSpec(
            version="2.9.0+cu130",
            cuda="13.0",
            available=False,
            warning=TORCH_WARNING.format(message=TORCH_DRIVER_TOO_OLD.format(found=12040)),
            init_error=TORCH_DRIVER_TOO_OLD.format(found=12040),
        ),
    ),
    Scenario(
        "torch_no_driver",
        "NVML works but torch finds no driver (torch loads a different, broken libcuda)",
        exit_code=ExitCode.GPU_UNUSABLE,
        torch=TorchSpec(available=False, init_error=TORCH_NO_DRIVER),
    ),
    Scenario(
        "torch_not_installed",
        "PyTorch missing from the environment",
        exit_code=ExitCode.GPU_UNUSABLE,
        torch=TorchSpec(installed=False),
    ),
    Scenario(
        "torch_no_kernel_image",
        "RTX 5090 (sm_120) with torch built for CUDA 12.4, which has no sm_120 kernels",
        exit_code=ExitCode.GPU_UNUSABLE,
        gpus=(RTX_5090,),
        driver_version="570.133.07",
        cuda_driver_version=12080,
        libcuda=LibcudaSpec(driver_version=12080),
        torch=TorchSpec(kernel_error=TORCH_NO_KERNEL_IMAGE),
        llama=LlamaSpec(archs="1200"),
    ),
    Scenario(
        "llama_cpu_only_with_gpu",
        "A healthy GPU, but llama-cpp-python was installed from PyPI without CMAKE_ARGS (CPU-only)",
        exit_code=ExitCode.GPU_UNUSABLE,
        llama=LlamaSpec(archs=None),
    ),
    Scenario(
        "llama_not_installed",
        "llama-cpp-python missing from the environment",
        exit_code=ExitCode.GPU_UNUSABLE,
        llama=LlamaSpec(error=ImportError, error_text="llama-cpp-python is not installed"),
    ),
    Scenario(
        "llama_missing_cudart",
        "A CUDA build of llama-cpp-python whose libcudart.so.12 is not on the loader path",
        exit_code=ExitCode.GPU_UNUSABLE,
        llama=LlamaSpec(
            error=OSError,
            error_text="libcudart.so.12: cannot open shared object file: No such file or directory",
        ),
    ),
    Scenario(
        "arch_mismatch",
        "llama.cpp built only for sm_90 (H100) running on an RTX 3090 (sm_86)",
        exit_code=ExitCode.GPU_UNUSABLE,
        gpus=(RTX_3090,),
        llama=LlamaSpec(archs="900"),
    ),
    Scenario(
        "below_minimums",
        "Quadro K620: 2 GB VRAM and compute capability 5.0",
        exit_code=ExitCode.BELOW_THRESHOLD,
        gpus=(QUADRO_K620,),
        driver_version="535.183.01",
        cuda_driver_version=12020,
        libcuda=LibcudaSpec(driver_version=12020),
        torch=TorchSpec(version="2.3.1+cu121", cuda="12.1"),
        llama=LlamaSpec(archs="500,610,700,750,800,860,890"),
    ),
    Scenario(
        "datacenter_mig_ecc",
        "A100 80GB with ECC on, retired pages pending, MIG enabled and a x8 PCIe link: warnings only",
        exit_code=ExitCode.OK,
        gpus=(A100_80GB,),
        driver_version="550.90.07",
        llama=LlamaSpec(archs="800,900"),
    ),
    Scenario(
        "power_capped",
        "RTX 4090 whose power limit was lowered to 200 W (default 450 W): a warning with the nvidia-smi -pl fix",
        exit_code=ExitCode.OK,
        gpus=(dataclasses.replace(RTX_4090, power_limit_mw=200_000, power_default_mw=450_000),),
    ),
    Scenario(
        "thermal_slowdown_idle",
        "RTX 4090 already held back at idle by HW thermal slowdown (91 °C): a warning to improve cooling",
        exit_code=ExitCode.OK,
        gpus=(dataclasses.replace(RTX_4090, temperature_c=91, clocks_event_reasons=0x1 | 0x8 | 0x40),),
    ),
    Scenario(
        "degraded_pcie",
        "RTX 4090 in a x4 slot (x16 card); gen 1 at idle is normal and not a fault",
        exit_code=ExitCode.OK,
        gpus=(dataclasses.replace(RTX_4090, pcie_width=(4, 16)),),
    ),
    Scenario(
        "row_remap_pending",
        "H100 with a row remap pending (one uncorrectable error): a warning to reset the GPU",
        exit_code=ExitCode.OK,
        gpus=(dataclasses.replace(H100_80GB, remapped_rows=(0, 1, 1, 0)),),
        llama=LlamaSpec(archs="800,900"),
    ),
    Scenario(
        "nvml_fields_unavailable",
        "NVML reports only name and UUID (a vGPU profile): every measured field is n/a",
        exit_code=ExitCode.OK,
        gpus=(BARE_GPU,),
        llama=LlamaSpec(archs="750,800,860,890"),
    ),
)

# More machines, for the model commands' GPU selection (load, infer, validate-all). Kept apart from
# SCENARIOS, whose every entry is pinned by a detect golden file; install() takes these names too.
MODEL_RUN_SCENARIOS: dict[str, Scenario] = _scenarios(
    Scenario(
        "all_gpus_hidden_empty",
        'CUDA_VISIBLE_DEVICES="" (set but empty) hides the only GPU, as a CI job or a wrapper script may do',
        exit_code=ExitCode.GPU_UNUSABLE,
        libcuda=LibcudaSpec(init_result=100),
        torch=TorchSpec(available=False, init_error=TORCH_NO_GPUS),
        env={"CUDA_VISIBLE_DEVICES": ""},
    ),
    Scenario(
        "visible_devices_unknown_uuid",
        "CUDA_VISIBLE_DEVICES names a GPU UUID this machine does not have (copied from another box)",
        exit_code=ExitCode.GPU_UNUSABLE,
        libcuda=LibcudaSpec(init_result=100),
        torch=TorchSpec(available=False, init_error=TORCH_NO_GPUS),
        env={"CUDA_VISIBLE_DEVICES": "GPU-00000000-dead-beef-0000-000000000000"},
    ),
    Scenario(
        "gpu_lost_after_detect",
        "The GPU falls off the bus (Xid 79) after detect passed, before the model run selects it",
        exit_code=ExitCode.OK,
        # NVML sessions in `validate-all`: the worker pin (1), detect (2), the pipeline's GPU selection (3).
        gpus=(dataclasses.replace(RTX_4090, lost_from_init=3),),
    ),
    Scenario(
        "nvml_no_permission",
        "Driver and GPU present, but this user cannot open /dev/nvidia* (not in the `video` group, or a container "
        "without the device files): NVML and cuInit are refused",
        exit_code=ExitCode.GPU_UNUSABLE,
        nvml_init_error=pynvml.NVML_ERROR_NO_PERMISSION,
        libcuda=LibcudaSpec(init_result=100),
        torch=TorchSpec(available=False, init_error=TORCH_NO_GPUS),
    ),
)

REQUIRED = (
    "healthy_one_gpu",
    "two_gpus_one_hidden",
    "wsl2_unsupported_fields",
    "no_driver",
    "driver_mismatch",
    "gpu_lost",
    "torch_cpu_only",
    "torch_newer_cuda_than_driver",
    "llama_cpu_only_with_gpu",
)


# --------------------------------------------------------------------------------------------------
# Installing a scenario
# --------------------------------------------------------------------------------------------------

ENV_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LD_LIBRARY_PATH", "HF_HUB_CACHE", "HF_TOKEN")


@dataclass
class Installed:
    """A scenario in place, with the fakes it installed (so tests can look at what was called)."""

    scenario: Scenario
    root: Path
    nvml: FakePynvml
    libcuda: FakeLibcuda | None
    torch: FakeTorch | None
    llama: FakeLlamaBuild
    torch_imports: int = 0
    libcuda_loads: int = 0
    nvml_imports: int = 0

    @property
    def name(self) -> str:
        return self.scenario.name


def install(scenario: Scenario | str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Installed:
    """Patch the five hardware seams and the environment for `scenario`."""
    import kcuda_validate.gpu.cudadrv as cudadrv
    import kcuda_validate.gpu.nvml as nvml
    import kcuda_validate.gpu.platform as platform
    import kcuda_validate.gpu.torchprobe as torchprobe
    import kcuda_validate.llm.build as build

    s = (SCENARIOS | MODEL_RUN_SCENARIOS)[scenario] if isinstance(scenario, str) else scenario
    visible = s.visible_gpus()
    state = Installed(
        scenario=s,
        root=build_root(s.root, tmp_path),
        nvml=FakePynvml(
            s.gpus,
            driver_version=s.driver_version,
            cuda_driver_version=s.cuda_driver_version,
            init_error=s.nvml_init_error,
        ),
        libcuda=FakeLibcuda(s.libcuda) if s.libcuda.loaded else None,
        torch=FakeTorch(s.torch, visible) if s.torch.installed else None,
        llama=FakeLlamaBuild(s.llama, visible),
    )

    def import_pynvml() -> FakePynvml:
        state.nvml_imports += 1
        return state.nvml

    def load_libcuda() -> FakeLibcuda:
        state.libcuda_loads += 1
        if state.libcuda is None:
            raise OSError("libcuda.so: cannot open shared object file: No such file or directory")
        return state.libcuda

    def import_torch() -> FakeTorch:
        state.torch_imports += 1
        if state.torch is None:
            raise ModuleNotFoundError("No module named 'torch'")
        return state.torch

    monkeypatch.setattr(nvml, "import_pynvml", import_pynvml)
    monkeypatch.setattr(cudadrv, "load_libcuda", load_libcuda)
    monkeypatch.setattr(torchprobe, "import_torch", import_torch)
    monkeypatch.setattr(torchprobe, "time", FakeGpuClock())  # the fake GPU's kernel time is part of the fake
    monkeypatch.setattr(build, "raw_llama_build", state.llama)
    monkeypatch.setattr(platform, "ROOT", state.root)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in s.env.items():
        monkeypatch.setenv(var, value)
    return state


@pytest.fixture
def scenario(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Installed:
    """The named scenario installed; use with ``@pytest.mark.parametrize("scenario", [...], indirect=True)``."""
    name = getattr(request, "param", "healthy_one_gpu")
    return install(name, monkeypatch, tmp_path)
