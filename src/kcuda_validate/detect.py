"""The GPU detector: every layer of the CUDA stack, checked in order, with evidence and fixes.

Layers: platform -> driver/NVML -> each GPU -> CUDA driver API -> PyTorch ->
llama-cpp-python -> minimums -> environment. Each yields `Check`s; the
report's exit code is the most specific failure.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcuda_validate.checks import Check, Status, verdict
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.gpu.cudadrv import CudaDriverInfo, probe_cuda_driver
from kcuda_validate.gpu.nvml import DriverInfo, GpuInfo, Nvml, NvmlInitError, parse_visible_devices
from kcuda_validate.gpu.platform import PlatformInfo, on_windows_mount, probe_platform
from kcuda_validate.gpu.torchprobe import TorchInfo, probe_torch
from kcuda_validate.llm.build import LlamaBuildInfo, LlamaBuildProbe, arch_compatibility, invocation, setup_fix
from kcuda_validate.versions import dist_version

log = logging.getLogger(__name__)

GIB = 1024**3
DEFAULT_MIN_VRAM_GB = 2.0
DEFAULT_MIN_COMPUTE = 6.1
STAGE = "detect"

FIX_INSTALL_DRIVER = (
    "Install the NVIDIA driver: on Ubuntu `sudo ubuntu-drivers install` then reboot; "
    "on WSL2 install the Windows NVIDIA driver (not a Linux one) and run `wsl --update`."
)
FIX_LOAD_MODULE = (
    "Load the kernel module: `sudo modprobe nvidia` (if it fails, check `dmesg` and Secure Boot "
    "module signing), or reboot after installing the driver."
)
FIX_WSL_NO_MODULE = (
    "WSL2 has no NVIDIA kernel module to load: a Linux libnvidia-ml is shadowing the Windows driver's. Remove "
    "any Linux NVIDIA driver inside WSL2 (keep /usr/lib/wsl/lib), run `sudo ldconfig`, then `wsl --shutdown`."
)
FIX_MISMATCH = (
    "The kernel module and user-space driver differ (usually after a driver upgrade): reboot, or reload with "
    "`sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia`."
)


@dataclass(frozen=True)
class DetectOptions:
    device: int | None = None  # NVML index; None = all
    skip_torch: bool = False
    min_vram_gb: float = DEFAULT_MIN_VRAM_GB
    min_compute: float = DEFAULT_MIN_COMPUTE
    cpu_mode: bool = False  # a CPU-only run: no GPU is required and none is claimed
    model_dir: Path | None = None  # checked for a slow Windows mount on WSL2
    root: Path | None = None  # None = kcuda_validate.gpu.platform.ROOT


@dataclass(frozen=True)
class DetectReport:
    checks: tuple[Check, ...]
    platform: PlatformInfo
    driver: DriverInfo | None
    nvml_error: str | None
    gpus: tuple[GpuInfo, ...]
    hidden: tuple[int, ...]
    cuda: CudaDriverInfo | None
    torch: TorchInfo | None
    llama: LlamaBuildInfo
    env: Mapping[str, Any] = field(default_factory=dict)
    cpu_mode: bool = False
    duration_s: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        return verdict(self.checks)

    @property
    def usable_gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(g for g in self.gpus if not g.lost and g.error is None and g.index not in self.hidden)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_mode": self.cpu_mode,
            "platform": self.platform.to_json(),
            "driver": None
            if self.driver is None
            else {
                "driver_version": self.driver.driver_version,
                "cuda_version": self.driver.cuda_version,
                "nvml_version": self.driver.nvml_version,
                "device_count": self.driver.device_count,
            },
            "nvml_error": self.nvml_error,
            "gpus": [g.to_json() | {"hidden": g.index in self.hidden} for g in self.gpus],
            "cuda_driver_api": None if self.cuda is None else self.cuda.to_json(),
            "torch": None if self.torch is None else self.torch.to_json(),
            "llama_cpp": self.llama.to_json(),
            "env": dict(self.env),
        }


def _check(
    id: str, title: str, status: Status, summary: str, fix: str | None = None, code: ExitCode = ExitCode.OK, **ev: Any
) -> Check:
    return Check(id, STAGE, title, status, summary, ev, fix, code)


class GpuDetector:
    """Runs the layered checks. The hardware is reached only through the gpu/ and llm.build seams."""

    def __init__(self, options: DetectOptions, environ: Mapping[str, str] | None = None) -> None:
        self.opts = options
        self.env = dict(os.environ if environ is None else environ)
        self._invocation = invocation(self.env)  # for fix texts: `python3 -m uv run kcuda-validate` in a checkout

    def run(self) -> DetectReport:
        start = time.perf_counter()
        llama_probe = LlamaBuildProbe()  # a child process: runs while the other layers are checked
        checks: list[Check] = []
        plat = probe_platform(self.opts.root)
        checks += self._platform_checks(plat)

        driver, nvml_error, gpus = self._nvml(checks, wsl2=plat.is_wsl2)
        hidden = parse_visible_devices(self.env.get("CUDA_VISIBLE_DEVICES"), gpus) or ()
        if self.opts.device is not None and gpus and self.opts.device not in {g.index for g in gpus}:
            found = ", ".join(str(g.index) for g in gpus)
            raise UsageError(
                f"--device {self.opts.device}: no such GPU (found {len(gpus)}: {found})",
                fix="Pick an index from `kcuda-validate detect`.",
            )
        selected = tuple(g for g in gpus if self.opts.device is None or g.index == self.opts.device)
        checks += self._gpu_checks(selected, hidden)

        cuda = self._cuda_checks(checks, have_driver=driver is not None)
        torch = self._torch_checks(checks, driver, selected, hidden)
        llama = llama_probe.result()
        checks += self._llama_checks(llama, selected, hidden)
        checks += self._minimum_checks(selected, hidden)
        env = self._env_evidence()
        checks += self._env_checks(gpus, hidden)
        return DetectReport(
            checks=tuple(checks),
            platform=plat,
            driver=driver,
            nvml_error=nvml_error,
            gpus=gpus,
            hidden=hidden,
            cuda=cuda,
            torch=torch,
            llama=llama,
            env=env,
            cpu_mode=self.opts.cpu_mode,
            duration_s=time.perf_counter() - start,
        )

    # -- 1. platform ---------------------------------------------------------------------------
    def _platform_checks(self, plat: PlatformInfo) -> list[Check]:
        out: list[Check] = []
        kind = "WSL2" if plat.is_wsl2 else ("WSL1" if plat.is_wsl else plat.system)
        ev = plat.to_json()
        if plat.system != "Linux":
            out.append(
                _check(
                    "platform.os",
                    "Operating system",
                    Status.FAIL,
                    f"{plat.system} is not supported",
                    "Run on Linux or under WSL2 on Windows.",
                    ExitCode.NO_GPU,
                    **ev,
                )
            )
            return out
        if plat.is_wsl and not plat.is_wsl2:
            out.append(
                _check(
                    "platform.os",
                    "Operating system",
                    Status.FAIL,
                    "WSL1 has no GPU support",
                    "Convert the distro to WSL2: `wsl --set-version <distro> 2`.",
                    ExitCode.NO_GPU,
                    **ev,
                )
            )
            return out
        out.append(_check("platform.os", "Operating system", Status.PASS, f"{kind}, kernel {plat.kernel}", **ev))
        if not plat.is_wsl2:
            return out
        missing = [lib for lib, present in plat.wsl_libs.items() if not present]
        if missing or not plat.has_dxg:
            what = ", ".join(missing) if missing else "/dev/dxg"
            out.append(
                _check(
                    "platform.wsl_libs",
                    "WSL2 GPU libraries",
                    Status.FAIL,
                    f"missing {what} from the Windows driver",
                    "Install or update the NVIDIA driver on Windows (it provides /usr/lib/wsl/lib), "
                    "then `wsl --shutdown` and reopen.",
                    ExitCode.NO_GPU,
                    **ev,
                )
            )
        elif plat.wsl_libs_in_loader_path is False:
            out.append(
                _check(
                    "platform.wsl_libs",
                    "WSL2 GPU libraries",
                    Status.WARN,
                    "/usr/lib/wsl/lib is not in the loader path",
                    "Add it: `echo /usr/lib/wsl/lib | sudo tee /etc/ld.so.conf.d/ld.wsl.conf && sudo ldconfig`.",
                    **ev,
                )
            )
        else:
            out.append(
                _check("platform.wsl_libs", "WSL2 GPU libraries", Status.PASS, "present in /usr/lib/wsl/lib", **ev)
            )
        if plat.linux_driver_in_wsl:
            out.append(
                _check(
                    "platform.wsl_linux_driver",
                    "Linux driver inside WSL2",
                    Status.FAIL,
                    "a Linux NVIDIA driver is installed inside WSL2: " + ", ".join(plat.linux_driver_in_wsl),
                    "Remove it (`sudo apt-get remove --purge '^nvidia-.*' '^libnvidia-.*'`); WSL2 must use "
                    "the Windows driver's libraries in /usr/lib/wsl/lib. Then `sudo ldconfig`.",
                    ExitCode.GPU_UNUSABLE,
                    files=list(plat.linux_driver_in_wsl),
                )
            )
        if self.opts.model_dir is not None and on_windows_mount(self.opts.model_dir, self.opts.root):
            out.append(
                _check(
                    "platform.model_dir",
                    "Model directory location",
                    Status.WARN,
                    f"{self.opts.model_dir} is on a Windows drive; model loads will be many times slower",
                    "Keep models on the Linux filesystem, e.g. `export HF_HOME=~/.cache/huggingface`.",
                    model_dir=str(self.opts.model_dir),
                )
            )
        return out

    # -- 2./3. driver, NVML and each GPU -------------------------------------------------------------
    def _nvml(
        self, checks: list[Check], wsl2: bool = False
    ) -> tuple[DriverInfo | None, str | None, tuple[GpuInfo, ...]]:
        cpu = self.opts.cpu_mode
        try:
            nvml = Nvml.open()
        except NvmlInitError as exc:
            status = Status.SKIP if cpu else Status.FAIL
            suffix = " (CPU run: no GPU needed)" if cpu else ""
            table = {
                "library_not_found": (
                    "No NVIDIA driver: libnvidia-ml.so.1 was not found",
                    FIX_INSTALL_DRIVER,
                    ExitCode.NO_GPU,
                ),
                "driver_not_loaded": (
                    "NVIDIA driver installed but its kernel module is not loaded",
                    FIX_WSL_NO_MODULE if wsl2 else FIX_LOAD_MODULE,
                    ExitCode.NO_GPU,
                ),
                "version_mismatch": (
                    "Driver/library version mismatch",
                    FIX_MISMATCH,
                    ExitCode.GPU_UNUSABLE,
                ),
                "no_permission": (
                    "No permission to open the NVIDIA device files",
                    "Check /dev/nvidia* permissions (add your user to the `video` group) or run the "
                    "container with `--gpus all`.",
                    ExitCode.GPU_UNUSABLE,
                ),
                "bindings_missing": (
                    "nvidia-ml-py is not installed in this environment",
                    "Reinstall the tool's dependencies: `uv sync`.",
                    ExitCode.GPU_UNUSABLE,
                ),
            }
            summary, fix, code = table.get(exc.kind, (f"NVML failed to start: {exc.detail}", FIX_INSTALL_DRIVER, 3))
            checks.append(
                _check(
                    "driver.nvml",
                    "NVIDIA driver (NVML)",
                    status,
                    summary + suffix,
                    None if cpu else fix,
                    ExitCode(code),
                    kind=exc.kind,
                    detail=exc.detail,
                )
            )
            return None, exc.kind, ()
        with nvml:
            driver = nvml.driver()
            ev: dict[str, Any] = {
                "driver_version": driver.driver_version,
                "cuda_version": driver.cuda_version,
                "device_count": driver.device_count,
            }
            if driver.device_count == 0:
                checks.append(
                    _check(
                        "driver.nvml",
                        "NVIDIA driver (NVML)",
                        Status.SKIP if cpu else Status.FAIL,
                        f"driver {driver.driver_version} loaded but it sees no GPU",
                        None
                        if cpu
                        else "Check that the GPU is seated and powered (`lspci | grep -i nvidia`), "
                        "and that a container was started with `--gpus all`.",
                        ExitCode.NO_GPU,
                        **ev,
                    )
                )
                return driver, "no_device", ()
            checks.append(
                _check(
                    "driver.nvml",
                    "NVIDIA driver (NVML)",
                    Status.PASS,
                    f"driver {driver.driver_version}, supports CUDA ≤ {driver.cuda_version or 'n/a'}, "
                    f"{driver.device_count} GPU(s)",
                    **ev,
                )
            )
            gpus = tuple(nvml.gpu(i) for i in range(driver.device_count))
        return driver, None, gpus

    def _gpu_checks(self, gpus: tuple[GpuInfo, ...], hidden: tuple[int, ...]) -> list[Check]:
        out: list[Check] = []
        for g in gpus:
            cid, title = f"gpu.{g.index}", f"GPU {g.index}"
            ev = g.to_json()
            if g.lost:
                out.append(
                    _check(
                        cid,
                        title,
                        Status.FAIL,
                        "GPU has fallen off the bus (NVML: GPU is lost)",
                        "Check `sudo dmesg | grep -i xid` (Xid 79); reboot, and check the GPU's power and "
                        "seating or PCIe riser.",
                        ExitCode.GPU_UNUSABLE,
                        **ev,
                    )
                )
                continue
            if g.error is not None:
                # NVML enumerates it but cannot open it (nvidia-smi: "Unable to determine the device handle").
                out.append(
                    _check(
                        cid,
                        title,
                        Status.FAIL,
                        f"NVML cannot open this GPU: {g.error}",
                        'Run `nvidia-smi` and `sudo dmesg | grep -i xid`; "Unable to determine the device handle" '
                        "usually needs a reboot. In a container, check that /dev/nvidia* for this GPU is mounted.",
                        ExitCode.GPU_UNUSABLE,
                        **ev,
                    )
                )
                continue
            if g.index in hidden:
                out.append(_check(cid, title, Status.SKIP, f"{g.name} hidden by CUDA_VISIBLE_DEVICES", **ev))
                continue
            mem = (
                f"{g.memory_total / GIB:.1f} GiB ({g.memory_free / GIB:.1f} free)"
                if g.memory_total is not None and g.memory_free is not None
                else "VRAM n/a"
            )
            summary = f"{g.name}, cc {g.compute_capability_str or 'n/a'}, {mem}"
            problems: list[str] = []
            fixes: list[str] = []
            if g.retired_pages_pending:
                problems.append("retired memory pages pending")
                fixes.append("Reboot to retire the pending pages; if it recurs, the board's memory is failing.")
            if g.mig_enabled:
                problems.append("MIG mode is on")
                fixes.append(
                    "Select a MIG instance: `CUDA_VISIBLE_DEVICES=MIG-<uuid>` (see `nvidia-smi -L`), "
                    "or disable MIG: `sudo nvidia-smi -i N -mig 0`."
                )
            if g.pcie_width_current and g.pcie_width_max and g.pcie_width_current < g.pcie_width_max:
                problems.append(f"PCIe link x{g.pcie_width_current} of x{g.pcie_width_max}")
                fixes.append("Reseat the card in a full-width slot; a narrow link slows model loading.")
            if problems:
                out.append(_check(cid, title, Status.WARN, summary + "; " + "; ".join(problems), " ".join(fixes), **ev))
            else:
                out.append(_check(cid, title, Status.PASS, summary, **ev))
        return out

    # -- 4. CUDA driver API --------------------------------------------------------------------------
    def _cuda_checks(self, checks: list[Check], have_driver: bool) -> CudaDriverInfo | None:
        cpu = self.opts.cpu_mode
        info = probe_cuda_driver()
        ev = info.to_json()
        title = "CUDA driver API"
        if not info.library_loaded:
            if cpu or not have_driver:
                checks.append(
                    _check(
                        "cuda.driver_api",
                        title,
                        Status.SKIP,
                        "libcuda.so.1 not found" + (" (CPU run)" if cpu else " (no driver)"),
                        **ev,
                    )
                )
            else:
                checks.append(
                    _check(
                        "cuda.driver_api",
                        title,
                        Status.FAIL,
                        "NVML works but libcuda.so.1 cannot be loaded",
                        "Install the driver's CUDA user-space library (e.g. `libnvidia-compute-<ver>`); on WSL2 "
                        "make sure /usr/lib/wsl/lib is in the loader path.",
                        ExitCode.GPU_UNUSABLE,
                        **ev,
                    )
                )
            return info
        if info.init_result != 0:
            fixes = {
                "CUDA_ERROR_STUB_LIBRARY": "A CUDA toolkit stub libcuda is on the loader path; remove "
                ".../cuda/lib64/stubs from LD_LIBRARY_PATH.",
                "CUDA_ERROR_INSUFFICIENT_DRIVER": "The driver is older than this libcuda; reinstall the driver "
                "so kernel module and libcuda match, or reboot.",
                "CUDA_ERROR_NO_DEVICE": "CUDA sees no device: check CUDA_VISIBLE_DEVICES and container GPU access.",
                "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH": FIX_MISMATCH,
                "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE": "A forward-compat libcuda is installed for a GPU "
                "that does not support it; remove the cuda-compat package.",
            }
            status = Status.SKIP if cpu else Status.FAIL
            # When NVML already failed, its diagnosis decides the code: a driver that is installed but
            # mismatched or not permitted is "unusable" (4), not "absent" (3).
            nvml_failed = next((c for c in checks if c.id == "driver.nvml" and c.status == Status.FAIL), None)
            if nvml_failed is not None:
                code = nvml_failed.exit_code
            else:
                code = ExitCode.NO_GPU if not have_driver else ExitCode.GPU_UNUSABLE
            checks.append(
                _check(
                    "cuda.driver_api",
                    title,
                    status,
                    f"cuInit failed: {info.init_error}",
                    None if cpu else fixes.get(info.init_error or "", "Reboot; if it persists reinstall the driver."),
                    code,
                    **ev,
                )
            )
            return info
        checks.append(
            _check(
                "cuda.driver_api",
                title,
                Status.PASS,
                f"cuInit ok, CUDA {info.version_str}, {info.device_count} device(s) visible",
                **ev,
            )
        )
        return info

    # -- 5. PyTorch ----------------------------------------------------------------------------------
    def _torch_checks(
        self, checks: list[Check], driver: DriverInfo | None, gpus: tuple[GpuInfo, ...], hidden: tuple[int, ...]
    ) -> TorchInfo | None:
        title = "PyTorch CUDA"
        if self.opts.skip_torch:
            checks.append(_check("torch.cuda", title, Status.SKIP, "skipped (--skip-torch)"))
            return None
        if driver is None and not self.opts.cpu_mode:
            checks.append(_check("torch.cuda", title, Status.SKIP, "skipped: no NVIDIA driver"))
            return None
        if self.opts.cpu_mode:
            # A CPU run needs nothing from torch; its version comes from metadata without the import cost.
            version = dist_version("torch")
            checks.append(
                _check(
                    "torch.cuda",
                    title,
                    Status.SKIP,
                    f"torch {version or 'not installed'}; CPU run, not required",
                    version=version,
                )
            )
            return None
        info = probe_torch(run_kernel=True)
        ev = info.to_json()
        drv_cuda = driver.cuda_version if driver else None
        newer = _version_gt(info.cuda_build, drv_cuda)
        problem_text = {
            "not_installed": (
                "PyTorch is not installed",
                "Reinstall the tool's dependencies: `uv sync`.",
            ),
            "cpu_build": (
                f"torch {info.version} is a CPU-only build (Torch not compiled with CUDA enabled)",
                "Install a CUDA build matching the driver, e.g. "
                f"`uv pip install --reinstall torch --index-url https://download.pytorch.org/whl/{_cu_tag(drv_cuda)}`, "
                "then run with `uv run --no-sync ...` so uv keeps it.",
            ),
            "no_driver": (
                "PyTorch found no NVIDIA driver",
                "PyTorch cannot open the driver NVML sees; check LD_LIBRARY_PATH for a stray libcuda and reboot.",
            ),
            "driver_too_old": (
                f"torch is built for CUDA {info.cuda_build} but the driver supports only CUDA {drv_cuda or '?'}",
                f"Update the NVIDIA driver to one supporting CUDA {info.cuda_build}, or install torch built for "
                f"CUDA ≤ {drv_cuda}: `uv pip install --reinstall torch --index-url "
                f"https://download.pytorch.org/whl/{_cu_tag(drv_cuda)}`, then run with `uv run --no-sync ...` so "
                "uv keeps it.",
            ),
            "no_device": ("PyTorch sees no CUDA device", "Check CUDA_VISIBLE_DEVICES and container GPU access."),
            "crashed": (
                f"PyTorch's CUDA check died: {info.message}",
                "Usually a driver/library mismatch or a broken CUDA install: reboot, then reinstall the driver; "
                "check `dmesg` for Xid errors.",
            ),
            "kernel_failed": (
                f"a CUDA kernel failed: {info.message}",
                "Check `dmesg` for Xid errors; make sure torch's CUDA build supports this GPU's compute capability.",
            ),
        }
        if info.problem is not None:
            problem = info.problem
            if problem == "no_device" and newer:
                problem = "driver_too_old"
            summary, fix = problem_text[problem]
            # llama.cpp does not need PyTorch: say how to validate the inference path without it.
            fix += " (If you only need llama.cpp inference, rerun with --skip-torch.)"
            checks.append(_check("torch.cuda", title, Status.FAIL, summary, fix, ExitCode.GPU_UNUSABLE, **ev))
            return info
        visible = [g for g in gpus if g.index not in hidden and not g.lost]
        summary = f"torch {info.version}, CUDA {info.cuda_build}, sees {info.device_count} GPU(s)"
        if newer:
            checks.append(
                _check(
                    "torch.cuda",
                    title,
                    Status.WARN,
                    summary + f"; built for CUDA {info.cuda_build} > driver's {drv_cuda} (minor-version compat)",
                    "Update the NVIDIA driver to avoid PTX JIT failures in newer kernels.",
                    **ev,
                )
            )
        else:
            checks.append(_check("torch.cuda", title, Status.PASS, summary, **ev))
        if visible and info.device_count != len(visible):
            log.info("torch sees %d devices, NVML %d visible", info.device_count, len(visible))
        for dev in info.devices:
            cid = f"torch.kernel.{dev.index}"
            if dev.kernel_ok:
                checks.append(
                    _check(
                        cid,
                        f"PyTorch kernel on cuda:{dev.index}",
                        Status.PASS,
                        f"512×512 matmul on {dev.name} matches CPU ({dev.kernel_ms:.1f} ms)",
                        **dev.__dict__,
                    )
                )
            else:
                checks.append(
                    _check(
                        cid,
                        f"PyTorch kernel on cuda:{dev.index}",
                        Status.FAIL,
                        f"matmul on {dev.name} failed: {dev.kernel_error}",
                        f"Check `dmesg` for Xid errors and that torch supports compute capability {dev.capability}.",
                        ExitCode.GPU_UNUSABLE,
                        **dev.__dict__,
                    )
                )
        return info

    # -- 6. llama-cpp-python -------------------------------------------------------------------------
    def _llama_checks(self, llama: LlamaBuildInfo, gpus: tuple[GpuInfo, ...], hidden: tuple[int, ...]) -> list[Check]:
        out: list[Check] = []
        ev = llama.to_json()
        title = "llama-cpp-python GPU offload"
        if not llama.installed or llama.error:
            out.append(
                _check(
                    "llama.build",
                    title,
                    Status.FAIL,
                    llama.error or "llama-cpp-python is not installed",
                    setup_fix(self._invocation, "installs a llama-cpp-python build that loads here")
                    if llama.installed
                    else f"Reinstall the tool's dependencies (`uv sync`), then run `{self._invocation} setup`.",
                    ExitCode.GPU_UNUSABLE,
                    **ev,
                )
            )
            return out
        visible = [g for g in gpus if g.index not in hidden and not g.lost]
        backends = "+".join(llama.backends) or "no backend"
        if self.opts.cpu_mode:
            out.append(
                _check(
                    "llama.build",
                    title,
                    Status.SKIP,
                    f"llama-cpp-python {llama.version} ({backends}); CPU run, offload not required",
                    **ev,
                )
            )
            return out
        if not llama.supports_gpu_offload:
            status = Status.FAIL if visible else Status.SKIP
            summary = f"llama-cpp-python {llama.version} is a CPU-only build ({backends})"
            out.append(
                _check(
                    "llama.build",
                    title,
                    status,
                    summary + ("" if visible else "; no GPU to offload to"),
                    setup_fix(self._invocation) if visible else None,
                    ExitCode.GPU_UNUSABLE,
                    **ev,
                )
            )
            return out
        out.append(
            _check(
                "llama.build",
                title,
                Status.PASS,
                f"llama-cpp-python {llama.version}, backends {backends}",
                **ev,
            )
        )
        if llama.has_cuda:
            for g in visible:
                if g.compute_capability is None:
                    continue
                verdict_, why = arch_compatibility(llama.cuda_archs, g.compute_capability)
                cid = f"llama.archs.{g.index}"
                if verdict_ == "ok":
                    out.append(_check(cid, f"CUDA archs for GPU {g.index}", Status.PASS, why, **ev))
                elif verdict_ == "ptx":
                    out.append(
                        _check(
                            cid,
                            f"CUDA archs for GPU {g.index}",
                            Status.WARN,
                            why,
                            setup_fix(
                                self._invocation,
                                f"rebuilds llama-cpp-python for sm_{g.compute_capability[0]}{g.compute_capability[1]}",
                            ),
                            **ev,
                        )
                    )
                else:
                    out.append(
                        _check(
                            cid,
                            f"CUDA archs for GPU {g.index}",
                            Status.FAIL,
                            why,
                            setup_fix(
                                self._invocation,
                                f"rebuilds llama-cpp-python for sm_{g.compute_capability[0]}{g.compute_capability[1]}",
                            ),
                            ExitCode.GPU_UNUSABLE,
                            **ev,
                        )
                    )
        return out

    # -- 7. minimums ---------------------------------------------------------------------------------
    def _minimum_checks(self, gpus: tuple[GpuInfo, ...], hidden: tuple[int, ...]) -> list[Check]:
        out: list[Check] = []
        if self.opts.cpu_mode:
            return out
        for g in gpus:
            if g.lost or g.error is not None or g.index in hidden:
                continue
            ev: dict[str, Any] = {
                "memory_total_bytes": g.memory_total,
                "min_vram_gb": self.opts.min_vram_gb,
                "compute_capability": g.compute_capability_str,
                "min_compute": self.opts.min_compute,
            }
            shortfalls: list[str] = []
            if g.memory_total is not None and g.memory_total / GIB < self.opts.min_vram_gb:
                # Two decimals and MiB: a 1998 MiB card must not read "2.0 GiB < 2 GiB (short by 0.0 GiB)".
                shortfalls.append(
                    f"VRAM {g.memory_total / GIB:.2f} GiB < {self.opts.min_vram_gb:g} GiB "
                    f"(short by {(self.opts.min_vram_gb * GIB - g.memory_total) / 1024**2:.0f} MiB)"
                )
            if g.compute_capability is not None:
                cc = g.compute_capability[0] + g.compute_capability[1] / 10
                if cc + 1e-9 < self.opts.min_compute:
                    shortfalls.append(f"compute capability {cc:.1f} < {self.opts.min_compute:g}")
            cid = f"min.{g.index}"
            unknown = [
                what
                for what, value in (("VRAM", g.memory_total), ("compute capability", g.compute_capability))
                if value is None
            ]
            if shortfalls:
                out.append(
                    _check(
                        cid,
                        f"Minimums for GPU {g.index}",
                        Status.FAIL,
                        "; ".join(shortfalls),
                        "Use a GPU that meets the minimums, or lower them with --min-vram-gb / --min-compute "
                        "if a smaller model is enough.",
                        ExitCode.BELOW_THRESHOLD,
                        **ev,
                    )
                )
            elif unknown:
                # Nothing to compare against the minimums: never report that as a pass.
                out.append(
                    _check(
                        cid,
                        f"Minimums for GPU {g.index}",
                        Status.WARN,
                        f"{' and '.join(unknown)} not reported by NVML; minimums not verified",
                        "Check this GPU's memory and compute capability with `nvidia-smi -q` before relying on it.",
                        **ev,
                    )
                )
            else:
                vram = f"{g.memory_total / GIB:.1f} GiB" if g.memory_total is not None else "VRAM n/a"
                out.append(
                    _check(
                        cid,
                        f"Minimums for GPU {g.index}",
                        Status.PASS,
                        f"{vram} ≥ {self.opts.min_vram_gb:g} GiB, cc {g.compute_capability_str or 'n/a'} ≥ "
                        f"{self.opts.min_compute:g}",
                        **ev,
                    )
                )
        return out

    # -- 8. environment ------------------------------------------------------------------------------
    def _env_evidence(self) -> dict[str, Any]:
        return {
            "CUDA_VISIBLE_DEVICES": self.env.get("CUDA_VISIBLE_DEVICES"),
            "CUDA_DEVICE_ORDER": self.env.get("CUDA_DEVICE_ORDER"),
            "HF_HUB_OFFLINE": self.env.get("HF_HUB_OFFLINE"),
            "HF_TOKEN": "set" if self.env.get("HF_TOKEN") else None,
            "HF_HOME": self.env.get("HF_HOME"),
        }

    def _env_checks(self, gpus: tuple[GpuInfo, ...], hidden: tuple[int, ...]) -> list[Check]:
        out: list[Check] = []
        cvd = self.env.get("CUDA_VISIBLE_DEVICES")
        if cvd is not None and gpus:
            names = [f"{g.index} ({g.name})" for g in gpus if g.index in hidden]
            ev: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": cvd, "hidden": [g.index for g in gpus if g.index in hidden]}
            if len(hidden) == len(gpus):
                out.append(
                    _check(
                        "env.cuda_visible_devices",
                        "CUDA_VISIBLE_DEVICES",
                        Status.SKIP if self.opts.cpu_mode else Status.FAIL,
                        f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU: " + ", ".join(names),
                        None if self.opts.cpu_mode else "Unset it (`unset CUDA_VISIBLE_DEVICES`) or list a GPU index.",
                        ExitCode.GPU_UNUSABLE,
                        **ev,
                    )
                )
            elif hidden:
                out.append(
                    _check(
                        "env.cuda_visible_devices",
                        "CUDA_VISIBLE_DEVICES",
                        Status.WARN,
                        f"CUDA_VISIBLE_DEVICES={cvd!r} hides GPU " + ", ".join(names),
                        "Unset CUDA_VISIBLE_DEVICES if you meant to use every GPU.",
                        **ev,
                    )
                )
            else:
                out.append(
                    _check(
                        "env.cuda_visible_devices",
                        "CUDA_VISIBLE_DEVICES",
                        Status.PASS,
                        f"CUDA_VISIBLE_DEVICES={cvd!r} shows every GPU",
                        **ev,
                    )
                )
        offline = self.env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        token = "set" if self.env.get("HF_TOKEN") else "not set"
        summary = f"HF_HUB_OFFLINE={'on' if offline else 'off'}, HF_TOKEN {token}"
        if offline:
            out.append(
                _check(
                    "env.hub",
                    "Hugging Face Hub access",
                    Status.WARN,
                    summary + "; only models already in the cache can be loaded",
                    "Unset HF_HUB_OFFLINE to download, or pass --model-path / --synthetic.",
                    offline=True,
                    token=token,
                )
            )
        else:
            out.append(_check("env.hub", "Hugging Face Hub access", Status.PASS, summary, offline=False, token=token))
        return out


def _version_gt(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return tuple(int(x) for x in a.split(".")[:2]) > tuple(int(x) for x in b.split(".")[:2])
    except ValueError:
        return False


def _cu_tag(cuda: str | None) -> str:
    """download.pytorch.org index tag for a driver's CUDA version, e.g. "12.4" -> "cu124"."""
    if not cuda:
        return "cu124"
    major, _, minor = cuda.partition(".")
    # PyTorch publishes only some CUDA versions; the closest at or below the driver's.
    published = [(11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0)]
    want = (int(major), int(minor or 0))
    best = max((p for p in published if p <= want), default=(11, 8))
    return f"cu{best[0]}{best[1]}"
