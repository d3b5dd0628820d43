"""The inference panel, and the whole `infer` output per GPU-performance scenario, compared with golden files.

The figures are typed in (GPU runs cannot happen here): the H100 ones are those measured in
docs/benchmarks.md §6, the WSL2 ones show what a driver that reports no telemetry looks like. The verdicts of
the scenario runs are not typed in: the real offload judge reads a llama.cpp log (recorded, or with one line
changed as llama.cpp would print it) and the real performance judge reads NVML sample series. What is
tested is the rendering: units, spreads, n/a for every missing figure, labels. Regenerate after an
intended change with KCUDA_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from rich.console import Console

from goldens import GOLDEN, assert_golden
from kcuda_validate.checks import Check, Metric, Status, passed, skipped
from kcuda_validate.gpu_performance import judge_decode_bandwidth
from kcuda_validate.llm.llamalog import LogLine, parse_load_log
from kcuda_validate.llm.loader import LoadOptions, judge_offload
from kcuda_validate.render import inference_panel, render_report
from kcuda_validate.report import Report
from test_gpu_performance import LOADED, judge, series

sys.path.insert(0, str(Path(__file__).parent / "llm"))
from test_llamalog import FULL, RTX4090, read_log

MIB = 1024**2


def _base(device_mode: str, offload: str, status: Status = Status.PASS) -> Report:
    report = Report("infer", argv=[])
    report.device_mode = device_mode
    check = passed if status == Status.PASS else skipped
    report.add(check("load.offload", "load", "GPU offload", offload))
    report.add_metrics(
        [
            Metric("gen_tps", 895.5, "tokens/s", "perf", samples=(888.0, 895.0, 903.5), stddev=7.3),
            Metric("gen_tps_wall", 512.4, "tokens/s", "wall", samples=(510.0, 512.0, 515.2), stddev=2.6),
            Metric("decode_ms_per_token", 1.12, "ms", "perf", samples=(1.1, 1.12, 1.14), stddev=0.02),
            Metric("sample_ms_per_token", 0.81, "ms", "wall", samples=(0.8, 0.81, 0.82), stddev=0.01),
            Metric("other_ms_per_token", 0.02, "ms", "wall", samples=(0.02, 0.02, 0.02), stddev=0.0),
            Metric("prompt_tps", 41549.0, "tokens/s", "perf", samples=(40000.0, 41549.0, 43098.0), stddev=1709.0),
            Metric("prompt_tps_wall", 40112.0, "tokens/s", "wall", samples=(39000.0, 40112.0, 41224.0), stddev=1500.0),
            Metric("ttft_cold_ms", 48.2, "ms", "wall"),
            Metric("ttft_warm_ms", 5.7, "ms", "wall", samples=(4.6, 5.7, 6.8), stddev=1.1),
            Metric("prompt_tokens", 12, "tokens", "tokenizer"),
            Metric("generated_tokens", 128, "tokens", "decode loop"),
        ]
    )
    return report


def h100() -> Report:
    report = _base("gpu", "19/19 layers on CUDA0 (NVIDIA H100 80GB HBM3), 820 MiB VRAM (NVML +1351 MiB)")
    report.add_metrics(
        [
            Metric("vram_peak", 2145 * MIB, "bytes", "NVML"),
            Metric("gpu_util_mean", 61.0, "%", "NVML"),
            Metric("gpu_util_max", 72.0, "%", "NVML"),
            Metric("power_mean", 279.4, "W", "NVML"),
            Metric("energy_per_token", 0.312, "J/token", "NVML"),
            Metric("bandwidth_achieved", 2.38e11, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
            Metric("bandwidth_pct_of_peak", 7.1, "%", "achieved / peak", estimate=True),
            Metric("bandwidth_probed", 3.02e12, "bytes/s", "detect's timed device-to-device copies"),
            Metric("bandwidth_pct_of_probed", 7.9, "%", "achieved / probed", estimate=True),
            Metric("speedup_vs_cpu", 4.8, "×", "gen_tps / cpu_gen_tps"),
        ]
    )
    return report


def wsl2_no_telemetry() -> Report:
    """A WSL2 laptop: NVML reports memory but no utilisation, power or energy; no CPU comparison asked for."""
    report = _base("gpu", "29/29 layers on CUDA0 (NVIDIA GeForce RTX 3060 Laptop GPU), 1,312 MiB VRAM")
    report.add_metrics(
        [
            Metric("vram_peak", 3071 * MIB, "bytes", "NVML"),
            Metric("gpu_util_mean", None, "%", "NVML"),
            Metric("gpu_util_max", None, "%", "NVML"),
            Metric("power_mean", None, "W", "NVML"),
            Metric("energy_per_token", None, "J/token", "NVML"),
            Metric("bandwidth_achieved", 1.9e11, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
            Metric("bandwidth_pct_of_peak", 52.8, "%", "achieved / peak", estimate=True),
        ]
    )
    return report


def cpu_run() -> Report:
    return _base("cpu", "CPU run: 0/19 layers offloaded (by request), 248 MiB of weights in host memory", Status.SKIP)


def cpu_run_backend_sampling() -> Report:
    """`--sampling backend`: the sampler call shrinks to reading the token the decode graph picked, and the
    CPU-sampled runs sit beside it on their own row (figures typed in, as the rest of this file)."""
    report = _base("cpu", "CPU run: 0/19 layers offloaded (by request), 248 MiB of weights in host memory", Status.SKIP)
    report.metrics = [m for m in report.metrics if m.name != "sample_ms_per_token"]
    report.add_metrics(
        [
            Metric("sample_ms_per_token", 0.08, "ms", "wall", samples=(0.08, 0.08, 0.09), stddev=0.01),
            Metric("gen_tps_wall_cpu_sampling", 488.0, "tokens/s", "wall", samples=(486.9, 488.0, 489.1), stddev=1.1),
            Metric("sample_ms_per_token_cpu_sampling", 0.47, "ms", "wall", samples=(0.45, 0.47, 0.49), stddev=0.02),
        ]
    )
    return report


def _rtx4090(offload: Check, performance: Check) -> Report:
    """An RTX 4090 run whose offload and under-load verdicts come from the real judges (the performance one on a
    scenario's NVML sample series, tests/test_gpu_performance.py); the speeds are typed in, as above."""
    report = Report("infer", argv=[])
    report.device_mode = "gpu"
    # `infer` probes no bandwidth (validate-all does), so the decode-vs-bandwidth judge says it has nothing to
    # compare with; its judged cases are in test_gpu_performance.py.
    report.add(offload, performance, judge_decode_bandwidth(6.1e11 / 895.5, 6.1e11, None, performance))
    report.add_metrics([m for m in _base("gpu", "").metrics])
    report.add_metrics(
        [
            Metric("vram_peak", 1890 * MIB, "bytes", "NVML"),
            Metric("gpu_util_mean", 88.0, "%", "NVML"),
            Metric("gpu_util_max", 97.0, "%", "NVML"),
            Metric("power_mean", 310.0, "W", "NVML"),
            Metric("energy_per_token", 0.346, "J/token", "NVML"),
            Metric("bandwidth_achieved", 6.1e11, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
            Metric("bandwidth_pct_of_peak", 60.5, "%", "achieved / peak", estimate=True),
        ]
    )
    return report


def _full_offload(old: str = "", new: str = "") -> Check:
    """The offload check of the RTX 4090 full-offload log (tests/data/llama_logs), with `old` replaced by `new`."""
    lines = [LogLine(ln.level, ln.text.replace(old, new) if old else ln.text) for ln in read_log(FULL)]
    ev = parse_load_log(lines)
    return judge_offload(ev, LoadOptions(), 24, None, gpu_name=RTX4090).check(ev, cpu_mode=False)


def _under_load(scenario: str) -> Check:
    capped = dataclasses.replace(LOADED, power_limit_mw=200_000, power_default_mw=450_000)
    states = {
        "healthy": series(30, LOADED, dataclasses.replace(LOADED, clocks_event_reasons=0x4)),
        "thermal": series(63, LOADED, dataclasses.replace(LOADED, clocks_event_reasons=0x40, temperature_c=89)),
        "power_capped": series(80, capped, dataclasses.replace(capped, clocks_event_reasons=0x4)),
        "degraded_pcie": [dataclasses.replace(LOADED, pcie_gen=(3, 4), pcie_width=(4, 16))] * 100,
        "stuck_memory_clock": [dataclasses.replace(LOADED, mem_clock_mhz=405)] * 100,
    }[scenario]
    return judge(states)


# llama.cpp's fallback line for a weight whose type the CUDA backend refused (its format string, another tensor)
REFUSED = "tensor 'output.weight' (iq1_m) (and 24 others) cannot be used with preferred buffer type CUDA0"
GPU_RUNS = {
    "rtx4090_healthy": lambda: _rtx4090(_full_offload(), _under_load("healthy")),
    "rtx4090_thermal_slowdown": lambda: _rtx4090(_full_offload(), _under_load("thermal")),
    "rtx4090_power_capped": lambda: _rtx4090(_full_offload(), _under_load("power_capped")),
    "rtx4090_degraded_pcie": lambda: _rtx4090(_full_offload(), _under_load("degraded_pcie")),
    "rtx4090_stuck_memory_clock": lambda: _rtx4090(_full_offload(), _under_load("stuck_memory_clock")),
    "rtx4090_kv_cache_on_cpu": lambda: _rtx4090(
        _full_offload("CUDA0 KV buffer", "CPU KV buffer"), _under_load("healthy")
    ),
    "rtx4090_weights_refused_by_cuda": lambda: _rtx4090(
        _full_offload(
            "tensor 'token_embd.weight' (q8_0) (and 0 others) cannot be used with preferred buffer type CUDA_Host",
            REFUSED,
        ),
        _under_load("healthy"),
    ),
}


@pytest.mark.parametrize("name", sorted(GPU_RUNS))
def test_whole_output_golden_per_gpu_performance_scenario(name: str) -> None:
    """The checks table, the fixes, the panel and the verdict as `infer` prints them, per scenario. The healthy
    one must carry no WARN and no fix: a false positive is a defect too."""
    report = GPU_RUNS[name]()
    report.finish()
    console = Console(width=110, no_color=True, color_system=None, force_terminal=False, record=True)
    render_report(report, console)
    got = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert_golden(GOLDEN / "gpu_runs" / f"{name}.txt", got)
    if name == "rtx4090_healthy":
        assert "WARN" not in got and "fix:" not in got and "PASSED" in got


PANELS = {
    "h100": h100,
    "wsl2_no_telemetry": wsl2_no_telemetry,
    "cpu_run": cpu_run,
    "cpu_run_backend_sampling": cpu_run_backend_sampling,
}


@pytest.mark.parametrize("name", sorted(PANELS))
def test_inference_panel_golden(name: str) -> None:
    report = PANELS[name]()
    console = Console(width=100, no_color=True, color_system=None, force_terminal=False, record=True)
    console.print(inference_panel(report))
    got = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert_golden(GOLDEN / "panel" / f"{name}.txt", got)


def test_missing_telemetry_is_na_never_zero() -> None:
    console = Console(width=100, no_color=True, color_system=None, force_terminal=False, record=True)
    console.print(inference_panel(wsl2_no_telemetry()))
    text = console.export_text()
    assert "mean n/a · max n/a" in text  # no unit after n/a
    assert "mean n/a · energy n/a" in text
    assert "vs CPU" not in text  # not measured, so not shown


def test_a_cpu_run_panel_shows_no_gpu_figures() -> None:
    console = Console(width=100, no_color=True, color_system=None, force_terminal=False, record=True)
    console.print(inference_panel(cpu_run()))
    text = console.export_text()
    assert "Inference (CPU run)" in text
    for gpu_only in ("VRAM peak", "GPU util", "Power", "Bandwidth"):
        assert gpu_only not in text


def test_bandwidth_without_a_known_peak_says_so() -> None:
    report = _base("gpu", "29/29 layers on CUDA0")
    report.add_metrics(
        [
            Metric("bandwidth_achieved", 1.9e11, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
            Metric("bandwidth_pct_of_peak", None, "%", "achieved / peak", estimate=True),
        ]
    )
    console = Console(width=100, no_color=True, color_system=None, force_terminal=False, record=True)
    console.print(inference_panel(report))
    assert "Bandwidth   190 GB/s (estimate; the GPU's peak is n/a)" in console.export_text()


def _render(report: Report, width: int, verbose: int = 0) -> str:
    from kcuda_validate.render import render_report

    console = Console(width=width, no_color=True, color_system=None, force_terminal=False, record=True)
    render_report(report, console, verbose=verbose)
    return console.export_text()


def test_outside_text_is_never_read_as_markup() -> None:
    """A path is text, not rich markup: `[/x]` used to raise MarkupError (exit 70), `[bold]` vanished."""
    from kcuda_validate.checks import failed
    from kcuda_validate.errors import ExitCode

    report = Report("load", argv=[])
    report.add(
        failed(
            "model.source",
            "model",
            "Model source",
            "[/x][bold]m.gguf: no such file",
            "Check [red]it[/red].",
            ExitCode.MODEL_INVALID,
        )
    )
    text = _render(report, 100, verbose=2)
    assert "FAIL   Model source   [/x][bold]m.gguf: no such file" in text
    assert "FAIL Model source: [/x][bold]m.gguf: no such file\n     fix: Check [red]it[/red].\n" in text


def test_a_credential_folded_across_lines_is_still_masked() -> None:
    """Redaction happens before the table wraps a long summary, so no fold can split a URL past the mask."""
    from kcuda_validate.checks import failed
    from kcuda_validate.errors import ExitCode

    secret = "pw-Sup3rSecretValue"
    summary = f"cannot reach http://someone:{secret}@hub.internal.example:8443/?token={secret} \udcff"
    report = Report("load", argv=[])
    report.add(failed("model.source", "model", "Model source", summary, "retry", ExitCode.HUB_UNREACHABLE))
    for width in (30, 40, 60, 100):
        text = _render(report, width, verbose=2)
        assert secret not in "".join(text.split())
        assert "someone" not in text
    assert "cannot reach http://***@hub.internal.example:8443/?token=*** \\xff" in _render(report, 200)
