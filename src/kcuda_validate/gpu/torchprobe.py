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
    problem: str | None = None  # not_installed|cpu_build|no_driver|driver_too_old|no_device|kernel_failed|crashed
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


def probe_torch(run_kernel: bool = True, isolated: bool = True, timeout_s: float = 180.0) -> TorchInfo:
    """Import torch, ask it about CUDA, and run a checked matmul on each visible GPU.

    `isolated`: do it in a short-lived child process. torch's CUDA initialisation can crash the process on a
    broken driver, and its CUDA context would otherwise hold ~0.3-0.5 GiB of VRAM in this process for the
    rest of the run (while validate-all loads the model). When a test has replaced the `import_torch` seam
    the probe stays in-process, where the replacement lives.
    """
    if isolated and import_torch is _REAL_IMPORT_TORCH:
        return _probe_in_child(run_kernel, timeout_s)
    return _probe_here(run_kernel)


def _probe_in_child(run_kernel: bool, timeout_s: float) -> TorchInfo:
    import json
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kcuda_validate.gpu.torchprobe"] + ([] if run_kernel else ["--no-kernel"])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return TorchInfo(True, problem="crashed", message=f"PyTorch's CUDA check did not finish in {timeout_s:g} s")
    if proc.returncode != 0 or not proc.stdout.strip():
        how = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit status {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return TorchInfo(True, problem="crashed", message=f"PyTorch crashed initialising CUDA ({how}) {last}".strip())
    d = json.loads(proc.stdout)
    d["devices"] = tuple(TorchDevice(**x) for x in d["devices"])
    return TorchInfo(**d)


def _probe_here(run_kernel: bool) -> TorchInfo:
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
    failed = "kernel_failed" if any(d.kernel_ok is False for d in devices) else None
    if failed:
        message = "; ".join(f"cuda:{d.index}: {d.kernel_error}" for d in devices if d.kernel_ok is False)
    return TorchInfo(True, version, cuda_build, True, count, devices, failed, message, import_s)


_REAL_IMPORT_TORCH = import_torch


def _main() -> None:
    """`python -m kcuda_validate.gpu.torchprobe`: the isolated probe, one JSON document on stdout."""
    import dataclasses
    import json
    import os
    import signal
    import sys

    if os.environ.get("KCUDA_TEST_FAULT") == "segv:torch":  # tests only: a crash in torch's CUDA init
        os.kill(os.getpid(), signal.SIGSEGV)
    info = _probe_here(run_kernel="--no-kernel" not in sys.argv[1:])
    d = dataclasses.asdict(info)
    print(json.dumps(d))


if __name__ == "__main__":
    _main()
