"""The hardware facts detect judges, gathered lazily, and the report built from them.

Each fact is read by its service (gpu/, llm/build.py) at most once, and only when a check asks for it:
`detect --check driver.nvml` reads NVML and nothing else, so a node health check never pays for PyTorch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from kcuda_validate import defaults
from kcuda_validate.checks import Check, Status, verdict
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.gpu.cudadrv import CudaDriverInfo, probe_cuda_driver
from kcuda_validate.gpu.nvml import (
    DriverInfo,
    GpuInfo,
    Nvml,
    NvmlInitError,
    Visibility,
    visibility,
)
from kcuda_validate.gpu.platform import PlatformInfo, probe_platform
from kcuda_validate.gpu.torchprobe import TorchInfo, probe_torch
from kcuda_validate.llm.build import LlamaBuildInfo, LlamaBuildProbe, invocation
from kcuda_validate.model.hub import HubProbe, in_thread, probe_hub

GIB = 1024**3
DEFAULT_MIN_VRAM_GB = defaults.MIN_VRAM_GB
DEFAULT_MIN_COMPUTE = defaults.MIN_COMPUTE
STAGE = "detect"


@dataclass(frozen=True)
class DetectOptions:
    device: int | None = None  # NVML index; None = all
    skip_torch: bool = False
    min_vram_gb: float = DEFAULT_MIN_VRAM_GB
    min_compute: float = DEFAULT_MIN_COMPUTE
    cpu_mode: bool = False  # a CPU-only run: no GPU is required and none is claimed
    model_dir: Path | None = None  # checked for a slow Windows mount on WSL2
    root: Path | None = None  # None = kcuda_validate.gpu.platform.ROOT
    # The model the run will use (validate-all): `hub` with (repo, filename, revision), None = the default model;
    # `local` or `synthetic` need no Hub, and the Hub check then skips.
    model_origin: str = "hub"
    hub_model: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class NvmlFacts:
    """One NVML session's answers: the driver and every GPU it enumerates, or why NVML would not start."""

    driver: DriverInfo | None
    error: str | None  # NvmlInitError.kind, or "no_device" when the driver sees no GPU
    error_detail: str | None
    gpus: tuple[GpuInfo, ...]


def read_nvml() -> NvmlFacts:
    try:
        nvml = Nvml.open()
    except NvmlInitError as exc:
        return NvmlFacts(None, exc.kind, exc.detail, ())
    with nvml:
        driver = nvml.driver()
        if driver.device_count == 0:
            return NvmlFacts(driver, "no_device", None, ())
        return NvmlFacts(driver, None, None, tuple(nvml.gpu(i) for i in range(driver.device_count)))


def detect_check(
    id: str, title: str, status: Status, summary: str, fix: str | None = None, code: ExitCode = ExitCode.OK, **ev: Any
) -> Check:
    """A detect-stage Check; `code` is the exit code it gives when it fails."""
    return Check(id, STAGE, title, status, summary, ev, fix, code)


class Facts:
    """What the checks judge. Every property is read on first use and kept, so a subset reads only its part."""

    def __init__(self, options: DetectOptions, environ: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.env: dict[str, str] = dict(os.environ if environ is None else environ)
        self.invocation = invocation(self.env)  # for fix texts: `./run kcuda-validate` in a checkout
        self._llama_probe: LlamaBuildProbe | None = None
        self._hub_probe: Future[HubProbe | None] | None = None

    def start_llama_probe(self) -> None:
        """Start the build probe's child now, so it loads libllama while the other facts are read."""
        if self._llama_probe is None and "llama" not in self.__dict__:
            self._llama_probe = LlamaBuildProbe()  # held (so `close` can stop it) before its child exists
            self._llama_probe.start()

    def start_hub_probe(self) -> None:
        """Ask the Hub in a thread now: its answer (up to 4 s when it is unreachable) overlaps the other facts."""
        if self._hub_probe is None and "hub" not in self.__dict__:
            self._hub_probe = in_thread(self._probe_hub, "kcuda-hub-probe")

    def close(self) -> None:
        """Stop a build probe nobody collected (a usage error ended the run first)."""
        if self._llama_probe is not None:
            self._llama_probe.close()
            self._llama_probe = None

    @cached_property
    def platform(self) -> PlatformInfo:
        return probe_platform(self.options.root)

    @cached_property
    def nvml(self) -> NvmlFacts:
        facts = read_nvml()
        device, gpus = self.options.device, facts.gpus
        if device is not None and gpus and device not in {g.index for g in gpus}:
            found = ", ".join(str(g.index) for g in gpus)
            raise UsageError(
                f"--device {device}: no such GPU (found {len(gpus)}: {found})",
                fix=f"Pick an index from `{invocation()} detect`.",
            )
        return facts

    @property
    def wsl2(self) -> bool:
        return self.platform.is_wsl2

    @cached_property
    def hidden(self) -> tuple[int, ...]:
        """NVML indices CUDA_VISIBLE_DEVICES hides."""
        return self.visibility.hidden

    @cached_property
    def visibility(self) -> Visibility:
        """Which GPUs CUDA_VISIBLE_DEVICES hides, and how that is known (nvml.visibility)."""
        return visibility(
            self.env.get("CUDA_VISIBLE_DEVICES"),
            self.nvml.gpus,
            self.env.get("CUDA_DEVICE_ORDER"),
            lambda: self.cuda.device_uuids,
        )

    @cached_property
    def selected(self) -> tuple[GpuInfo, ...]:
        """The GPUs --device asks about (all of them without it), hidden ones included."""
        return tuple(g for g in self.nvml.gpus if self.options.device is None or g.index == self.options.device)

    @property
    def visible(self) -> tuple[GpuInfo, ...]:
        """Selected GPUs CUDA can see and that are still on the bus."""
        return tuple(g for g in self.selected if g.index not in self.hidden and not g.lost)

    @cached_property
    def cuda(self) -> CudaDriverInfo:
        return probe_cuda_driver()

    @cached_property
    def torch(self) -> TorchInfo:
        return probe_torch(run_kernel=True)

    @cached_property
    def llama(self) -> LlamaBuildInfo:
        if self._llama_probe is None:
            self._llama_probe = LlamaBuildProbe()
        try:
            return self._llama_probe.result()  # starts it if need be; held until answered, for `close`
        finally:
            self._llama_probe = None

    @cached_property
    def hub(self) -> HubProbe | None:
        """None: the run's model is a local or synthetic file, nothing to ask the Hub for."""
        future, self._hub_probe = self._hub_probe, None
        return self._probe_hub() if future is None else future.result()

    def _probe_hub(self) -> HubProbe | None:
        if self.options.model_origin != "hub":
            return None
        return probe_hub(*(self.options.hub_model or ()))

    def env_evidence(self) -> dict[str, Any]:
        return {
            "CUDA_VISIBLE_DEVICES": self.env.get("CUDA_VISIBLE_DEVICES"),
            "CUDA_DEVICE_ORDER": self.env.get("CUDA_DEVICE_ORDER"),
            "HF_HUB_OFFLINE": self.env.get("HF_HUB_OFFLINE"),
            "HF_TOKEN": "set" if self.env.get("HF_TOKEN") else None,
            "HF_HOME": self.env.get("HF_HOME"),
        }

    def gathered(self, name: str) -> Any:
        """A fact if some check read it, else None (the report shows only what was looked at)."""
        return self.__dict__.get(name)


@dataclass(frozen=True)
class DetectReport:
    """The checks that ran and the facts they were judged on; a fact no selected check needed is None."""

    checks: tuple[Check, ...]
    platform: PlatformInfo | None
    driver: DriverInfo | None
    nvml_error: str | None
    gpus: tuple[GpuInfo, ...]
    hidden: tuple[int, ...]
    cuda: CudaDriverInfo | None
    torch: TorchInfo | None
    llama: LlamaBuildInfo | None
    env: Mapping[str, Any] = field(default_factory=dict)
    cpu_mode: bool = False
    duration_s: float = 0.0
    only: tuple[str, ...] | None = None  # the registry IDs asked for; None = every check

    @property
    def exit_code(self) -> ExitCode:
        return verdict(self.checks)

    @property
    def usable_gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(g for g in self.gpus if not g.lost and g.error is None and g.index not in self.hidden)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_mode": self.cpu_mode,
            "platform": None if self.platform is None else self.platform.to_json(),
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
            "llama_cpp": None if self.llama is None else self.llama.to_json(),
            "env": dict(self.env),
            "only": None if self.only is None else list(self.only),
        }


def build_report(facts: Facts, checks: tuple[Check, ...], started: float, only: tuple[str, ...] | None) -> DetectReport:
    nvml: NvmlFacts | None = facts.gathered("nvml")
    return DetectReport(
        checks=checks,
        platform=facts.gathered("platform"),
        driver=None if nvml is None else nvml.driver,
        nvml_error=None if nvml is None else nvml.error,
        gpus=() if nvml is None else nvml.gpus,
        hidden=() if nvml is None else facts.hidden,
        cuda=facts.gathered("cuda"),
        torch=facts.gathered("torch"),
        llama=facts.gathered("llama"),
        env=facts.env_evidence(),
        cpu_mode=facts.options.cpu_mode,
        duration_s=time.perf_counter() - started,
        only=only,
    )
