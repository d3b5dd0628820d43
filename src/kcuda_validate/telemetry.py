"""GPU telemetry sampled during inference, from the parent process.

The sampler runs in the parent while the worker child generates, so it costs
the measured process nothing but the driver's own work; it reads NVML at most
10 times a second. Energy comes from the driver's cumulative energy counter
(mJ), not from integrating power samples, and is n/a where the GPU or WSL2
cannot report it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kcuda_validate.checks import Metric, mean_of
from kcuda_validate.gpu.nvml import CLOCKS_EVENT_REASONS, Nvml, Sample

log = logging.getLogger(__name__)

MAX_HZ = 10.0


@dataclass(frozen=True)
class TelemetrySummary:
    samples: int
    duration_s: float
    interval_s: float
    util_mean: float | None = None
    util_max: float | None = None
    vram_peak_bytes: int | None = None
    power_mean_w: float | None = None
    power_max_w: float | None = None
    temp_max_c: float | None = None
    sm_clock_mean_mhz: float | None = None
    energy_j: float | None = None
    mem_clock_mean_mhz: float | None = None
    # Share of the samples that answered in which each clocks-event reason was set, by name (None: n/a).
    clocks_event_share: tuple[tuple[str, float], ...] | None = None
    pstate_share_above_p2: float | None = None  # share of samples in a P-state slower than P2
    pstate_best: int | None = None  # the fastest P-state seen (0 is fastest)
    pcie_gen_best: int | None = None  # the highest link generation seen under load
    pcie_width_best: int | None = None
    raw: tuple[Sample, ...] = field(default=(), repr=False)

    def metrics(self, generated_tokens: int | None) -> list[Metric]:
        how = (
            f"NVML sampled at {1 / self.interval_s:.0f} Hz during inference ({self.samples} samples);"
            " whole GPU, every process on it"
        )
        out = [
            Metric("gpu_util_mean", self.util_mean, "%", how),
            Metric("gpu_util_max", self.util_max, "%", how),
            Metric("vram_peak", self.vram_peak_bytes, "bytes", how),
            Metric("power_mean", self.power_mean_w, "W", how),
            Metric("power_max", self.power_max_w, "W", how),
            Metric("temperature_max", self.temp_max_c, "°C", how),
            Metric("sm_clock_mean", self.sm_clock_mean_mhz, "MHz", how),
            Metric(
                "energy",
                self.energy_j,
                "J",
                "NVML total energy counter, difference across inference; whole GPU, every process on it",
            ),
        ]
        jpt = self.energy_j / generated_tokens if self.energy_j is not None and generated_tokens else None
        out.append(
            Metric(
                "energy_per_token",
                jpt,
                "J/token",
                "energy across the inference window (warm-up and measured runs, their prompt processing included)"
                " / tokens generated in it",
            )
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "duration_s": self.duration_s,
            "interval_s": self.interval_s,
            "util_mean_percent": self.util_mean,
            "util_max_percent": self.util_max,
            "vram_peak_bytes": self.vram_peak_bytes,
            "power_mean_w": self.power_mean_w,
            "power_max_w": self.power_max_w,
            "temperature_max_c": self.temp_max_c,
            "sm_clock_mean_mhz": self.sm_clock_mean_mhz,
            "energy_j": self.energy_j,
            "mem_clock_mean_mhz": self.mem_clock_mean_mhz,
            "clocks_event_share": None if self.clocks_event_share is None else dict(self.clocks_event_share),
            "pstate_share_above_p2": self.pstate_share_above_p2,
            "pstate_best": self.pstate_best,
            "pcie_gen_best": self.pcie_gen_best,
            "pcie_width_best": self.pcie_width_best,
        }


def _max(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _min(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _reason_share(samples: list[Sample]) -> tuple[tuple[str, float], ...] | None:
    answered = [s.clocks_event_reasons for s in samples if s.clocks_event_reasons is not None]
    if not answered:
        return None
    return tuple(
        (name, sum(1 for bits in answered if bits & bit) / len(answered))
        for bit, name in CLOCKS_EVENT_REASONS.items()
        if any(bits & bit for bits in answered)
    )


def _pstate_share(samples: list[Sample]) -> float | None:
    states = [s.pstate for s in samples if s.pstate is not None]
    return sum(1 for p in states if p > 2) / len(states) if states else None


def summarize(samples: list[Sample], interval_s: float) -> TelemetrySummary:
    if not samples:
        return TelemetrySummary(0, 0.0, interval_s)
    energies = [s.energy_mj for s in samples if s.energy_mj is not None]
    energy = (energies[-1] - energies[0]) / 1000 if len(energies) >= 2 and energies[-1] >= energies[0] else None
    return TelemetrySummary(
        samples=len(samples),
        duration_s=samples[-1].t - samples[0].t,
        interval_s=interval_s,
        util_mean=mean_of([s.utilization_gpu for s in samples]),
        util_max=_max([s.utilization_gpu for s in samples]),
        vram_peak_bytes=_max([s.memory_used for s in samples]),
        power_mean_w=mean_of([s.power_w for s in samples]),
        power_max_w=_max([s.power_w for s in samples]),
        temp_max_c=_max([s.temperature_c for s in samples]),
        sm_clock_mean_mhz=mean_of([s.sm_clock_mhz for s in samples]),
        energy_j=energy,
        mem_clock_mean_mhz=mean_of([s.mem_clock_mhz for s in samples]),
        clocks_event_share=_reason_share(samples),
        pstate_share_above_p2=_pstate_share(samples),
        pstate_best=_min([s.pstate for s in samples]),
        pcie_gen_best=_max([s.pcie_gen for s in samples]),
        pcie_width_best=_max([s.pcie_width for s in samples]),
        raw=tuple(samples),
    )


class TelemetrySampler:
    """Background NVML sampling for one GPU; `stop()` returns the summary."""

    def __init__(self, nvml: Nvml, index: int, hz: float = MAX_HZ) -> None:
        self.nvml = nvml
        self.index = index
        self.interval = 1.0 / min(hz, MAX_HZ)
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kcuda-telemetry", daemon=True)

    def _loop(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            try:
                self._samples.append(self.nvml.sample(self.index, time.perf_counter()))
            except Exception:
                log.debug("telemetry sample failed", exc_info=True)
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.perf_counter()))

    def start(self) -> TelemetrySampler:
        self._thread.start()
        return self

    def stop(self) -> TelemetrySummary:
        self._stop.set()
        self._thread.join(timeout=2)
        # One final reading so the energy counter spans the whole window.
        try:
            self._samples.append(self.nvml.sample(self.index, time.perf_counter()))
        except Exception:
            log.debug("final telemetry sample failed", exc_info=True)
        return summarize(self._samples, self.interval)
