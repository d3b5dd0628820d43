"""The machine as `setup` sees it: GPUs, driver, toolkits, compiler, disk, memory, the installed build and the
cache, read once by `gather_facts` so that `plan.make_plan` stays a pure function of these facts.

The NVML and llama.cpp reads go through the same seams `detect` uses.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcuda_validate.engine import toolkit as tk
from kcuda_validate.engine.toolkit import cc_text


@dataclass(frozen=True)
class GpuTarget:
    index: int
    name: str | None
    cc: tuple[int, int] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": None if self.cc is None else cc_text(self.cc),
        }


@dataclass(frozen=True)
class InstalledEngine:
    """The llama-cpp-python in this environment, as the build probe (a fresh process) saw it."""

    version: str | None
    has_cuda: bool = False
    offload: bool = False
    archs: tuple[int, ...] = ()  # ggml's ARCHS: 900 for sm_90
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "has_cuda": self.has_cuda,
            "offload": self.offload,
            "archs": [a // 10 for a in self.archs],
            "error": self.error,
        }


@dataclass(frozen=True)
class MachineFacts:
    gpus: tuple[GpuTarget, ...]
    driver_version: str | None
    driver_cuda: str | None
    nvml_error: str | None
    wsl2: bool
    system_toolkits: tuple[tk.SystemToolkit, ...]
    compiler: tk.HostCompiler | None
    env_cuda_runtime: str | None  # the environment's nvidia-cuda-runtime (PyTorch's CUDA), e.g. "13.2"
    env_cublas_majors: tuple[int, ...]  # CUDA majors whose cuBLAS the environment already has
    llama_version: str
    installed: InstalledEngine
    cached: tuple[str, ...]  # keys of the wheels in the cache
    cache_dir: Path
    disk_free: int | None
    cpus: int
    mem_available: int | None
    uv: tuple[str, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "driver_version": self.driver_version,
            "driver_cuda": self.driver_cuda,
            "nvml_error": self.nvml_error,
            "wsl2": self.wsl2,
            "system_toolkits": [t.to_json() for t in self.system_toolkits],
            "host_compiler": None if self.compiler is None else self.compiler.to_json(),
            "env_cuda_runtime": self.env_cuda_runtime,
            "llama_cpp_python": self.llama_version,
            "installed": self.installed.to_json(),
            "cached": list(self.cached),
            "cache_dir": str(self.cache_dir),
            "disk_free_bytes": self.disk_free,
            "cpus": self.cpus,
            "mem_available_bytes": self.mem_available,
        }


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_gpus() -> tuple[tuple[GpuTarget, ...], str | None, str | None, str | None]:
    """(GPUs, driver version, driver CUDA version, why NVML could not say) through the one NVML helper."""
    from kcuda_validate.gpu.nvml import Nvml, NvmlInitError, parse_visible_devices

    try:
        nvml = Nvml.open()
    except NvmlInitError as exc:
        return (), None, None, f"{exc.kind.replace('_', ' ')}: {exc}"
    with nvml:
        d = nvml.driver()
        gpus = tuple(nvml.gpu(i) for i in range(d.device_count))
    hidden = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus) or ()
    usable = [g for g in gpus if not g.lost and g.error is None and g.index not in hidden]
    why = None if usable else ("every GPU is hidden, lost or unreadable" if gpus else "the driver lists no GPU")
    targets = tuple(GpuTarget(g.index, g.name, g.compute_capability) for g in usable)
    return targets, d.driver_version, d.cuda_version, why


def installed_engine() -> InstalledEngine:
    """The environment's llama-cpp-python as a fresh process sees it (the same probe `detect` uses)."""
    from kcuda_validate.llm.build import probe_llama_build

    info = probe_llama_build()
    return InstalledEngine(
        version=info.version,
        has_cuda=info.has_cuda,
        offload=info.supports_gpu_offload,
        archs=info.cuda_archs,
        error=info.error,
    )


def gather_facts(environ: Mapping[str, str] | None = None) -> MachineFacts:
    """Read the machine. The NVML and llama.cpp reads go through the same seams `detect` uses."""
    from kcuda_validate.engine.install import cache_dir, cached_keys, locked_llama
    from kcuda_validate.gpu.platform import probe_platform

    env = dict(os.environ if environ is None else environ)
    gpus, driver_version, driver_cuda, why = read_gpus()
    cache = cache_dir(env)
    probe_dir = cache
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        free: int | None = shutil.disk_usage(probe_dir).free
    except OSError:
        free = None
    site = tk.site_packages()
    uv = tk.uv_command(env)
    return MachineFacts(
        gpus=gpus,
        driver_version=driver_version,
        driver_cuda=driver_cuda,
        nvml_error=why,
        wsl2=probe_platform().is_wsl2,
        system_toolkits=tk.find_system_toolkits(env),
        compiler=tk.find_host_compiler(env),
        env_cuda_runtime=tk.env_cuda_runtime_version(site),
        env_cublas_majors=tuple(m for m in (12, 13) if tk.env_cuda_layer(m, site) is not None),
        llama_version=locked_llama().version,
        installed=installed_engine(),
        cached=cached_keys(cache),
        cache_dir=cache,
        disk_free=free,
        cpus=_cpus(),
        mem_available=_mem_available(),
        uv=None if uv is None else tuple(uv),
    )
