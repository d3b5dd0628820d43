"""The result vocabulary every stage speaks: checks with evidence, and measured metrics.

A check is the unit the user, the JSON report and the JUnit file all see; a
metric is a number we measured, with its unit and how we obtained it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kcuda_validate.errors import ExitCode, worst


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One verdict with the evidence behind it and, when it failed, the fix."""

    id: str
    stage: str
    title: str
    status: Status
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix: str | None = None
    exit_code: ExitCode = ExitCode.OK
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.status == Status.FAIL and self.exit_code == ExitCode.OK:
            object.__setattr__(self, "exit_code", ExitCode.CHECK_FAILED)
        if self.status != Status.FAIL:
            object.__setattr__(self, "exit_code", ExitCode.OK)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage,
            "title": self.title,
            "status": self.status.value,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "fix": self.fix,
            "exit_code": int(self.exit_code),
            "duration_s": self.duration_s,
        }


def passed(id: str, stage: str, title: str, summary: str, **evidence: Any) -> Check:
    return Check(id, stage, title, Status.PASS, summary, evidence)


def warned(id: str, stage: str, title: str, summary: str, fix: str | None = None, **evidence: Any) -> Check:
    return Check(id, stage, title, Status.WARN, summary, evidence, fix)


def skipped(id: str, stage: str, title: str, summary: str, **evidence: Any) -> Check:
    return Check(id, stage, title, Status.SKIP, summary, evidence)


def failed(
    id: str,
    stage: str,
    title: str,
    summary: str,
    fix: str | None,
    exit_code: ExitCode = ExitCode.CHECK_FAILED,
    **evidence: Any,
) -> Check:
    return Check(id, stage, title, Status.FAIL, summary, evidence, fix, exit_code)


def verdict(checks: Iterable[Check]) -> ExitCode:
    """The run's exit code: OK unless a check failed, then the most specific failure."""
    return worst([c.exit_code for c in checks if c.status == Status.FAIL])


def mean_of(values: Iterable[float | int | None]) -> float | None:
    """Mean of the values that were measured; None when none were (never a made-up zero)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def bandwidth_text(bytes_s: float) -> str:
    """A bandwidth as every check and panel writes it, so the probe, the roofline and the judge read alike."""
    if bytes_s >= 1e12:
        return f"{bytes_s / 1e12:.2f} TB/s"
    return f"{bytes_s / 1e9:.0f} GB/s" if bytes_s >= 100e9 else f"{bytes_s / 1e9:.1f} GB/s"


class MetricName(StrEnum):
    """Every metric's name, in one place: the inferencer, the telemetry sampler, the judges, the renderer and
    the Prometheus exporter read and write figures under these (a StrEnum: equal to, and JSON as, the string)."""

    LOAD_TIME = "load_time"
    VRAM_LOAD_DELTA = "vram_load_delta"
    GPU_BUFFERS = "gpu_buffers"
    GEN_TPS = "gen_tps"
    GEN_TPS_WALL = "gen_tps_wall"
    DECODE_MS_PER_TOKEN = "decode_ms_per_token"
    DECODE_MS_PER_TOKEN_WALL = "decode_ms_per_token_wall"
    SAMPLE_MS_PER_TOKEN = "sample_ms_per_token"
    OTHER_MS_PER_TOKEN = "other_ms_per_token"
    GEN_TPS_WALL_CPU_SAMPLING = "gen_tps_wall_cpu_sampling"  # the runs sampled on the CPU, beside backend ones
    SAMPLE_MS_PER_TOKEN_CPU_SAMPLING = "sample_ms_per_token_cpu_sampling"
    PROMPT_TPS = "prompt_tps"
    PROMPT_TPS_WALL = "prompt_tps_wall"
    TTFT_WARM_MS = "ttft_warm_ms"
    TTFT_COLD_MS = "ttft_cold_ms"
    TOTAL_S = "total_s"
    PROMPT_TOKENS = "prompt_tokens"
    GENERATED_TOKENS = "generated_tokens"
    BYTES_PER_TOKEN = "bytes_per_token"
    BANDWIDTH_ACHIEVED = "bandwidth_achieved"
    BANDWIDTH_PEAK = "bandwidth_peak"
    BANDWIDTH_PCT_OF_PEAK = "bandwidth_pct_of_peak"
    BANDWIDTH_PROBED = "bandwidth_probed"
    BANDWIDTH_PCT_OF_PROBED = "bandwidth_pct_of_probed"
    CPU_GEN_TPS = "cpu_gen_tps"
    SPEEDUP_VS_CPU = "speedup_vs_cpu"
    # telemetry.py
    GPU_UTIL_MEAN = "gpu_util_mean"
    GPU_UTIL_MAX = "gpu_util_max"
    VRAM_PEAK = "vram_peak"
    POWER_MEAN = "power_mean"
    POWER_MAX = "power_max"
    TEMPERATURE_MAX = "temperature_max"
    SM_CLOCK_MEAN = "sm_clock_mean"
    ENERGY = "energy"
    ENERGY_PER_TOKEN = "energy_per_token"


@dataclass(frozen=True)
class Metric:
    """A measured number. `method` says how it was obtained; `estimate` flags derived figures."""

    name: str
    value: float | int | None
    unit: str
    method: str
    estimate: bool = False
    samples: tuple[float, ...] = ()
    stddev: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "unit": self.unit,
            "method": self.method,
            "estimate": self.estimate,
        }
        if self.samples:
            out["samples"] = list(self.samples)
        if self.stddev is not None:
            out["stddev"] = self.stddev
        return out
