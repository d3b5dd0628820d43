"""The CUDA driver API through ctypes, independent of PyTorch.

If `cuInit` succeeds here, user-space CUDA works and any later failure is the
framework's fault, not the driver's. That split is the point of this probe.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so")

# CUresult values we explain; the rest are named by cuGetErrorName when possible.
CUDA_ERRORS = {
    0: "CUDA_SUCCESS",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    35: "CUDA_ERROR_INSUFFICIENT_DRIVER",
    46: "CUDA_ERROR_DEVICES_UNAVAILABLE",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    999: "CUDA_ERROR_UNKNOWN",
}


def load_libcuda() -> Any:
    """The hardware seam: the loaded libcuda, or raise OSError. Tests replace this."""
    last: OSError | None = None
    for name in LIBCUDA_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            last = exc
    raise last or OSError("libcuda not found")


@dataclass(frozen=True)
class CudaDriverInfo:
    """What the CUDA driver API said. `init_result` is cuInit's CUresult (0 = success)."""

    library_loaded: bool
    library_path: str | None = None
    init_result: int | None = None
    init_error: str | None = None
    driver_version: int | None = None  # e.g. 12040
    device_count: int | None = None
    load_error: str | None = None
    # The devices CUDA enumerates, in its own order (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER applied), as
    # NVML spells UUIDs; None when the driver cannot say (no cuDeviceGetUuid, a failed call).
    device_uuids: tuple[str, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.library_loaded and self.init_result == 0

    @property
    def version_str(self) -> str | None:
        if not self.driver_version:
            return None
        return f"{self.driver_version // 1000}.{(self.driver_version % 1000) // 10}"

    def to_json(self) -> dict[str, Any]:
        return {
            "library_loaded": self.library_loaded,
            "library_path": self.library_path,
            "cuInit": self.init_error or ("CUDA_SUCCESS" if self.init_result == 0 else None),
            "driver_version": self.version_str,
            "device_count": self.device_count,
            "device_uuids": None if self.device_uuids is None else list(self.device_uuids),
            "load_error": self.load_error,
        }


def _loaded_path(fragment: str) -> str | None:
    """Which file the dynamic loader actually mapped (shows /usr/lib/wsl/lib on WSL2)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                if fragment in line and "/" in line:
                    return line[line.index("/") :].strip()
    except OSError:
        return None
    return None


def _error_name(lib: Any, code: int) -> str:
    if code in CUDA_ERRORS:
        return CUDA_ERRORS[code]
    name = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
    except (AttributeError, OSError):
        pass
    return f"CUresult {code}"


def _uuid_text(raw: bytes) -> str:
    """CUuuid's 16 bytes as NVML and nvidia-smi write a GPU's UUID: GPU-8-4-4-4-12 hex digits."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def device_uuids(lib: Any, count: int) -> tuple[str, ...] | None:
    """The UUID of each device CUDA enumerates, in CUDA's order: what its indices really name."""
    get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or getattr(lib, "cuDeviceGetUuid", None)
    if get_uuid is None:
        return None
    uuids = []
    for ordinal in range(count):
        device, raw = ctypes.c_int(0), (ctypes.c_char * 16)()
        try:
            if int(lib.cuDeviceGet(ctypes.byref(device), ordinal)) != 0 or int(get_uuid(raw, device)) != 0:
                return None
        except (AttributeError, OSError, ctypes.ArgumentError):
            return None
        uuids.append(_uuid_text(bytes(raw)))
    return tuple(uuids)


def probe_cuda_driver(lib: Any | None = None) -> CudaDriverInfo:
    """Load libcuda, cuInit(0), read the driver version, the device count and each device's UUID."""
    if lib is None:
        try:
            lib = load_libcuda()
        except OSError as exc:
            return CudaDriverInfo(library_loaded=False, load_error=str(exc))
    path = _loaded_path("libcuda.so") or getattr(lib, "_name", None)
    version = ctypes.c_int(0)
    count = ctypes.c_int(0)
    rc = int(lib.cuInit(0))
    if rc != 0:
        return CudaDriverInfo(True, path, rc, _error_name(lib, rc))
    drv_version = version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None
    rc_count = int(lib.cuDeviceGetCount(ctypes.byref(count)))
    return CudaDriverInfo(
        library_loaded=True,
        library_path=path,
        init_result=0,
        driver_version=drv_version,
        device_count=count.value if rc_count == 0 else None,
        init_error=None if rc_count == 0 else _error_name(lib, rc_count),
        device_uuids=device_uuids(lib, count.value) if rc_count == 0 else None,
    )
