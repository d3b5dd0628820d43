"""The GPU-performance judge on scenario sample series read through the real NVML wrapper over the fakes.

Each series is what the sampler would read, one FakeGpu state per sample; the judge is called directly with the
real summary and GpuInfo. The healthy GPU under load must pass with no warning: a false positive is a defect.
No figure here is a measured GPU figure.
"""

from __future__ import annotations

import dataclasses

import pytest

from fakes.hardware import RTX_3060_LAPTOP, RTX_4090, FakeGpu, FakePynvml
from kcuda_validate.checks import Check, Status
from kcuda_validate.gpu.nvml import GpuInfo, Nvml
from kcuda_validate.gpu_performance import FAR_BELOW, judge_decode_bandwidth, judge_gpu_performance
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


# A card whose limit was lowered from 450 W to 420 W, drawing 310 W under load.
LOWERED = dataclasses.replace(LOADED, power_limit_mw=420_000, power_default_mw=450_000)


def test_a_lowered_limit_the_power_cap_never_held_passes_without_warning() -> None:
    """Nothing slowed this run: the limit alone is no finding here (detect's idle health reports it)."""
    check = judge(series(0, LOWERED, LOWERED))
    assert (check.status, check.summary, check.fix) == (Status.PASS, "no slowdown, SM 2520 of 3120 MHz", None)


def test_a_lowered_limit_the_power_cap_held_for_less_than_the_minimum_share_passes() -> None:
    check = judge(series(9, LOWERED, dataclasses.replace(LOWERED, clocks_event_reasons=0x4)))
    assert (check.status, check.summary, check.fix) == (Status.PASS, "no slowdown, SM 2520 of 3120 MHz", None)


def test_a_lowered_limit_the_power_cap_held_for_the_minimum_share_warns() -> None:
    check = judge(series(10, LOWERED, dataclasses.replace(LOWERED, clocks_event_reasons=0x4)))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "power limit 420 W, default 450 W, SW power cap for 10 % of inference",
        "`sudo nvidia-smi -i 0 -pl 450`.",
    )


def test_a_lowered_limit_where_the_driver_gives_no_clocks_event_reasons_is_named_na_not_warned() -> None:
    blind = dataclasses.replace(LOWERED, unsupported=frozenset({"nvmlDeviceGetCurrentClocksEventReasons"}))
    check = judge(series(0, blind, blind))
    assert (check.status, check.summary, check.fix) == (
        Status.PASS,
        "no slowdown, SM 2520 of 3120 MHz"
        " (clocks-event reasons, SW power cap at the lowered 420 W limit (default 450 W): n/a)",
        None,
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


# -- decode vs the probed memory bandwidth ------------------------------------------------------------------------
# An 8B Q4_K_M on an RTX 4090: 4.9 GB read per token, 920 GB/s reached by detect's copies (5.3 ms of reads).
PER_TOKEN, PROBED, MODEL = 4.9e9, 9.2e11, "/models/llama 8b.gguf"
LOOK = (
    "look for other work on the GPU (`nvidia-smi`) and a busy CPU (`top`), then compare with llama.cpp's own "
    "`llama-bench -m '/models/llama 8b.gguf' -ngl 99` on this machine (bench/build_llama_bench.sh builds it from the "
    "engine's sources)"
)


def bandwidth(gen_tps: float, performance: Check | None, probed: float | None = PROBED) -> Check:
    return judge_decode_bandwidth(PER_TOKEN, gen_tps * PER_TOKEN, probed, performance, MODEL)


def test_a_decode_memory_paces_passes_with_its_share_of_the_probed_bandwidth() -> None:
    check = bandwidth(130.0, judge(series(30, LOADED, dataclasses.replace(LOADED, clocks_event_reasons=0x4))))
    assert (check.status, check.summary, check.fix) == (
        Status.PASS,
        "decode read 637 GB/s, 69 % of the 920 GB/s a copy reached",
        None,
    )
    assert check.evidence["reads_ms_per_token"] == pytest.approx(5.326, abs=1e-3)


def test_the_share_just_at_the_mark_passes_and_just_under_it_warns() -> None:
    at = FAR_BELOW * PROBED / PER_TOKEN
    assert bandwidth(at, judge([LOADED] * 20)).status is Status.PASS
    assert bandwidth(at * 0.99, judge([LOADED] * 20)).status is Status.WARN


def test_far_below_the_probed_bandwidth_names_the_cause_found_under_load() -> None:
    hot = dataclasses.replace(LOADED, clocks_event_reasons=0x40, temperature_c=89)
    check = bandwidth(18.0, judge(series(63, LOADED, hot)))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "decode read 88.2 GB/s, 10 % of the 920 GB/s a copy reached, far below what memory allows on this model "
        "(5.3 ms of reads per token); under load: clocks held back by HW thermal slowdown for 63 % of inference "
        "(89 °C, slowdown at 87 °C)",
        "Fix what GPU performance under load found first (see its fix); then " + LOOK + ".",
    )


def test_far_below_with_no_slowdown_under_load_says_where_to_look() -> None:
    check = bandwidth(18.0, judge([LOADED] * 20))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "decode read 88.2 GB/s, 10 % of the 920 GB/s a copy reached, far below what memory allows on this model "
        "(5.3 ms of reads per token); no slowdown under load",
        "No slowdown showed in clocks, power, P-state or PCIe: " + LOOK + ".",
    )


def test_far_below_where_the_driver_reports_nothing_under_load_says_so() -> None:
    with Nvml.open(FakePynvml((LOADED,))) as nvml:  # type: ignore[arg-type]
        gpu = nvml.gpu(0)
    nothing = judge_gpu_performance(summarize([], 0.1), gpu)
    check = bandwidth(18.0, nothing)
    assert check.status is Status.WARN
    assert check.summary.endswith("; under load: no telemetry sampled during inference")
    assert check.fix == LOOK[0].upper() + LOOK[1:] + "."
    unsampled = bandwidth(18.0, None)  # --no-telemetry
    assert unsampled.summary.endswith("; nothing was sampled under load to say why")
    assert unsampled.fix == "Rerun with telemetry to see why; " + LOOK + "."


def test_a_model_too_small_for_memory_to_set_the_pace_is_not_judged() -> None:
    """Gemma-3-270M on the H100 read 7 % of peak (docs/benchmarks.md §6) on a healthy GPU: launches, not memory,
    set its pace. Judging it would be a false positive."""
    check = judge_decode_bandwidth(2.66e8, 2.66e8 * 895.5, 3.0e12, judge([LOADED] * 20))
    assert (check.status, check.summary) == (
        Status.SKIP,
        "not judged: 0.27 GB of reads per token take 0.09 ms at the 3.00 TB/s a copy reached; under 2 ms, kernel "
        "launches and the CPU set the pace, not memory",
    )


def test_without_a_probe_there_is_nothing_to_judge_against() -> None:
    check = bandwidth(18.0, judge([LOADED] * 20), probed=None)
    assert (check.status, check.summary) == (
        Status.SKIP,
        "no probed bandwidth to compare with (validate-all probes it, unless --skip-torch)",
    )


def test_a_partial_offload_is_not_set_against_the_gpus_bandwidth() -> None:
    """The real offload judge on llama.cpp's log of a 10-of-25-layer load (tests/data/llama_logs): host memory
    shares the pace, so a slow decode there says nothing of the GPU. A full offload is judged."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "llm"))
    from test_llamalog import FULL, PARTIAL, RTX4090, read_log

    from kcuda_validate.llm.llamalog import parse_load_log
    from kcuda_validate.llm.loader import LoadOptions, judge_offload

    def offload(log: str, options: LoadOptions) -> Check:
        ev = parse_load_log(read_log(log))
        return judge_offload(ev, options, 24, None, gpu_name=RTX4090).check(ev, cpu_mode=False)

    partial = offload(PARTIAL, LoadOptions(gpu_layers=10))
    check = judge_decode_bandwidth(PER_TOKEN, 18.0 * PER_TOKEN, PROBED, judge([LOADED] * 20), MODEL, partial)
    assert (check.status, check.summary) == (
        Status.SKIP,
        f"not judged: the offload is not full (GPU offload: {partial.summary})",
    )
    full = offload(FULL, LoadOptions())
    assert full.status is Status.PASS
    assert (
        judge_decode_bandwidth(PER_TOKEN, 18.0 * PER_TOKEN, PROBED, judge([LOADED] * 20), MODEL, full).status
        is Status.WARN
    )


def test_a_mixture_of_experts_is_not_set_against_a_dense_models_mark() -> None:
    """A MoE reads its routed experts as scattered slices, so the same bytes take longer than a dense model's; the
    15 % mark was set from dense models. With the roofline now counting only the experts a token uses, a healthy
    MoE could sit under it, and a warning on a healthy machine is a defect: it is not judged, saying so."""
    check = judge_decode_bandwidth(PER_TOKEN, 18.0 * PER_TOKEN, PROBED, judge([LOADED] * 20), MODEL, None, (8, 128))
    assert (check.status, check.summary, check.fix) == (
        Status.SKIP,
        "not judged: a mixture of experts (8 of 128 experts per token) reads scattered expert slices, so its decode "
        "is not paced like a dense model's (10 % of the 920 GB/s a copy reached)",
        None,
    )
    assert check.evidence["share_of_probed"] == pytest.approx(18.0 * PER_TOKEN / PROBED)
