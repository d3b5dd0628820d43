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
    # The bandwidth probes (CUDA events around copies): device memory read+written per second by a
    # device-to-device copy, and host-to-device bytes per second from pinned memory. None: not measured.
    mem_bw_bytes_s: float | None = None
    h2d_bytes_s: float | None = None
    bandwidth_error: str | None = None


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


def _error_line(exc: BaseException) -> str:
    """torch appends "CUDA kernel errors might be asynchronously reported..." boilerplate: keep the first line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}".strip()


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
        return TorchDevice(index, name, capability, False, None, _error_line(exc))


D2D_BYTES = 256 << 20  # per buffer; two are needed (capped at an eighth of free memory on small GPUs)
H2D_BYTES = 64 << 20
COPIES = 10


def _timed_copies(torch: ModuleType, dst: Any, src: Any, copies: int) -> float:
    """Milliseconds the GPU took for `copies` copies of src into dst, after one untimed copy."""
    dst.copy_(src, non_blocking=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(copies):
        dst.copy_(src, non_blocking=True)
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def _bandwidth_probe(torch: ModuleType, index: int) -> tuple[float | None, float | None, str | None]:
    """(device-memory bytes/s, host-to-device bytes/s, why not): well under a second on any GPU. The copy
    count is as CUDA's bandwidthTest counts it: a device-to-device copy reads and writes every byte."""
    try:
        with torch.cuda.device(index):
            free, _total = torch.cuda.mem_get_info(index)
            n = min(D2D_BYTES, (int(free) // 8) >> 20 << 20)
            if n < 1 << 20:
                return None, None, f"too little free GPU memory to probe ({int(free) >> 20} MiB)"
            src = torch.empty(n, dtype=torch.uint8, device=f"cuda:{index}")
            dst = torch.empty(n, dtype=torch.uint8, device=f"cuda:{index}")
            ms = _timed_copies(torch, dst, src, COPIES)
            d2d = 2 * n * COPIES / (ms / 1000) if ms > 0 else None
            del src, dst
            host = torch.empty(H2D_BYTES, dtype=torch.uint8, pin_memory=True)
            dev = torch.empty(H2D_BYTES, dtype=torch.uint8, device=f"cuda:{index}")
            ms = _timed_copies(torch, dev, host, COPIES)
            h2d = H2D_BYTES * COPIES / (ms / 1000) if ms > 0 else None
            del host, dev
            return d2d, h2d, None
    except Exception as exc:  # noqa: BLE001 - the probe's failure is reported as n/a with its reason
        return None, None, _error_line(exc)


def _checked_device(torch: ModuleType, index: int) -> TorchDevice:
    """The matmul check, then, on a GPU that passed it, the bandwidth probes."""
    import dataclasses

    dev = _matmul_check(torch, index)
    if not dev.kernel_ok:
        return dev
    d2d, h2d, why = _bandwidth_probe(torch, index)
    return dataclasses.replace(dev, mem_bw_bytes_s=d2d, h2d_bytes_s=h2d, bandwidth_error=why)


def probe_torch(run_kernel: bool = True, isolated: bool = True, timeout_s: float = 180.0) -> TorchInfo:
    """Import torch, ask it about CUDA, and run a checked matmul and the bandwidth probes on each visible GPU.

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
    import os
    import signal
    import subprocess
    import sys

    from kcuda_validate.lifeline import spawn_tied

    cmd = [sys.executable, "-m", "kcuda_validate.gpu.torchprobe"] + ([] if run_kernel else ["--no-kernel"])
    proc, wanted = spawn_tied(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return TorchInfo(True, problem="crashed", message=f"PyTorch's CUDA check did not finish in {timeout_s:g} s")
    finally:  # also interrupted (Ctrl-C, a deadline): the child goes, as with subprocess.run
        os.close(wanted)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0 or not out.strip():
        how = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit status {proc.returncode}"
        last = (err.strip().splitlines() or [""])[-1]
        return TorchInfo(True, problem="crashed", message=f"PyTorch crashed initialising CUDA ({how}) {last}".strip())
    d = json.loads(out)
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
    devices = tuple(_checked_device(torch, i) for i in range(count)) if run_kernel else ()
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

    from kcuda_validate.lifeline import die_with_parent

    die_with_parent()  # a stopped parent, or one that stopped waiting, takes this probe with it
    if os.environ.get("KCUDA_TEST_FAULT") == "segv:torch":  # tests only: a crash in torch's CUDA init
        os.kill(os.getpid(), signal.SIGSEGV)
    info = _probe_here(run_kernel="--no-kernel" not in sys.argv[1:])
    d = dataclasses.asdict(info)
    print(json.dumps(d))


if __name__ == "__main__":
    _main()
