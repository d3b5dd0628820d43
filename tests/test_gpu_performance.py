"""The GPU-performance judge on scenario sample series read through the real NVML wrapper over the fakes.

Each series is what the sampler would read, one FakeGpu state per sample; the judge is called directly with the
real summary and GpuInfo. The healthy GPU under load must pass with no warning: a false positive is a defect.
No figure here is a measured GPU figure.
"""

from __future__ import annotations

import dataclasses

from fakes.hardware import RTX_3060_LAPTOP, RTX_4090, FakeGpu, FakePynvml
from kcuda_validate.checks import Check, Status
from kcuda_validate.gpu.nvml import GpuInfo, Nvml
from kcuda_validate.gpu_performance import judge_gpu_performance
from kcuda_validate.telemetry import TelemetrySummary, summarize

# An RTX 4090 decoding: P2, boost clock, memory at its maximum, gen 4 x16, SW power cap now and then.
LOADED = dataclasses.replace(
    RTX_4090, sm_clock_mhz=2520, pstate=2, utilization_gpu=97, temperature_c=64, pcie_gen=(4, 4), power_mw=310_000
)


def sampled(states: list[FakeGpu]) -> tuple[TelemetrySummary, GpuInfo]:
    """The sampler's summary of these states, and the GpuInfo detect read (from the first state)."""
    samples = []
    for i, state in enumerate(states):
        lib = FakePynvml((state,))
        with Nvml.open(lib) as nvml:  # type: ignore[arg-type]
            samples.append(nvml.sample(0, t=i * 0.1))
    with Nvml.open(FakePynvml((states[0],))) as nvml:  # type: ignore[arg-type]
        gpu = nvml.gpu(0)
    return summarize(samples, 0.1), gpu


def judge(states: list[FakeGpu]) -> Check:
    return judge_gpu_performance(*sampled(states))


def series(n: int, base: FakeGpu, held: FakeGpu) -> list[FakeGpu]:
    """100 samples, the first n of them in the `held` state."""
    return [held] * n + [base] * (100 - n)


def test_healthy_gpu_under_load_passes_without_warning() -> None:
    capped_now_and_then = dataclasses.replace(LOADED, clocks_event_reasons=0x4)
    check = judge(series(30, LOADED, capped_now_and_then))  # SW power cap at the default limit is boost, not a fault
    assert (check.status, check.summary, check.fix) == (Status.PASS, "no slowdown, SM 2520 of 3120 MHz", None)


def test_thermal_slowdown_names_its_share_and_temperatures() -> None:
    hot = dataclasses.replace(LOADED, clocks_event_reasons=0x40, temperature_c=89)
    check = judge(series(63, LOADED, hot))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "clocks held back by HW thermal slowdown for 63 % of inference (89 °C, slowdown at 87 °C)",
        "Improve cooling (clean the fans and heatsink, check the airflow and the fan curve).",
    )


def test_power_capped_gpu_gets_the_nvidia_smi_fix() -> None:
    capped = dataclasses.replace(LOADED, power_limit_mw=200_000, power_default_mw=450_000)
    check = judge(series(80, capped, dataclasses.replace(capped, clocks_event_reasons=0x4)))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "power limit 200 W, default 450 W, SW power cap for 80 % of inference",
        "`sudo nvidia-smi -i 0 -pl 450`.",
    )


def test_degraded_pcie_under_load() -> None:
    narrow = dataclasses.replace(LOADED, pcie_gen=(3, 4), pcie_width=(4, 16))
    check = judge(series(0, narrow, narrow))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "PCIe gen 3 x4 under load, card and slot allow gen 4 x16",
        "The link trained below what card and slot allow: reseat the card (no riser), check its power cables and "
        "the BIOS PCIe link-speed setting.",
    )


def test_stuck_memory_clock() -> None:
    stuck = dataclasses.replace(LOADED, mem_clock_mhz=405)
    check = judge(series(0, stuck, stuck))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "memory clock 405 MHz of 10501 MHz max",
        "Reset the clocks (`sudo nvidia-smi -i 0 -rmc` and `-rac`); check `nvidia-smi -q -d CLOCK`.",
    )


def test_clocks_stuck_in_a_low_pstate() -> None:
    low = dataclasses.replace(LOADED, pstate=8)
    check = judge(series(70, LOADED, low))
    assert (check.status, check.summary) == (Status.WARN, "slower than P2 for 70 % of inference (best P2)")
    assert check.fix == (
        "Check `nvidia-smi -q -d PERFORMANCE` for what holds the clocks; reset locked clocks "
        "(`sudo nvidia-smi -i 0 -rgc` and `-rmc`); for persistence mode use "
        "`sudo systemctl enable --now nvidia-persistenced`."
    )


def test_wsl2_says_which_figures_are_na() -> None:
    loaded = dataclasses.replace(RTX_3060_LAPTOP, sm_clock_mhz=1700)
    check = judge(series(0, loaded, loaded))
    assert (check.status, check.summary, check.fix) == (
        Status.PASS,
        f"no slowdown, SM 1700 of {RTX_3060_LAPTOP.max_sm_clock_mhz} MHz"
        " (clocks-event reasons, power limit vs default, P-state, PCIe link: n/a)",
        None,
    )


def test_nothing_sampled_is_a_skip() -> None:
    with Nvml.open(FakePynvml((LOADED,))) as nvml:  # type: ignore[arg-type]
        gpu = nvml.gpu(0)
    check = judge_gpu_performance(summarize([], 0.1), gpu)
    assert (check.status, check.summary) == (Status.SKIP, "no telemetry sampled during inference")
