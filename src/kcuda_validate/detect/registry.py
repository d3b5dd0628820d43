"""The one ordered list of detect's checks, and the runner.

Like `brew doctor`: each entry is a stable ID, a title, tags, the facts it reads, and a function of those
facts. `detect` runs all of them in order; `--check ID` runs a few; a node health check is a named subset.
Only the facts the chosen checks read are gathered (see detect.facts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import kcuda_validate.detect.idle as idle
import kcuda_validate.detect.software as software
import kcuda_validate.detect.stack as stack
from kcuda_validate.checks import Check, Status
from kcuda_validate.detect.facts import DetectOptions, DetectReport, Facts, build_report, detect_check
from kcuda_validate.errors import UsageError
from kcuda_validate.llm.build import invocation

# Tags. fast: no child process, no network and no library heavier than NVML or libcuda (well under a second);
# no-torch: never starts PyTorch; no-model: needs no model file; node-health: part of NODE_HEALTH.
FAST, NO_TORCH, NO_MODEL, NODE = "fast", "no-torch", "no-model", "node-health"


@dataclass(frozen=True)
class DetectCheck:
    """One registry entry. The checks it returns have `id` itself or `id.N` (one per GPU)."""

    id: str
    title: str
    run: Callable[[Facts], tuple[Check, ...]]
    reads: tuple[str, ...]  # the facts it gathers: platform, nvml, cuda, torch, llama, env, hub
    tags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "tags": list(self.tags), "reads": list(self.reads)}


def _entry(id: str, title: str, run: Callable[[Facts], tuple[Check, ...]], reads: str, *tags: str) -> DetectCheck:
    slow = {"torch", "llama", "hub"} & set(reads.split())
    base = (NO_MODEL,) + (() if "torch" in reads.split() else (NO_TORCH,)) + (() if slow else (FAST,))
    return DetectCheck(id, title, run, tuple(reads.split()), tuple(sorted(set(base + tags))))


CHECKS: tuple[DetectCheck, ...] = (
    _entry("platform.os", "Operating system", stack.check_os, "platform", NODE),
    _entry("platform.wsl_libs", "WSL2 GPU libraries", stack.check_wsl_libs, "platform", NODE),
    _entry("platform.wsl_linux_driver", "Linux driver inside WSL2", stack.check_wsl_linux_driver, "platform", NODE),
    _entry("platform.model_dir", "Model directory on a Windows drive (WSL2)", stack.check_model_dir, "platform"),
    _entry("driver.nvml", "NVIDIA driver (NVML)", stack.check_driver, "platform nvml", NODE),
    _entry("gpu", "Each GPU (lost, unopenable, MIG, retired pages, PCIe width)", stack.check_gpus, "nvml env", NODE),
    _entry(
        "perf.idle",
        "Idle health of each GPU (power limit, clocks held back, row remapping)",
        idle.check_idle_health,
        "nvml env",
        NODE,
    ),
    _entry("cuda.driver_api", "CUDA driver API (cuInit)", stack.check_cuda_driver_api, "platform nvml cuda", NODE),
    _entry("torch.cuda", "PyTorch CUDA", software.check_torch, "nvml env torch"),
    _entry("torch.kernel", "PyTorch kernel on each GPU", software.check_torch_kernels, "nvml env torch"),
    _entry(
        "torch.bandwidth",
        "Memory and host-link bandwidth of each GPU (timed copies)",
        software.check_torch_bandwidth,
        "nvml env torch",
    ),
    _entry("llama.build", "llama-cpp-python GPU offload", software.check_llama_build, "nvml env llama", NODE),
    _entry("llama.archs", "CUDA archs for each GPU", software.check_llama_archs, "nvml env llama", NODE),
    _entry("min", "Minimums for each GPU (--min-vram-gb, --min-compute)", stack.check_minimums, "nvml env"),
    _entry("env.cuda_visible_devices", "CUDA_VISIBLE_DEVICES", software.check_cuda_visible_devices, "nvml env"),
    _entry("env.hub", "Hugging Face Hub access", software.check_hub_access, "env hub"),
)
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)

# What a node health probe (node-problem-detector, a Slurm HealthCheckProgram) runs: the driver, the GPUs,
# the CUDA driver API and the engine build. No PyTorch, no model, nothing about the user's Hub settings.
NODE_HEALTH: tuple[str, ...] = tuple(c.id for c in CHECKS if NODE in c.tags)


def select(only: Sequence[str] | None) -> tuple[DetectCheck, ...]:
    """The registry entries to run, in registry order; an unknown ID is a usage error naming it."""
    if only is None:
        return CHECKS
    unknown = [i for i in only if i not in CHECK_IDS]
    if unknown:
        raise UsageError(
            f"--check {unknown[0]}: no such check",
            fix="Use one of: " + ", ".join(CHECK_IDS) + f" (see `{invocation()} detect --list-checks`).",
        )
    wanted = set(only)
    return tuple(c for c in CHECKS if c.id in wanted)


def run_detect(
    options: DetectOptions,
    only: Sequence[str] | None = None,
    environ: dict[str, str] | None = None,
    *,
    answer_each: bool = False,
) -> DetectReport:
    """Run every check (or the registry IDs in `only`) and build the report from the facts they read.

    `answer_each` (`detect --check`): a check asked for by name that has nothing to judge still answers, with
    why (see `unanswered`), instead of leaving an empty table that reads as a pass."""
    entries = select(only)
    started = time.perf_counter()
    facts = Facts(options, environ)
    try:
        if any("llama" in e.reads for e in entries):
            facts.start_llama_probe()  # a child process: loads libllama while the other facts are read
        if any("hub" in e.reads for e in entries):
            facts.start_hub_probe()  # a thread: the Hub's answer, or its silence, overlaps the rest
        asked = {e.id for e in entries}
        checks = tuple(
            c
            for entry in entries
            for c in (entry.run(facts) or (unanswered(entry, facts, asked) if answer_each else ()))
        )
    finally:
        facts.close()
    return build_report(facts, checks, started, None if only is None else tuple(e.id for e in entries))


def unanswered(entry: DetectCheck, facts: Facts, asked: set[str]) -> tuple[Check, ...]:
    """The answer of a check that found nothing to judge: about GPUs with none to look at, the driver's own
    failure (unless driver.nvml was asked for too and says it); otherwise a skip that says so."""
    if "nvml" in entry.reads and not facts.nvml.gpus:
        (driver,) = stack.check_driver(facts)
        if "driver.nvml" in asked:
            summary = "no GPU to check (see NVIDIA driver (NVML))"
            return (detect_check(entry.id, entry.title, Status.SKIP, summary),)
        summary, code = f"no GPU to check: {driver.summary}", driver.exit_code
        return (detect_check(entry.id, entry.title, driver.status, summary, driver.fix, code, **driver.evidence),)
    why = NOTHING_TO_JUDGE.get(entry.id, "nothing to judge on this machine")
    return (detect_check(entry.id, entry.title, Status.SKIP, why),)


# Why a check that needs no GPU can still have nothing to say.
NOTHING_TO_JUDGE = {
    "env.cuda_visible_devices": "CUDA_VISIBLE_DEVICES is not set: CUDA sees every GPU",
    "platform.wsl_libs": "not WSL2: no WSL GPU libraries to check",
    "platform.wsl_linux_driver": "not WSL2: no Linux driver to look for inside it",
    "platform.model_dir": "not WSL2, or the model directory is not on a Windows drive",
}
