"""Checks of the layers below any framework: the platform, the driver and NVML, each GPU, the CUDA driver API,
and the per-GPU minimums. Each is a function of the facts that returns its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kcuda_validate.checks import Check, Status
from kcuda_validate.detect.facts import GIB, Facts, detect_check
from kcuda_validate.detect.software import FIX_RESYNC
from kcuda_validate.errors import ExitCode
from kcuda_validate.gpu.nvml import GpuInfo
from kcuda_validate.gpu.platform import on_windows_mount

FIX_INSTALL_DRIVER = (
    "Install the NVIDIA driver, then reboot: Ubuntu `sudo ubuntu-drivers install`; Debian `sudo apt install "
    "nvidia-driver` (non-free) or `nvidia-open` from NVIDIA's repository; RHEL/Rocky 8-9 (NVIDIA's repository) "
    "`sudo dnf module enable nvidia-driver:open-dkms && sudo dnf install nvidia-open`; on WSL2 install the "
    "Windows NVIDIA driver (not a Linux one) and run `wsl --update` in PowerShell."
)
FIX_LOAD_MODULE = (
    "Load the kernel module: `sudo modprobe nvidia` (if it fails, check `sudo dmesg | grep -i nvrm` and Secure "
    "Boot module signing), or reboot after installing the driver."
)
FIX_WSL_NO_MODULE = (
    "WSL2 has no NVIDIA kernel module to load: a Linux libnvidia-ml is shadowing the Windows driver's. Remove "
    "any Linux NVIDIA driver inside WSL2 (keep /usr/lib/wsl/lib), run `sudo ldconfig`, then `wsl --shutdown` in "
    "PowerShell (or `wsl.exe --shutdown` from inside WSL)."
)
FIX_WSL_LIBS = (
    "Install or update the NVIDIA driver on Windows (it provides /usr/lib/wsl/lib), then run `wsl --shutdown` in "
    "PowerShell (or `wsl.exe --shutdown` from inside WSL) and reopen."
)
FIX_WSL_DXG = (
    "/dev/dxg comes from the WSL kernel, not the driver: run `wsl --update` in PowerShell, remove any custom "
    "`kernel=` from %UserProfile%\\.wslconfig (or build it with dxgkrnl), then `wsl --shutdown` and reopen."
)
FIX_MISMATCH = (
    "The kernel module and user-space driver differ (usually after a driver upgrade): reboot, or reload with "
    "`sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia`."
)

# NvmlInitError.kind -> (summary, fix, exit code). On WSL2 "driver_not_loaded" gets FIX_WSL_NO_MODULE.
NVML_INIT_FAILURES: dict[str, tuple[str, str, ExitCode]] = {
    "library_not_found": ("No NVIDIA driver: libnvidia-ml.so.1 was not found", FIX_INSTALL_DRIVER, ExitCode.NO_GPU),
    "driver_not_loaded": (
        "NVIDIA driver installed but its kernel module is not loaded",
        FIX_LOAD_MODULE,
        ExitCode.NO_GPU,
    ),
    "version_mismatch": ("Driver/library version mismatch", FIX_MISMATCH, ExitCode.GPU_UNUSABLE),
    "no_permission": (
        "No permission to open the NVIDIA device files",
        "Check /dev/nvidia* permissions (add your user to the `video` group) or run the container with `--gpus all`.",
        ExitCode.GPU_UNUSABLE,
    ),
    "bindings_missing": (
        "nvidia-ml-py is not installed in this environment",
        f"Reinstall the tool's locked dependencies: {FIX_RESYNC}.",
        ExitCode.GPU_UNUSABLE,
    ),
}
FIX_NO_DEVICE = (
    "Check that the GPU is seated and powered (`lspci | grep -i nvidia`), and that a container was started "
    "with `--gpus all`. A pre-Turing GPU (Maxwell, Pascal, Volta) is not driven by the open kernel module (the "
    "default since driver 560): if `sudo dmesg | grep NVRM` says so, install the proprietary flavour of "
    "branch 580 or older, the last for those GPUs (e.g. Ubuntu `nvidia-driver-580`, not `-580-open`)."
)
FIX_GPU_LOST = "Check `sudo dmesg | grep -i xid` (Xid 79); reboot, and check the GPU's power and seating or PCIe riser."
FIX_NO_HANDLE = (
    'Run `nvidia-smi` and `sudo dmesg | grep -i xid`; "Unable to determine the device handle" '
    "usually needs a reboot. In a container, check that /dev/nvidia* for this GPU is mounted."
)
FIX_PAGES_PENDING = "Reboot to retire the pending pages; if it recurs, the board's memory is failing."
FIX_MIG = (  # CUDA_VISIBLE_DEVICES=MIG-<uuid> is not advised: the GPU choice reads whole GPUs, so it would hide them
    "This tool validates whole GPUs, not MIG instances: to validate this one, disable MIG while it is idle "
    "(`sudo nvidia-smi -i N -mig 0`, then reset or reboot if it says so)."
)
FIX_NARROW_LINK = (
    "The link trained narrower than card and slot allow: reseat the card (no riser), check its power cables and "
    "the BIOS PCIe link setting; a narrow link slows model loading."
)

# cuInit's error name -> the fix.
CUINIT_FIXES = {
    "CUDA_ERROR_STUB_LIBRARY": "A CUDA toolkit stub libcuda is on the loader path; remove "
    ".../cuda/lib64/stubs from LD_LIBRARY_PATH.",
    "CUDA_ERROR_INSUFFICIENT_DRIVER": "The driver is older than this libcuda; reinstall the driver "
    "so kernel module and libcuda match, or reboot.",
    "CUDA_ERROR_NO_DEVICE": "CUDA sees no device: check CUDA_VISIBLE_DEVICES and container GPU access.",
    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH": FIX_MISMATCH,
    "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE": "A forward-compatibility libcuda (package "
    "`cuda-compat-<major>-<minor>`: /usr/local/cuda/compat on LD_LIBRARY_PATH or in /etc/ld.so.conf.d) is loaded on "
    "a GPU that does not support it (forward compatibility is for data-center GPUs only): take that path out of "
    "LD_LIBRARY_PATH and ld.so.conf (then `sudo ldconfig`), or remove the package.",
    "CUDA_ERROR_UNKNOWN": "This error is common after a suspend/resume: reload the unified-memory module "
    "(`sudo modprobe -r nvidia_uvm && sudo modprobe nvidia_uvm`); if that fails or the error stays, reboot.",
    "CUDA_ERROR_DEVICES_UNAVAILABLE": "Every visible GPU is busy or its compute mode forbids this process "
    "(Exclusive_Process or Prohibited): check `nvidia-smi -q -d COMPUTE` and the processes `nvidia-smi` lists; "
    "set it back with `sudo nvidia-smi -i N -c DEFAULT`.",
}
FIX_CUINIT_OTHER = "Reboot; if it persists reinstall the driver."
FIX_NO_LIBCUDA = (
    "Install the driver's CUDA user-space library (e.g. `libnvidia-compute-<ver>`); on WSL2 "
    "make sure /usr/lib/wsl/lib is in the loader path."
)
FIX_BELOW_MINIMUMS = (
    "Use a GPU that meets the minimums, or lower them with --min-vram-gb / --min-compute if a smaller model is enough."
)
FIX_MINIMUMS_UNKNOWN = "Check this GPU's memory and compute capability with `nvidia-smi -q` before relying on it."


# -- platform ---------------------------------------------------------------------------------------------


def check_os(facts: Facts) -> tuple[Check, ...]:
    plat = facts.platform
    ev = plat.to_json()
    title = "Operating system"
    if plat.system != "Linux":
        return (
            detect_check(
                "platform.os",
                title,
                Status.FAIL,
                f"{plat.system} is not supported",
                "Run on Linux or under WSL2 on Windows.",
                ExitCode.NO_GPU,
                **ev,
            ),
        )
    if plat.is_wsl and not plat.is_wsl2:
        return (
            detect_check(
                "platform.os",
                title,
                Status.FAIL,
                "WSL1 has no GPU support",
                "Convert the distro to WSL2: `wsl --set-version <distro> 2`.",
                ExitCode.NO_GPU,
                **ev,
            ),
        )
    kind = "WSL2" if plat.is_wsl2 else plat.system
    return (detect_check("platform.os", title, Status.PASS, f"{kind}, kernel {plat.kernel}", **ev),)


def check_wsl_libs(facts: Facts) -> tuple[Check, ...]:
    """WSL2 only: the Windows driver's libraries in /usr/lib/wsl/lib, and the loader finding them."""
    plat = facts.platform
    if not plat.is_wsl2:
        return ()
    ev, title = plat.to_json(), "WSL2 GPU libraries"
    missing = [lib for lib, present in plat.wsl_libs.items() if not present]
    if missing or not plat.has_dxg:
        whats, fixes = [], []
        if missing:
            whats.append(", ".join(missing) + " from the Windows driver")
            fixes.append(FIX_WSL_LIBS)
        if not plat.has_dxg:
            whats.append("/dev/dxg (the WSL kernel's GPU device, dxgkrnl)")
            fixes.append(FIX_WSL_DXG)
        return (
            detect_check(
                "platform.wsl_libs",
                title,
                Status.FAIL,
                "missing " + "; ".join(whats),
                " ".join(fixes),
                ExitCode.NO_GPU,
                **ev,
            ),
        )
    if plat.wsl_libs_in_loader_path is False:
        return (
            detect_check(
                "platform.wsl_libs",
                title,
                Status.WARN,
                "/usr/lib/wsl/lib is not in the loader path",
                "Add it: `echo /usr/lib/wsl/lib | sudo tee /etc/ld.so.conf.d/ld.wsl.conf && sudo ldconfig`.",
                **ev,
            ),
        )
    return (detect_check("platform.wsl_libs", title, Status.PASS, "present in /usr/lib/wsl/lib", **ev),)


def check_wsl_linux_driver(facts: Facts) -> tuple[Check, ...]:
    """WSL2 only: a Linux NVIDIA driver installed inside the distro shadows the Windows one."""
    plat = facts.platform
    if not plat.is_wsl2:
        return ()
    if not plat.linux_driver_in_wsl:
        summary = "none installed: CUDA uses the Windows driver's libraries"
        return (detect_check("platform.wsl_linux_driver", "Linux driver inside WSL2", Status.PASS, summary),)
    return (
        detect_check(
            "platform.wsl_linux_driver",
            "Linux driver inside WSL2",
            Status.FAIL,
            "a Linux NVIDIA driver is installed inside WSL2: " + ", ".join(plat.linux_driver_in_wsl),
            wsl_linux_driver_fix(plat.linux_driver_in_wsl),
            ExitCode.GPU_UNUSABLE,
            files=list(plat.linux_driver_in_wsl),
        ),
    )


def wsl_linux_driver_fix(files: tuple[str, ...]) -> str:
    """Remove only the driver's packages (found by the file they own), never the container toolkit or CUDA."""
    owned = next((f for f in files if not f.startswith("/proc/")), "libcuda.so.1")
    return (
        f"Remove only the Linux driver's packages: `dpkg -S {owned}` names them, e.g. `sudo apt-get remove --purge "
        "'nvidia-driver-*' 'libnvidia-compute-*'` (and cuda-drivers if NVIDIA's repository installed it); keep "
        "nvidia-container-toolkit, and take CUDA inside WSL2 only from the `cuda-toolkit-12-x` / `cuda-toolkit-13-x` "
        "package of NVIDIA's wsl-ubuntu repository (it has no driver). Then `sudo ldconfig`: WSL2 must use the "
        "Windows driver's libraries in /usr/lib/wsl/lib."
    )


def model_dir_fix(env: Mapping[str, str]) -> str:
    """Move the Hub cache by the variable that put it on the Windows drive: HF_HUB_CACHE overrides HF_HOME."""
    if env.get("HF_HUB_CACHE"):
        return (
            "Keep models on the Linux filesystem: HF_HUB_CACHE points at the Windows drive (it overrides HF_HOME): "
            "`export HF_HUB_CACHE=~/.cache/huggingface/hub`."
        )
    if env.get("HF_HOME"):
        return (
            "Keep models on the Linux filesystem: HF_HOME points at the Windows drive: "
            "`export HF_HOME=~/.cache/huggingface`."
        )
    return (
        "Keep models on the Linux filesystem, e.g. `export HF_HUB_CACHE=~/.cache/huggingface/hub` "
        "(HF_HUB_CACHE overrides HF_HOME and XDG_CACHE_HOME)."
    )


def check_model_dir(facts: Facts) -> tuple[Check, ...]:
    """WSL2 only: models on a Windows drive (9p/drvfs) load many times slower."""
    model_dir, root = facts.options.model_dir, facts.options.root
    if model_dir is None or not facts.platform.is_wsl2 or not on_windows_mount(model_dir, root):
        return ()
    return (
        detect_check(
            "platform.model_dir",
            "Model directory location",
            Status.WARN,
            f"{model_dir} is on a Windows drive; model loads will be many times slower",
            model_dir_fix(facts.env),
            model_dir=str(model_dir),
        ),
    )


# -- driver, NVML and each GPU ----------------------------------------------------------------------------


def nvml_failure(kind: str, otherwise: str, wsl2: bool = False) -> tuple[str, str, ExitCode]:
    """(summary, fix, exit code) for an NVML that did not start, by NvmlInitError.kind; `otherwise` for a kind
    the table does not know. On WSL2 there is no kernel module to load: a module "not loaded" there is a Linux
    libnvidia-ml shadowing the Windows driver's. detect and the model commands' GPU selection both read this."""
    summary, fix, code = NVML_INIT_FAILURES.get(kind, (otherwise, FIX_INSTALL_DRIVER, ExitCode.NO_GPU))
    if kind == "driver_not_loaded" and wsl2:
        fix = FIX_WSL_NO_MODULE
    return summary, fix, code


def check_driver(facts: Facts) -> tuple[Check, ...]:
    nvml, cpu, title = facts.nvml, facts.options.cpu_mode, "NVIDIA driver (NVML)"
    if nvml.driver is None:
        kind = nvml.error or "other"
        summary, fix, code = nvml_failure(kind, f"NVML failed to start: {nvml.error_detail}", facts.wsl2)
        return (
            detect_check(
                "driver.nvml",
                title,
                Status.SKIP if cpu else Status.FAIL,
                summary + (" (CPU run: no GPU needed)" if cpu else ""),
                None if cpu else fix,
                code,
                kind=kind,
                detail=nvml.error_detail,
            ),
        )
    driver = nvml.driver
    ev: dict[str, Any] = {
        "driver_version": driver.driver_version,
        "cuda_version": driver.cuda_version,
        "device_count": driver.device_count,
    }
    if not nvml.gpus:
        return (
            detect_check(
                "driver.nvml",
                title,
                Status.SKIP if cpu else Status.FAIL,
                f"driver {driver.driver_version} loaded but it sees no GPU",
                None if cpu else FIX_NO_DEVICE,
                ExitCode.NO_GPU,
                **ev,
            ),
        )
    summary = (
        f"driver {driver.driver_version}, supports CUDA ≤ {driver.cuda_version or 'n/a'}, {driver.device_count} GPU(s)"
    )
    return (detect_check("driver.nvml", title, Status.PASS, summary, **ev),)


def _gpu_check(g: GpuInfo, hidden: tuple[int, ...]) -> Check:
    cid, title, ev = f"gpu.{g.index}", f"GPU {g.index}", g.to_json()
    if g.lost:
        return detect_check(
            cid,
            title,
            Status.FAIL,
            "GPU has fallen off the bus (NVML: GPU is lost)",
            FIX_GPU_LOST,
            ExitCode.GPU_UNUSABLE,
            **ev,
        )
    if g.error is not None:
        # NVML enumerates it but cannot open it (nvidia-smi: "Unable to determine the device handle").
        return detect_check(
            cid, title, Status.FAIL, f"NVML cannot open this GPU: {g.error}", FIX_NO_HANDLE, ExitCode.GPU_UNUSABLE, **ev
        )
    if g.index in hidden:
        return detect_check(cid, title, Status.SKIP, f"{g.name} hidden by CUDA_VISIBLE_DEVICES", **ev)
    mem = (
        f"{g.memory_total / GIB:.1f} GiB ({g.memory_free / GIB:.1f} free)"
        if g.memory_total is not None and g.memory_free is not None
        else "VRAM n/a"
    )
    summary = f"{g.name}, cc {g.compute_capability_str or 'n/a'}, {mem}"
    problems: list[tuple[str, str]] = []  # (what, fix)
    if g.retired_pages_pending:
        problems.append(("retired memory pages pending", FIX_PAGES_PENDING))
    if g.mig_enabled:
        problems.append(("MIG mode is on", FIX_MIG))
    if g.pcie_width_current and g.pcie_width_max and g.pcie_width_current < g.pcie_width_max:
        link = f"PCIe link x{g.pcie_width_current}, card and slot allow x{g.pcie_width_max}"
        problems.append((link, FIX_NARROW_LINK))
    if problems:
        what = "; ".join(p for p, _ in problems)
        return detect_check(cid, title, Status.WARN, f"{summary}; {what}", " ".join(f for _, f in problems), **ev)
    return detect_check(cid, title, Status.PASS, summary, **ev)


def check_gpus(facts: Facts) -> tuple[Check, ...]:
    """One check per selected GPU: lost, unopenable, hidden, or what NVML says of it."""
    return tuple(_gpu_check(g, facts.hidden) for g in facts.selected)


# -- CUDA driver API ---------------------------------------------------------------------------------------


def _nvml_failure_code(facts: Facts) -> ExitCode | None:
    """The exit code the driver check fails with, if it fails: it decides cuInit's code too."""
    (driver,) = check_driver(facts)
    return driver.exit_code if driver.status == Status.FAIL else None


def cuinit_fix(error: str | None, facts: Facts) -> str:
    """The fix for cuInit's error. CUDA_ERROR_UNKNOWN beside a GPU NVML calls lost or cannot open is that GPU's
    fault (its own check says what to do), not the unified-memory module's."""
    broken = any(g.lost or g.error is not None for g in facts.selected)
    if error == "CUDA_ERROR_UNKNOWN" and broken:
        return FIX_CUINIT_OTHER
    return CUINIT_FIXES.get(error or "", FIX_CUINIT_OTHER)


def check_cuda_driver_api(facts: Facts) -> tuple[Check, ...]:
    info, cpu, title = facts.cuda, facts.options.cpu_mode, "CUDA driver API"
    ev = info.to_json()
    have_driver = facts.nvml.driver is not None
    if not info.library_loaded:
        if cpu or not have_driver:
            why = " (CPU run)" if cpu else " (no driver)"
            return (detect_check("cuda.driver_api", title, Status.SKIP, "libcuda.so.1 not found" + why, **ev),)
        return (
            detect_check(
                "cuda.driver_api",
                title,
                Status.FAIL,
                "NVML works but libcuda.so.1 cannot be loaded",
                FIX_NO_LIBCUDA,
                ExitCode.GPU_UNUSABLE,
                **ev,
            ),
        )
    if info.init_result != 0:
        # When NVML already failed, its diagnosis decides the code: a driver that is installed but
        # mismatched or not permitted is "unusable" (4), not "absent" (3).
        code = _nvml_failure_code(facts) or (ExitCode.NO_GPU if not have_driver else ExitCode.GPU_UNUSABLE)
        return (
            detect_check(
                "cuda.driver_api",
                title,
                Status.SKIP if cpu else Status.FAIL,
                f"cuInit failed: {info.init_error}",
                None if cpu else cuinit_fix(info.init_error, facts),
                code,
                **ev,
            ),
        )
    summary = f"cuInit ok, CUDA {info.version_str}, {info.device_count} device(s) visible"
    return (detect_check("cuda.driver_api", title, Status.PASS, summary, **ev),)


# -- minimums ----------------------------------------------------------------------------------------------


def _minimum_check(g: GpuInfo, min_vram_gb: float, min_compute: float) -> Check:
    cid, title = f"min.{g.index}", f"Minimums for GPU {g.index}"
    ev: dict[str, Any] = {
        "memory_total_bytes": g.memory_total,
        "min_vram_gb": min_vram_gb,
        "compute_capability": g.compute_capability_str,
        "min_compute": min_compute,
    }
    shortfalls: list[str] = []
    if g.memory_total is not None and g.memory_total / GIB < min_vram_gb:
        # Two decimals and MiB: a 1998 MiB card must not read "2.0 GiB < 2 GiB (short by 0.0 GiB)".
        shortfalls.append(
            f"VRAM {g.memory_total / GIB:.2f} GiB < {min_vram_gb:g} GiB "
            f"(short by {(min_vram_gb * GIB - g.memory_total) / 1024**2:.0f} MiB)"
        )
    if g.compute_capability is not None:
        cc = g.compute_capability[0] + g.compute_capability[1] / 10
        if cc + 1e-9 < min_compute:
            shortfalls.append(f"compute capability {cc:.1f} < {min_compute:g}")
    if shortfalls:
        return detect_check(
            cid, title, Status.FAIL, "; ".join(shortfalls), FIX_BELOW_MINIMUMS, ExitCode.BELOW_THRESHOLD, **ev
        )
    reported = (("VRAM", g.memory_total), ("compute capability", g.compute_capability))
    unknown = [what for what, value in reported if value is None]
    if unknown:
        # Nothing to compare against the minimums: never report that as a pass.
        summary = f"{' and '.join(unknown)} not reported by NVML; minimums not verified"
        return detect_check(cid, title, Status.WARN, summary, FIX_MINIMUMS_UNKNOWN, **ev)
    vram = f"{g.memory_total / GIB:.1f} GiB" if g.memory_total is not None else "VRAM n/a"
    summary = f"{vram} ≥ {min_vram_gb:g} GiB, cc {g.compute_capability_str or 'n/a'} ≥ {min_compute:g}"
    return detect_check(cid, title, Status.PASS, summary, **ev)


def check_minimums(facts: Facts) -> tuple[Check, ...]:
    """VRAM and compute capability per usable GPU; a CPU run has no minimums."""
    opts = facts.options
    if opts.cpu_mode:
        return ()
    usable = (g for g in facts.selected if not g.lost and g.error is None and g.index not in facts.hidden)
    return tuple(_minimum_check(g, opts.min_vram_gb, opts.min_compute) for g in usable)
