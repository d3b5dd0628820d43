"""NVML, behind one query helper.

This is the only module that imports pynvml. Every call goes through
`Nvml.query`, so a field the driver does not support (common on WSL2) comes
back as None and renders as n/a instead of crashing the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

log = logging.getLogger(__name__)

# pynvml error codes we treat as "this field is not available here".
_NA_CODES = {
    3,  # NOT_SUPPORTED
    4,  # NO_PERMISSION (a field, not the whole library)
    6,  # NOT_FOUND
    13,  # FUNCTION_NOT_FOUND (older driver)
    21,  # NO_DATA
    2,  # INVALID_ARGUMENT (e.g. a sensor the board lacks)
    26,  # DEPRECATED
    999,  # UNKNOWN
}
_GPU_IS_LOST = 15
_TEMPERATURE_THRESHOLD_SLOWDOWN = 1  # NVML_TEMPERATURE_THRESHOLD_SLOWDOWN

# nvmlClocksEventReason* bits (nvml.h), named as nvidia-smi -q -d PERFORMANCE names them.
CLOCKS_EVENT_REASONS: dict[int, str] = {
    0x1: "GPU idle",
    0x2: "applications clocks setting",
    0x4: "SW power cap",
    0x8: "HW slowdown",
    0x10: "sync boost",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake slowdown",
    0x100: "display clock setting",
}
THERMAL_REASONS = 0x20 | 0x40
# The reasons that hold clocks back even at idle only when something is wrong (cooling, power delivery).
SLOWDOWN_REASONS = 0x8 | THERMAL_REASONS | 0x80


def clocks_event_names(bits: int) -> tuple[str, ...]:
    """The named reasons set in an nvmlDeviceGetCurrentClocksEventReasons answer, in bit order."""
    return tuple(name for bit, name in CLOCKS_EVENT_REASONS.items() if bits & bit)


_INIT_KINDS = {
    12: "library_not_found",
    9: "driver_not_loaded",
    18: "version_mismatch",
    4: "no_permission",
    17: "operating_system",
}


def import_pynvml() -> ModuleType:
    """The hardware seam: tests replace this with a scenario fake."""
    import pynvml

    module: ModuleType = pynvml  # untyped package: named as the module it is
    return module


class NvmlInitError(Exception):
    """NVML could not start; `kind` says why (library_not_found, driver_not_loaded, version_mismatch...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class GpuLostError(Exception):
    """The GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)."""


@dataclass(frozen=True)
class DriverInfo:
    driver_version: str | None
    cuda_driver_version: int | None  # e.g. 12040 = CUDA 12.4
    nvml_version: str | None
    device_count: int

    @property
    def cuda_version(self) -> str | None:
        """The highest CUDA version this driver supports, as "12.4"."""
        return format_cuda_version(self.cuda_driver_version)


@dataclass(frozen=True)
class GpuInfo:
    """Everything NVML told us about one GPU; None means the driver would not say."""

    index: int
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    compute_capability: tuple[int, int] | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    memory_used: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_enabled: bool | None = None
    retired_pages: int | None = None
    retired_pages_pending: bool | None = None
    mig_enabled: bool | None = None
    utilization_gpu: int | None = None
    memory_bus_width_bits: int | None = None
    max_memory_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    temp_slowdown_c: int | None = None  # the temperature at which the driver starts thermal slowdown
    power_limit_default_w: float | None = None  # the board's default power limit (nvidia-smi -pl sets another)
    clocks_event_reasons: int | None = None  # NVML clocks-event reason bits active now (ClocksEventReason*)
    remapped_rows: tuple[int, int] | None = None  # rows remapped for (correctable, uncorrectable) errors
    remap_pending: bool | None = None  # a row remap waits for the next GPU reset
    remap_failed: bool | None = None  # a remap failed: the memory can no longer be repaired
    lost: bool = False
    error: str | None = None

    @property
    def compute_capability_str(self) -> str | None:
        if self.compute_capability is None:
            return None
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def peak_bandwidth_bytes_s(self) -> float | None:
        """Theoretical DRAM bandwidth: bus width × max memory clock × 2 (double data rate)."""
        if not self.memory_bus_width_bits or not self.max_memory_clock_mhz:
            return None
        return self.memory_bus_width_bits / 8 * self.max_memory_clock_mhz * 1e6 * 2

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "compute_capability": self.compute_capability_str,
            "memory_total_bytes": self.memory_total,
            "memory_free_bytes": self.memory_free,
            "memory_used_bytes": self.memory_used,
            "temperature_c": self.temperature_c,
            "power_w": self.power_w,
            "power_limit_w": self.power_limit_w,
            "persistence_mode": self.persistence_mode,
            "pcie_gen_current": self.pcie_gen_current,
            "pcie_gen_max": self.pcie_gen_max,
            "pcie_width_current": self.pcie_width_current,
            "pcie_width_max": self.pcie_width_max,
            "ecc_enabled": self.ecc_enabled,
            "retired_pages": self.retired_pages,
            "retired_pages_pending": self.retired_pages_pending,
            "mig_enabled": self.mig_enabled,
            "utilization_gpu_percent": self.utilization_gpu,
            "memory_bus_width_bits": self.memory_bus_width_bits,
            "max_memory_clock_mhz": self.max_memory_clock_mhz,
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
            "peak_bandwidth_bytes_per_s": self.peak_bandwidth_bytes_s,
            "temperature_slowdown_c": self.temp_slowdown_c,
            "power_limit_default_w": self.power_limit_default_w,
            "clocks_event_reasons": self.clocks_event_reasons,
            "remapped_rows": None if self.remapped_rows is None else list(self.remapped_rows),
            "remap_pending": self.remap_pending,
            "remap_failed": self.remap_failed,
            "lost": self.lost,
            "error": self.error,
        }


@dataclass(frozen=True)
class Sample:
    """One telemetry reading taken during inference."""

    t: float
    utilization_gpu: int | None = None
    memory_used: int | None = None
    power_w: float | None = None
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    energy_mj: int | None = None
    mem_clock_mhz: int | None = None
    clocks_event_reasons: int | None = None  # nvmlClocksEventReason* bits
    pstate: int | None = None  # 0 (fastest) .. 15; 32 = unknown, stored as None
    pcie_gen: int | None = None
    pcie_width: int | None = None


def format_cuda_version(value: int | None) -> str | None:
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


@dataclass(frozen=True)
class GpuProcess:
    """A process holding a CUDA context on a GPU, as the driver lists it (pids are the host's)."""

    pid: int
    name: str | None  # from the driver, so right even across container namespaces; None where it will not say
    used_memory: int | None  # bytes; None where the driver will not say

    def describe(self) -> str:
        mem = f"{self.used_memory / 1024**2:,.0f} MiB" if self.used_memory is not None else "VRAM n/a"
        return f"pid {self.pid} ({self.name or 'name n/a'}, {mem})"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "used_memory_bytes": self.used_memory}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class Nvml:
    """An initialised NVML session. Use `Nvml.open()`; call `close()` when done."""

    def __init__(self, lib: ModuleType) -> None:
        self._lib = lib
        self._handles: dict[int, Any] = {}
        self._handle_errors: dict[int, str] = {}  # why NVML gave no handle, e.g. "Unknown Error"
        self._last_error: str | None = None

    @classmethod
    def open(cls, lib: ModuleType | None = None) -> Nvml:
        """Initialise NVML or raise NvmlInitError naming the reason."""
        try:
            lib = lib if lib is not None else import_pynvml()
        except ImportError as exc:  # nvidia-ml-py missing from the environment
            raise NvmlInitError("bindings_missing", f"nvidia-ml-py is not installed ({exc})") from exc
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            kind = _INIT_KINDS.get(code, "other") if isinstance(code, int) else "other"
            raise NvmlInitError(kind, str(exc)) from exc
        except OSError as exc:
            raise NvmlInitError("library_not_found", str(exc)) from exc
        return cls(lib)

    def close(self) -> None:
        try:
            self._lib.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lib(self) -> ModuleType:
        return self._lib

    def query(self, fn_name: str, *args: Any) -> Any:
        """Call one NVML function; None when the driver cannot answer. Raises GpuLostError."""
        self._last_error = None
        fn = getattr(self._lib, fn_name, None)
        if fn is None:
            return None
        try:
            return _text(fn(*args))
        except self._lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == _GPU_IS_LOST:
                raise GpuLostError(str(exc)) from exc
            if code not in _NA_CODES:
                log.warning("NVML %s failed: %s", fn_name, exc)
            self._last_error = str(exc)
            return None

    def driver(self) -> DriverInfo:
        count = self.query("nvmlDeviceGetCount")
        return DriverInfo(
            driver_version=self.query("nvmlSystemGetDriverVersion"),
            cuda_driver_version=self.query("nvmlSystemGetCudaDriverVersion"),
            nvml_version=self.query("nvmlSystemGetNVMLVersion"),
            device_count=int(count or 0),
        )

    def handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self.query("nvmlDeviceGetHandleByIndex", index)
            if self._handles[index] is None and self._last_error:
                self._handle_errors[index] = self._last_error
        return self._handles[index]

    def gpu(self, index: int) -> GpuInfo:
        """Read every field we report; a lost GPU comes back with lost=True."""
        try:
            h = self.handle(index)
            if h is None:
                why = self._handle_errors.get(index)
                error = "NVML returned no handle for this index" + (f" ({why})" if why else "")
                return GpuInfo(index=index, error=error)
            return self._gpu(index, h)
        except GpuLostError as exc:
            return GpuInfo(index=index, lost=True, error=str(exc))

    def _gpu(self, index: int, h: Any) -> GpuInfo:
        lib, q = self._lib, self.query
        pci = q("nvmlDeviceGetPciInfo", h)
        mem = q("nvmlDeviceGetMemoryInfo", h)
        cc = q("nvmlDeviceGetCudaComputeCapability", h)
        power = q("nvmlDeviceGetPowerUsage", h)
        limit = q("nvmlDeviceGetEnforcedPowerLimit", h)
        persistence = q("nvmlDeviceGetPersistenceMode", h)
        ecc = q("nvmlDeviceGetEccMode", h)
        mig = q("nvmlDeviceGetMigMode", h)
        util = q("nvmlDeviceGetUtilizationRates", h)
        retired = None
        if ecc is not None and ecc[0]:
            sbe = q("nvmlDeviceGetRetiredPages", h, lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
            dbe = q("nvmlDeviceGetRetiredPages", h, lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
            if sbe is not None or dbe is not None:
                retired = len(sbe or []) + len(dbe or [])
        pending = q("nvmlDeviceGetRetiredPagesPendingStatus", h) if ecc is not None and ecc[0] else None
        default_limit = q("nvmlDeviceGetPowerManagementDefaultLimit", h)
        # Row remapping (Ampere and later datacenter GPUs): (correctable, uncorrectable, pending, failed).
        remap = q("nvmlDeviceGetRemappedRows", h)
        return GpuInfo(
            index=index,
            name=q("nvmlDeviceGetName", h),
            uuid=q("nvmlDeviceGetUUID", h),
            pci_bus_id=_text(getattr(pci, "busId", None)) if pci is not None else None,
            compute_capability=tuple(cc) if cc is not None else None,
            memory_total=getattr(mem, "total", None),
            memory_free=getattr(mem, "free", None),
            memory_used=getattr(mem, "used", None),
            temperature_c=q("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU),
            power_w=power / 1000 if power is not None else None,
            power_limit_w=limit / 1000 if limit is not None else None,
            persistence_mode=bool(persistence) if persistence is not None else None,
            pcie_gen_current=q("nvmlDeviceGetCurrPcieLinkGeneration", h),
            pcie_gen_max=q("nvmlDeviceGetMaxPcieLinkGeneration", h),
            pcie_width_current=q("nvmlDeviceGetCurrPcieLinkWidth", h),
            pcie_width_max=q("nvmlDeviceGetMaxPcieLinkWidth", h),
            ecc_enabled=bool(ecc[0]) if ecc is not None else None,
            retired_pages=retired,
            retired_pages_pending=bool(pending) if pending is not None else None,
            mig_enabled=bool(mig[0]) if mig is not None else None,
            utilization_gpu=getattr(util, "gpu", None),
            memory_bus_width_bits=q("nvmlDeviceGetMemoryBusWidth", h),
            max_memory_clock_mhz=q("nvmlDeviceGetMaxClockInfo", h, lib.NVML_CLOCK_MEM),
            max_sm_clock_mhz=q("nvmlDeviceGetMaxClockInfo", h, lib.NVML_CLOCK_SM),
            temp_slowdown_c=q("nvmlDeviceGetTemperatureThreshold", h, _TEMPERATURE_THRESHOLD_SLOWDOWN),
            power_limit_default_w=default_limit / 1000 if default_limit is not None else None,
            clocks_event_reasons=q("nvmlDeviceGetCurrentClocksEventReasons", h),
            remapped_rows=(int(remap[0]), int(remap[1])) if remap is not None else None,
            remap_pending=bool(remap[2]) if remap is not None else None,
            remap_failed=bool(remap[3]) if remap is not None else None,
        )

    def compute_processes(self, index: int) -> tuple[GpuProcess, ...] | None:
        """Processes with a CUDA context on the GPU; None when the driver cannot list them."""
        h = self.handle(index)
        procs = self.query("nvmlDeviceGetComputeRunningProcesses", h) if h is not None else None
        if procs is None:
            return None
        out = []
        for p in procs:
            pid = int(getattr(p, "pid", 0) or 0)
            name = self.query("nvmlSystemGetProcessName", pid)
            out.append(GpuProcess(pid, name.rsplit("/", 1)[-1] if name else None, getattr(p, "usedGpuMemory", None)))
        return tuple(out)

    def memory_used(self, index: int) -> int | None:
        mem = self.query("nvmlDeviceGetMemoryInfo", self.handle(index))
        return getattr(mem, "used", None)

    def sample(self, index: int, t: float) -> Sample:
        """A cheap telemetry reading for the sampler thread."""
        h, q, lib = self.handle(index), self.query, self._lib
        util = q("nvmlDeviceGetUtilizationRates", h)
        mem = q("nvmlDeviceGetMemoryInfo", h)
        power = q("nvmlDeviceGetPowerUsage", h)
        pstate = q("nvmlDeviceGetPerformanceState", h)
        return Sample(
            t=t,
            utilization_gpu=getattr(util, "gpu", None),
            memory_used=getattr(mem, "used", None),
            power_w=power / 1000 if power is not None else None,
            temperature_c=q("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU),
            sm_clock_mhz=q("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_SM),
            energy_mj=q("nvmlDeviceGetTotalEnergyConsumption", h),
            mem_clock_mhz=q("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_MEM),
            clocks_event_reasons=q("nvmlDeviceGetCurrentClocksEventReasons", h),
            pstate=pstate if pstate is not None and 0 <= pstate <= 15 else None,
            pcie_gen=q("nvmlDeviceGetCurrPcieLinkGeneration", h),
            pcie_width=q("nvmlDeviceGetCurrPcieLinkWidth", h),
        )


def parse_visible_devices(value: str | None, gpus: tuple[GpuInfo, ...]) -> tuple[int, ...] | None:
    """NVML indices hidden by CUDA_VISIBLE_DEVICES (None when unset). Accepts indices and UUID prefixes.

    CUDA's rules: entries are decimal indices or GPU UUIDs, "abbreviated forms are allowed" with "enough digits
    from the beginning of the GPU UUID to uniquely identify that GPU" (so a prefix two GPUs share is invalid),
    and enumeration stops at the first invalid entry ("-1", an index that does not exist, "NoDevFiles")."""
    if value is None:
        return None
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    visible: list[int] = []
    for token in tokens:
        match = None
        if token.isascii() and token.isdigit():  # not "²" or "١" (str.isdigit says yes; int() refuses or reads 1)
            idx = int(token)
            match = next((g.index for g in gpus if g.index == idx), None)
        else:
            matches = [g.index for g in gpus if g.uuid and g.uuid.startswith(token)]
            match = matches[0] if len(matches) == 1 else None
        if match is None:
            break
        visible.append(match)
    return tuple(g.index for g in gpus if g.index not in visible)


def cuda_order_uncertain(value: str | None, gpus: tuple[GpuInfo, ...], device_order: str | None) -> bool:
    """Whether CUDA_VISIBLE_DEVICES's indices may name other GPUs than NVML's of the same number.

    NVML (and nvidia-smi) number GPUs by PCI bus; CUDA, unless CUDA_DEVICE_ORDER=PCI_BUS_ID, numbers them
    "fastest first" by an undocumented heuristic. The two agree where every GPU is the same model (ties go by
    bus); on a mixed box they may not, and only UUIDs or PCI_BUS_ID make an index mean one GPU."""
    if value is None or (device_order or "").strip().upper() == "PCI_BUS_ID":
        return False
    has_index = any(t.strip().isascii() and t.strip().isdigit() for t in value.split(","))
    return has_index and len({g.name for g in gpus}) > 1


def read_gpus() -> tuple[GpuInfo, ...] | None:
    """Every GPU NVML sees, in one short session; None when NVML cannot start."""
    try:
        nvml = Nvml.open()
    except NvmlInitError:
        return None
    with nvml:
        return tuple(nvml.gpu(i) for i in range(nvml.driver().device_count))


def _cuda_device_uuids() -> tuple[str, ...] | None:
    from kcuda_validate.gpu.cudadrv import probe_cuda_driver

    return probe_cuda_driver().device_uuids


@dataclass(frozen=True)
class Visibility:
    """Which NVML GPUs CUDA_VISIBLE_DEVICES hides, and how that is known: "nvml" (its numbering is CUDA's),
    "cuda" (CUDA's own device UUIDs said), "unsure" (mixed GPUs read by index, and CUDA could not say)."""

    hidden: tuple[int, ...]
    how: Literal["nvml", "cuda", "unsure"] = "nvml"


def visibility(
    cuda_visible_devices: str | None,
    gpus: tuple[GpuInfo, ...],
    device_order: str | None,
    cuda_uuids: Callable[[], tuple[str, ...] | None] = _cuda_device_uuids,
) -> Visibility:
    """One rule for detect, the model commands' GPU choice and the early worker's pin.

    Read as NVML's numbering, except where that is unsure (`cuda_order_uncertain`): there CUDA's own device
    UUIDs decide (asked only then: cuInit costs a few hundred ms), if every one is a GPU NVML knows; anything
    else, a formatting surprise included, keeps NVML's reading and says it is unsure."""
    by_nvml = parse_visible_devices(cuda_visible_devices, gpus) or ()
    if not cuda_order_uncertain(cuda_visible_devices, gpus, device_order):
        return Visibility(by_nvml)
    seen = cuda_uuids()
    if not seen or not set(seen) <= {g.uuid for g in gpus if g.uuid}:
        return Visibility(by_nvml, "unsure")
    return Visibility(tuple(g.index for g in gpus if g.uuid not in seen), "cuda")


def usable_gpus(
    gpus: tuple[GpuInfo, ...], cuda_visible_devices: str | None, seen: Visibility | None = None
) -> list[GpuInfo]:
    """GPUs CUDA can see and NVML can read: the candidates for a model run, in NVML order. `seen`: the caller's
    own `visibility`, so CUDA is not asked twice."""
    if seen is None:
        import os

        seen = visibility(cuda_visible_devices, gpus, os.environ.get("CUDA_DEVICE_ORDER"))
    return [g for g in gpus if g.index not in seen.hidden and not g.lost and g.error is None]


def choose_gpu(
    gpus: tuple[GpuInfo, ...], device: int | None, cuda_visible_devices: str | None, seen: Visibility | None = None
) -> GpuInfo | None:
    """The GPU a run uses: --device N if given, else the first usable one. One rule for every caller."""
    if device is not None:
        return next((g for g in gpus if g.index == device), None)
    usable = usable_gpus(gpus, cuda_visible_devices, seen)
    return usable[0] if usable else None


def worker_pin(cpu_mode: bool, device: int | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for the model worker, decided up front so it can import llama.cpp at once.

    "" for a CPU run (no GPU visible at all), the chosen GPU's UUID for a GPU run, None when NVML cannot say.
    """
    if cpu_mode:
        return ""
    import os

    gpus = read_gpus()
    if gpus is None:
        return None
    chosen = choose_gpu(gpus, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return chosen.uuid if chosen is not None and chosen.uuid else None
