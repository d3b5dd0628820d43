"""The GPU-performance judge: why a GPU ran slower than it can, from the telemetry sampled during inference.

A pure function of the sampler's summary and what NVML said of the GPU (no I/O). It passes, or warns with the
cause, the share of the sampled inference it held for, and the fix. A figure the driver cannot give is n/a in
the summary, never dropped. SW power cap at the default limit is how a GPU boosts, not a fault, and a lowered
limit is a cause only where the SW power cap held the clocks for MIN_SHARE of the samples; an idle PCIe link
downshifts on its own, so the link is judged on the best generation and width seen under load.

`judge_decode_bandwidth` sets the decode's achieved bandwidth against what detect's timed copies reached, on a
model large enough for memory to set the pace, and names the causes the judge above found.
"""

from __future__ import annotations

import shlex
from typing import Any

from kcuda_validate.checks import Check, Status, bandwidth_text
from kcuda_validate.gpu.nvml import GpuInfo
from kcuda_validate.telemetry import TelemetrySummary

CHECK_ID, STAGE, TITLE = "gpu.performance", "infer", "GPU performance under load"
MIN_SHARE = 0.10  # a slowdown reason must hold for at least this share of the samples to count
MEM_CLOCK_LOW = 0.85  # memory clock below this share of its maximum is stuck low (GeForce P2 sits ~2-5 % below)
PSTATE_SHARE = 0.5  # half the samples in a P-state slower than P2: clocks stuck low
_TOLERANCE_W = 1.0

FIX_THERMAL = "improve cooling (clean the fans and heatsink, check the airflow and the fan curve)"
FIX_HW_SLOWDOWN = "check the board's power cables and the power supply; `nvidia-smi -q -d PERFORMANCE` shows the cause"
FIX_POWER = "`sudo nvidia-smi -i {index} -pl {default:.0f}`"
FIX_MEM_CLOCK = "reset the clocks (`sudo nvidia-smi -i {index} -rmc` and `-rac`); check `nvidia-smi -q -d CLOCK`"
FIX_PSTATE = (
    "check `nvidia-smi -q -d PERFORMANCE` for what holds the clocks; reset locked clocks "
    "(`sudo nvidia-smi -i {index} -rgc` and `-rmc`); for persistence mode use "
    "`sudo systemctl enable --now nvidia-persistenced`"
)
# NVML's maximum link is what card and slot together allow: below it, the link trained low.
FIX_LINK = (
    "the link trained below what card and slot allow: reseat the card (no riser), check its power cables and the "
    "BIOS PCIe link-speed setting"
)


BW_CHECK_ID, BW_TITLE = "infer.bandwidth", "Decode vs memory bandwidth"
# Memory sets the decode's pace only once the reads per token take this long at the probed bandwidth; below it,
# kernel launches and the CPU do. On the H100 (docs/benchmarks.md) a token cost ~0.8 ms plus its reads at
# ~1.6 TB/s, so a healthy decode of a model past this mark reads >= 40 % of a ~2.9 TB/s copy.
BOUND_MS = 2.0
FAR_BELOW = 0.15  # under this share of the probed bandwidth on such a model, something holds the decode back
FIX_LOOK = (
    "look for other work on the GPU (`nvidia-smi`) and a busy CPU (`top`), then compare with llama.cpp's own "
    "`llama-bench -m {model} -ngl 99` on this machine (bench/build_llama_bench.sh builds it from the engine's sources)"
)


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _temps(summary: TelemetrySummary, gpu: GpuInfo) -> str:
    temp = f"{summary.temp_max_c:.0f} °C" if summary.temp_max_c is not None else "temperature n/a"
    slow = f"slowdown at {gpu.temp_slowdown_c} °C" if gpu.temp_slowdown_c is not None else "slowdown threshold n/a"
    return f"{temp}, {slow}"


def _findings(summary: TelemetrySummary, gpu: GpuInfo) -> tuple[list[tuple[str, str]], list[str]]:
    """(problems as (what, fix), the n/a figures)."""
    problems: list[tuple[str, str]] = []
    na: list[str] = []
    shares = dict(summary.clocks_event_share) if summary.clocks_event_share is not None else None
    if shares is None:
        na.append("clocks-event reasons")
    else:
        for names, fix in (
            (("HW thermal slowdown", "SW thermal slowdown"), FIX_THERMAL),
            (("HW slowdown", "HW power brake slowdown"), FIX_HW_SLOWDOWN),
        ):
            held = [(n, shares[n]) for n in names if shares.get(n, 0.0) >= MIN_SHARE]
            if held:
                name, share = max(held, key=lambda x: x[1])
                extra = f" ({_temps(summary, gpu)})" if fix is FIX_THERMAL else ""
                problems.append((f"clocks held back by {name} for {_pct(share)} of inference{extra}", fix))
    # A lowered limit slows a run only where the SW power cap held the clocks under load (detect's idle health
    # reports the limit on its own); where the driver cannot say whether it held, the limit alone is not a finding.
    limit, default = gpu.power_limit_w, gpu.power_limit_default_w
    if limit is None or default is None:
        na.append("power limit vs default")
    elif limit < default - _TOLERANCE_W:
        if shares is None:
            na.append(f"SW power cap at the lowered {limit:.0f} W limit (default {default:.0f} W)")
        elif (cap := shares.get("SW power cap", 0.0)) >= MIN_SHARE:
            problems.append(
                (
                    f"power limit {limit:.0f} W, default {default:.0f} W, SW power cap for {_pct(cap)} of inference",
                    FIX_POWER.format(index=gpu.index, default=default),
                )
            )
    if summary.mem_clock_mean_mhz is None or not gpu.max_memory_clock_mhz:
        na.append("memory clock")
    elif summary.mem_clock_mean_mhz < MEM_CLOCK_LOW * gpu.max_memory_clock_mhz:
        problems.append(
            (
                f"memory clock {summary.mem_clock_mean_mhz:.0f} MHz of {gpu.max_memory_clock_mhz} MHz max",
                FIX_MEM_CLOCK.format(index=gpu.index),
            )
        )
    if summary.pstate_share_above_p2 is None:
        na.append("P-state")
    elif summary.pstate_share_above_p2 >= PSTATE_SHARE:
        problems.append(
            (
                f"slower than P2 for {_pct(summary.pstate_share_above_p2)} of inference (best P{summary.pstate_best})",
                FIX_PSTATE.format(index=gpu.index),
            )
        )
    gen, width = summary.pcie_gen_best, summary.pcie_width_best
    if gen is None or width is None or gpu.pcie_gen_max is None or gpu.pcie_width_max is None:
        na.append("PCIe link")
    elif gen < gpu.pcie_gen_max or width < gpu.pcie_width_max:
        problems.append(
            (
                f"PCIe gen {gen} x{width} under load, card and slot allow gen {gpu.pcie_gen_max} x{gpu.pcie_width_max}",
                FIX_LINK,
            )
        )
    return problems, na


def judge_gpu_performance(summary: TelemetrySummary, gpu: GpuInfo) -> Check:
    """Pass, or warn with each cause found under load and its fix; SKIP when nothing was sampled."""
    evidence: dict[str, Any] = {
        "telemetry": summary.to_json(),
        "max_sm_clock_mhz": gpu.max_sm_clock_mhz,
        "max_memory_clock_mhz": gpu.max_memory_clock_mhz,
        "temperature_slowdown_c": gpu.temp_slowdown_c,
        "power_limit_w": gpu.power_limit_w,
        "power_limit_default_w": gpu.power_limit_default_w,
        "pcie_gen_max": gpu.pcie_gen_max,
        "pcie_width_max": gpu.pcie_width_max,
    }
    if summary.samples == 0:
        return Check(CHECK_ID, STAGE, TITLE, Status.SKIP, "no telemetry sampled during inference", evidence)
    problems, na = _findings(summary, gpu)
    tail = f" ({', '.join(na)}: n/a)" if na else ""
    if problems:
        what = "; ".join(w for w, _ in problems)
        fix = "; ".join(f for _, f in problems)
        return Check(CHECK_ID, STAGE, TITLE, Status.WARN, what + tail, evidence, fix[0].upper() + fix[1:] + ".")
    if len(na) == 5:
        return Check(
            CHECK_ID, STAGE, TITLE, Status.SKIP, "the driver reports no clocks, P-state or PCIe link: n/a", evidence
        )
    sm = (
        f"SM {summary.sm_clock_mean_mhz:.0f} of {gpu.max_sm_clock_mhz} MHz"
        if summary.sm_clock_mean_mhz and gpu.max_sm_clock_mhz
        else "SM clock n/a"
    )
    return Check(CHECK_ID, STAGE, TITLE, Status.PASS, f"no slowdown, {sm}{tail}", evidence)


def judge_decode_bandwidth(
    bytes_per_token: float | None,
    achieved: float | None,
    probed: float | None,
    performance: Check | None,
    model: str = "MODEL",
    offload: Check | None = None,
    experts: tuple[int, int] | None = None,
) -> Check:
    """Pass, or warn when a decode that memory should pace reads far less than a copy reached, with the causes
    found under load (`performance`: the gpu.performance check, None when nothing was sampled) and their fixes.
    `bytes_per_token` and `achieved` are the roofline's (verdicts.roofline_metrics). SKIP, saying why, when there
    is no probe to compare with or the model is too small for memory to set the pace, or when `offload` (the
    load.offload check) left part of the model on the CPU: host memory then shares the pace, or when the model is a
    mixture of experts (`experts`: used, count): it reads scattered expert slices, and FAR_BELOW is a dense
    model's mark that nothing has calibrated for a MoE. `model` is the path the llama-bench comparison names."""
    evidence: dict[str, Any] = {
        "bytes_per_token": bytes_per_token,
        "bandwidth_achieved": achieved,
        "bandwidth_probed": probed,
        "bound_ms": BOUND_MS,
        "far_below_share": FAR_BELOW,
    }

    def skip(summary: str) -> Check:
        return Check(BW_CHECK_ID, STAGE, BW_TITLE, Status.SKIP, summary, evidence)

    if not probed:
        return skip("no probed bandwidth to compare with (validate-all probes it, unless --skip-torch)")
    if offload is not None:
        layers = offload.evidence
        if offload.status is not Status.PASS or (layers.get("layers_on_gpu") or 0) < (layers.get("layers_total") or 0):
            return skip(f"not judged: the offload is not full ({offload.title}: {offload.summary})")
    if not bytes_per_token or not achieved:
        return skip("no decode speed to compare")
    reads_ms = bytes_per_token / probed * 1e3
    share = achieved / probed
    evidence |= {"reads_ms_per_token": reads_ms, "share_of_probed": share}
    copy = f"the {bandwidth_text(probed)} a copy reached"
    if experts:
        return skip(
            f"not judged: a mixture of experts ({experts[0]} of {experts[1]} experts per token) reads scattered "
            f"expert slices, so its decode is not paced like a dense model's ({_pct(share)} of {copy})"
        )
    if reads_ms < BOUND_MS:
        return skip(
            f"not judged: {bytes_per_token / 1e9:.2f} GB of reads per token take {reads_ms:.2f} ms at {copy}; "
            f"under {BOUND_MS:.0f} ms, kernel launches and the CPU set the pace, not memory"
        )
    what = f"decode read {bandwidth_text(achieved)}, {_pct(share)} of {copy}"
    if share >= FAR_BELOW:
        return Check(BW_CHECK_ID, STAGE, BW_TITLE, Status.PASS, what, evidence)
    what += f", far below what memory allows on this model ({reads_ms:.1f} ms of reads per token)"
    look = FIX_LOOK.format(model=shlex.quote(model))
    if performance is None:
        what, fix = what + "; nothing was sampled under load to say why", f"Rerun with telemetry to see why; {look}."
    elif performance.status is Status.WARN:
        what = f"{what}; under load: {performance.summary}"
        fix = f"Fix what {TITLE} found first (see its fix); then {look}."
    elif performance.status is Status.SKIP:
        what, fix = f"{what}; under load: {performance.summary}", look[0].upper() + look[1:] + "."
    else:
        what += "; no slowdown under load"
        fix = "No slowdown showed in clocks, power, P-state or PCIe: " + look + "."
    return Check(BW_CHECK_ID, STAGE, BW_TITLE, Status.WARN, what, evidence, fix)
