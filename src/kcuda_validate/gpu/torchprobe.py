"""PyTorch's view of the GPU, proven with a real kernel.

`torch.cuda.is_available()` hides the reason it returns False inside a
warning; we capture that text because it is the diagnosis (driver too old,
no driver, CPU-only build).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


def import_torch() -> ModuleType:
    """The seam: importing torch costs ~1 s, so only `detect` without --skip-torch pays it."""
    import torch

    return torch


@dataclass(frozen=True)
class TorchDevice:
    index: int
    name: str | None
    capability: str | None
    kernel_ok: bool | None
    kernel_ms: float | None = None
    kernel_error: str | None = None


@dataclass(frozen=True)
class TorchInfo:
    """`problem` is None when torch can run CUDA kernels, else one of the documented kinds."""

    installed: bool
    version: str | None = None
    cuda_build: str | None = None  # torch.version.cuda; None for a CPU-only build
    cuda_available: bool = False
    device_count: int = 0
    devices: tuple[TorchDevice, ...] = field(default_factory=tuple)
    problem: str | None = None  # not_installed | cpu_build | no_driver | driver_too_old | no_device | kernel_failed
    message: str | None = None
    import_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "installed": self.installed,
            "version": self.version,
            "cuda_build": self.cuda_build,
            "cuda_available": self.cuda_available,
            "device_count": self.device_count,
            "devices": [d.__dict__ for d in self.devices],
            "problem": self.problem,
            "message": self.message,
        }


def classify_cuda_message(text: str) -> str | None:
    """Map torch's CUDA-initialisation text to a problem kind."""
    lowered = text.lower()
    if "not compiled with cuda" in lowered:
        return "cpu_build"
    if "driver on your system is too old" in lowered or "cuda driver version is insufficient" in lowered:
        return "driver_too_old"
    if "found no nvidia driver" in lowered:
        return "no_driver"
    if "no cuda gpus are available" in lowered or "no cuda-capable device" in lowered:
        return "no_device"
    return None


def _matmul_check(torch: ModuleType, index: int) -> TorchDevice:
    name = capability = None
    try:
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        capability = f"{major}.{minor}"
        gen = torch.Generator().manual_seed(1234)
        a = torch.randn(512, 512, generator=gen)
        b = torch.randn(512, 512, generator=gen)
        expected = a @ b
        start = time.perf_counter()
        got = (a.to(f"cuda:{index}") @ b.to(f"cuda:{index}")).cpu()
        torch.cuda.synchronize(index)
        elapsed = (time.perf_counter() - start) * 1000
        # TF32 may be enabled; 512-long dot products of N(0,1) values stay well inside this.
        ok = bool(torch.allclose(got, expected, rtol=1e-2, atol=5e-1))
        return TorchDevice(index, name, capability, ok, elapsed, None if ok else "matmul result differs from CPU")
    except Exception as exc:  # noqa: BLE001 - any failure here is the evidence we report
        # torch appends "CUDA kernel errors might be asynchronously reported..." boilerplate: keep the first line.
        first = (str(exc).strip().splitlines() or [""])[0]
        return TorchDevice(index, name, capability, False, None, f"{type(exc).__name__}: {first}".strip())


def probe_torch(run_kernel: bool = True) -> TorchInfo:
    """Import torch, ask it about CUDA, and run a checked matmul on each visible GPU."""
    start = time.perf_counter()
    try:
        torch = import_torch()
    except ImportError as exc:
        return TorchInfo(installed=False, problem="not_installed", message=str(exc))
    import_s = time.perf_counter() - start
    version = str(torch.__version__)
    cuda_build = getattr(torch.version, "cuda", None)
    if cuda_build is None:
        return TorchInfo(True, version, None, problem="cpu_build", message="Torch not compiled with CUDA enabled")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
    message = " ".join(str(w.message) for w in caught) or None
    if not available:
        try:
            torch.cuda.init()
        except Exception as exc:  # noqa: BLE001 - the message is the diagnosis
            message = str(exc) or message
        problem = classify_cuda_message(message or "") or "no_device"
        return TorchInfo(True, version, cuda_build, False, 0, problem=problem, message=message, import_s=import_s)
    count = int(torch.cuda.device_count())
    devices = tuple(_matmul_check(torch, i) for i in range(count)) if run_kernel else ()
    problem = "kernel_failed" if any(d.kernel_ok is False for d in devices) else None
    if problem:
        message = "; ".join(f"cuda:{d.index}: {d.kernel_error}" for d in devices if d.kernel_ok is False)
    return TorchInfo(True, version, cuda_build, True, count, devices, problem, message, import_s)
