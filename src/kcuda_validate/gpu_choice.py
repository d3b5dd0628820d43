"""The GPU-selection stage: which GPU this run uses, read from NVML, and the pure checks that judge it.

`select_gpu` is the service (it opens NVML and keeps the session for the VRAM readings and telemetry of the
later stages); `nvml_unavailable`, `no_usable_gpu`, `gpu_selected` and `other_gpu_processes` are judges of
what it read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kcuda_validate.checks import Check, failed, passed, skipped, warned
from kcuda_validate.detect.software import FIX_CUDA_ORDER
from kcuda_validate.detect.stack import FIX_GPU_LOST, FIX_NO_DEVICE, nvml_failure  # the same advice detect gives
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.gpu.nvml import (
    GpuInfo,
    GpuProcess,
    Nvml,
    NvmlInitError,
    Visibility,
    choose_gpu,
    visibility,
)
from kcuda_validate.llm.build import invocation
from kcuda_validate.verdicts import StageVerdict, halt


@dataclass(frozen=True)
class GpuContext:
    """The GPU this run uses, with an NVML session for VRAM readings and telemetry."""

    nvml: Nvml
    info: GpuInfo
    driver: dict[str, Any]

    def vram_used(self) -> int | None:
        return self.nvml.memory_used(self.info.index)

    def close(self) -> None:
        self.nvml.close()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def other_gpu_processes(procs: tuple[GpuProcess, ...] | None, index: int, wsl2: bool) -> Check:
    """Other work on the GPU shares its bandwidth, VRAM and power: the figures measured then include it.

    Checked once, before the model loads (this run holds no CUDA context yet, so every process listed is
    another's). WSL2's driver lists no processes at all, so there an empty list proves nothing; inside a
    container the driver may list only that container's processes, hence "lists", not "there are"."""
    title = "Other GPU processes"
    if wsl2:
        return skipped(
            "gpu.processes", "gpu", title, "WSL2's driver does not list GPU processes: make sure nothing else runs"
        )
    if procs is None:
        return skipped("gpu.processes", "gpu", title, f"the driver cannot list the processes using GPU {index}")
    if not procs:
        return passed("gpu.processes", "gpu", title, f"the driver lists no other process on GPU {index}", processes=[])
    n = len(procs)
    return warned(
        "gpu.processes",
        "gpu",
        title,
        f"{n} other process{'es are' if n > 1 else ' is'} using GPU {index}: "
        + ", ".join(p.describe() for p in procs[:3])
        + (f" and {n - 3} more" if n > 3 else "")
        + "; the speed, VRAM and energy figures include their work",
        "Stop them for clean figures (`nvidia-smi` lists them), or accept the figures as those of a shared GPU.",
        processes=[p.to_json() for p in procs],
    )


NO_HANDLE_FIX = (
    'Run `nvidia-smi` and `sudo dmesg | grep -i xid`; "Unable to determine the device handle" usually needs a '
    "reboot. In a container, check that /dev/nvidia* for this GPU is mounted."
)
CPU_RUN_HINT = "Or pass --device cpu for a CPU-only run."


def no_usable_gpu(
    gpus: tuple[GpuInfo, ...], driver_version: str | None, device: int | None, cvd: str | None, seen: Visibility
) -> Check:
    """The driver answers but no GPU can run the model: which GPUs it sees and why each one is out.

    Exit 3 when the driver sees none at all, 4 when it sees some that cannot be used (hidden by
    CUDA_VISIBLE_DEVICES, fallen off the bus, no NVML handle). Names only what the user set."""
    driver = f"the NVIDIA driver{f' {driver_version}' if driver_version else ''}"
    if not gpus:
        return failed(
            "gpu.select",
            "gpu",
            "GPU selection",
            f"no GPU: {driver} is loaded but sees no GPU",
            f"{FIX_NO_DEVICE} {CPU_RUN_HINT}",
            ExitCode.NO_GPU,
            driver_version=driver_version,
            gpus=[],
        )
    hidden = set(seen.hidden) if device is None else set()
    considered = [g for g in gpus if device is None or g.index == device]
    reasons, fixes = [], []
    for g in considered:
        label = f"GPU {g.index}" + (f" ({g.name})" if g.name else "")
        if g.lost:
            reasons.append(f"{label} has fallen off the bus (NVML: GPU is lost)")
            fixes.append(FIX_GPU_LOST)
        elif g.error is not None:
            reasons.append(f"{label}: {g.error}")
            fixes.append(NO_HANDLE_FIX)
        elif g.index in hidden:
            reasons.append(f"{label} is hidden by CUDA_VISIBLE_DEVICES={cvd!r}")
            fixes.append(
                "Unset CUDA_VISIBLE_DEVICES (`unset CUDA_VISIBLE_DEVICES`), or set it to an index or UUID "
                "that `nvidia-smi -L` lists."
            )
    fix = " ".join(dict.fromkeys(fixes)) + f" {CPU_RUN_HINT}"
    if device is not None:
        summary = f"--device {device}: " + "; ".join(reasons)
    else:
        summary = f"no usable GPU: {driver} sees {_count(len(gpus), 'GPU')}, and none can be used: " + "; ".join(
            reasons
        )
    return failed(
        "gpu.select",
        "gpu",
        "GPU selection",
        summary,
        fix,
        ExitCode.GPU_UNUSABLE,
        driver_version=driver_version,
        gpus=[g.to_json() | {"hidden": g.index in hidden} for g in gpus],
    )


def nvml_unavailable(exc: NvmlInitError, wsl2: bool) -> Check:
    """NVML did not start: detect's reading of why (its table of NVML start failures), with the same fix and
    exit code: 3 where there is no driver, 4 where driver and GPU are there but cannot be used."""
    why, fix, code = nvml_failure(exc.kind, "NVML failed to start", wsl2)
    return failed(
        "gpu.select",
        "gpu",
        "GPU selection",
        f"no usable NVIDIA GPU ({why}; NVML: {exc.detail})",
        f"{fix} {CPU_RUN_HINT}",
        code,
        kind=exc.kind,
        detail=exc.detail,
    )


def gpu_selected(gpu: GpuInfo) -> Check:
    free = f"{gpu.memory_free / 1024**3:.1f} GiB free" if gpu.memory_free is not None else "VRAM n/a"
    return passed(
        "gpu.select",
        "gpu",
        "GPU selection",
        f"GPU {gpu.index}: {gpu.name} (cc {gpu.compute_capability_str or 'n/a'}, {free})",
        index=gpu.index,
        uuid=gpu.uuid,
    )


CPU_SELECTED = skipped("gpu.select", "gpu", "GPU selection", "CPU run: no GPU used (--device cpu)")


def select_gpu(device: int | None, cpu_mode: bool) -> tuple[StageVerdict, GpuContext | None]:
    """The GPU stage: its verdict, and the GPU (with its open NVML session) when one is used."""
    if cpu_mode:
        return StageVerdict("gpu", (CPU_SELECTED,), device_mode="cpu"), None
    try:
        nvml = Nvml.open()
    except NvmlInitError as exc:
        from kcuda_validate.gpu.platform import probe_platform

        return halt("gpu", nvml_unavailable(exc, probe_platform().is_wsl2)), None
    driver = nvml.driver()
    gpus = tuple(nvml.gpu(i) for i in range(driver.device_count))
    if device is not None and gpus and device not in {g.index for g in gpus}:
        nvml.close()
        raise UsageError(
            f"--device {device}: no such GPU (the driver sees {_count(len(gpus), 'GPU')}: "
            + ", ".join(str(g.index) for g in gpus)
            + ")",
            fix=f"Pick an index from `{invocation()} detect`, or --device cpu.",
        )
    versions = {"driver_version": driver.driver_version, "cuda_version": driver.cuda_version}
    # --device N picks that NVML index whatever CUDA_VISIBLE_DEVICES says (the worker is pinned to its
    # UUID); without it, the first GPU CUDA can see and NVML can read.
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = visibility(cvd, gpus, os.environ.get("CUDA_DEVICE_ORDER")) if device is None else Visibility(())
    chosen = choose_gpu(gpus, device, cvd, seen)
    if chosen is None or chosen.lost or chosen.error is not None:
        nvml.close()
        return halt("gpu", no_usable_gpu(gpus, driver.driver_version, device, cvd, seen), driver=versions), None
    from kcuda_validate.gpu.platform import probe_platform

    wsl2 = probe_platform().is_wsl2  # its driver lists no processes: not asked
    procs = other_gpu_processes(None if wsl2 else nvml.compute_processes(chosen.index), chosen.index, wsl2)
    selected = gpu_selected(chosen)
    if seen.how == "unsure":
        selected = warned(
            "gpu.select",
            "gpu",
            "GPU selection",
            f"{selected.summary}, read from CUDA_VISIBLE_DEVICES={cvd!r} in nvidia-smi's numbering; CUDA numbers"
            " these mixed GPUs fastest first, so it may have meant another",
            f"{FIX_CUDA_ORDER} Or pass --device N (nvidia-smi's index).",
            **selected.evidence,
        )
    verdict = StageVerdict("gpu", (selected, procs), gpu=chosen.to_json(), driver=versions)
    return verdict, GpuContext(nvml, chosen, versions)
