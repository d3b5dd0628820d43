"""The model stages' judges, called directly: real llama.cpp logs recorded on an H100 and on this CPU build,
and real worker outcomes (a real CPU inference on the tiny synthetic model, a real timeout, a real SIGTERM).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest

from kcuda_validate.checks import Check, Metric, MetricName, Status, verdict
from kcuda_validate.errors import ExitCode
from kcuda_validate.isolation import Worker, WorkerOutcome
from kcuda_validate.llm.llamalog import LogLine
from kcuda_validate.llm.loader import LoadOptions, LoadResult
from kcuda_validate.llm.measures import InferOptions
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.gguf_info import TensorInfo
from kcuda_validate.verdicts import (
    NOT_MEASURED_FIX,
    Thresholds,
    compare_cpu_verdict,
    find,
    inference_verdict,
    load_verdict,
    speed_threshold_checks,
    speedup_threshold_checks,
    worker_verdicts,
)
from kcuda_validate.worker_protocol import WorkerRequest

sys.path.insert(0, str(Path(__file__).parent / "llm"))
from test_llamalog import H100, H100_LOG, read_log

MIB = 1024 * 1024
CPU_LOG = "cpu_gemma3_270m_ngl-1.log"  # this CPU-only build asked for every layer on the GPU


def recorded(name: str, options: LoadOptions) -> LoadResult:
    return LoadResult(Path("/models/gemma-3-270m.gguf"), options, 0.5, 512, tuple(read_log(name)))


def test_a_full_h100_offload_passes_with_the_nvml_delta_the_parent_read() -> None:
    v = load_verdict(recorded(H100_LOG, LoadOptions(n_ctx=512)), 18, 1000 * MIB, 1600 * MIB, H100)
    assert [(c.id, c.status, c.summary) for c in v.checks] == [
        ("load.model", Status.PASS, "loaded in 0.50 s (n_ctx 512, all GPU layers requested)"),
        ("load.offload", Status.PASS, f"19/19 layers on CUDA0 ({H100}), 757 MiB VRAM (NVML +600 MiB)"),
    ]
    assert [(m.name, m.value) for m in v.metrics] == [
        (MetricName.LOAD_TIME, 0.5),
        (MetricName.VRAM_LOAD_DELTA, 600 * MIB),
        (MetricName.GPU_BUFFERS, v.sections["load"]["offload"]["gpu_buffer_bytes"]),
    ]
    assert (v.sections["load"]["vram_used_before_bytes"], v.sections["load"]["vram_used_after_bytes"]) == (
        1000 * MIB,
        1600 * MIB,
    )
    assert v.proceed and not v.halted and v.error_line is None


def test_a_kv_cache_left_in_host_memory_is_not_a_full_offload() -> None:
    """Synthesised from the recorded H100 log: the same load with its two KV buffers on the CPU, as llama.cpp
    prints them when KV offload is off. Every layer on the GPU, yet not a full offload (issue 14)."""
    lines = [LogLine(ln.level, ln.text.replace("CUDA0 KV buffer", "CPU KV buffer")) for ln in read_log(H100_LOG)]
    assert lines != read_log(H100_LOG)
    res = LoadResult(Path("/models/gemma-3-270m.gguf"), LoadOptions(n_ctx=512), 0.5, 512, tuple(lines))
    gpu_mib = res.evidence.bytes_on("CUDA0") / MIB
    v = load_verdict(res, 18, 1000 * MIB, 1600 * MIB, H100)
    offload = v.checks[1]
    assert (offload.id, offload.status, offload.summary, offload.exit_code) == (
        "load.offload",
        Status.FAIL,
        f"19/19 layers on CUDA0 ({H100}), {gpu_mib:.0f} MiB VRAM (NVML +600 MiB); the KV cache (9 MiB) stayed in"
        " host memory",
        ExitCode.CHECK_FAILED,
    )
    assert offload.fix is not None and offload.fix.startswith("llama.cpp kept the KV cache on the CPU")
    assert not v.proceed
    allowed = load_verdict(res, 18, 1000 * MIB, 1600 * MIB, H100, require_full_offload=False)
    assert allowed.checks[1].status == Status.WARN and allowed.proceed


def test_a_recurrent_state_left_in_host_memory_is_not_a_full_offload() -> None:
    """The recorded H100 load with the line a hybrid's recurrent layers add, their state in host memory as with KV
    offload off (llama-memory-recurrent.cpp's format): every layer on the GPU, yet each token reads the state
    across PCIe."""
    rs = LogLine(2, "llama_memory_recurrent:        CPU RS buffer size =    48.00 MiB\n")
    res = LoadResult(Path("/models/qwen3.5.gguf"), LoadOptions(n_ctx=512), 0.5, 512, (*read_log(H100_LOG), rs))
    assert res.evidence.rs_buffers == {"CPU": 48 * MIB}
    offload = load_verdict(res, 18, 1000 * MIB, 1600 * MIB, H100).checks[1]
    assert (offload.status, offload.summary.split("; ")[-1], offload.fix) == (
        Status.FAIL,
        "the recurrent state (48 MiB) stayed in host memory",
        "llama.cpp kept the recurrent state on the CPU, so every token reads it across PCIe: free VRAM or lower"
        " --n-ctx, and check that nothing turns KV offload off (offload_kqv=False, --no-kv-offload).",
    )


def test_a_gpu_request_on_a_cpu_only_build_stops_the_run_at_load() -> None:
    v = load_verdict(recorded(CPU_LOG, LoadOptions(n_ctx=512)), 18, None, None, None)
    offload = v.checks[1]
    assert (offload.id, offload.status, offload.exit_code) == ("load.offload", Status.FAIL, ExitCode.GPU_UNUSABLE)
    assert offload.summary.startswith("no offload evidence")
    assert (v.halted, v.proceed, v.stage) == (True, False, "load")
    assert find(v.metrics, MetricName.VRAM_LOAD_DELTA) is None  # no NVML reading, no made-up delta


@pytest.fixture(scope="module")
def cpu_outcome(tiny_model: Path) -> WorkerOutcome:
    """One real CPU load + inference in a real worker child."""
    request = WorkerRequest(tiny_model, LoadOptions(cpu_mode=True, n_ctx=256), InferOptions(max_tokens=8, repeat=2), "")
    out = Worker(pin="").run(request, 120)
    assert out.inferred is not None, out
    return out


def test_a_real_cpu_run_is_judged_load_then_inference(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    load, infer = worker_verdicts(cpu_outcome, info, Thresholds(), infer_requested=True)
    assert [(c.id, c.status) for c in load.checks] == [("load.model", Status.PASS), ("load.offload", Status.SKIP)]
    assert [c.id for c in infer.checks] == [
        "infer.generate",
        "infer.determinism",
        "infer.timing_agreement",
    ]
    assert infer.checks[1].summary == "3 runs produced identical tokens"  # warm-up + 2 measured, greedy
    names = [m.name for m in infer.metrics]
    assert MetricName.GEN_TPS in names and MetricName.BANDWIDTH_ACHIEVED in names
    assert MetricName.BANDWIDTH_PEAK not in names  # a CPU run has no GPU peak to compare with
    assert infer.proceed and "inference" in infer.sections


def test_a_gpu_run_judges_its_performance_under_load(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    """The GPU-performance judge is wired into the inference stage: given the sampler's summary and the GPU
    detect read, a GPU run gets `gpu.performance` (a warning is not a failure); a CPU run never does. The
    inference result is this CPU run's and the samples are the fake power-capped RTX 4090's: no figure here is
    presented as a GPU measurement."""
    import dataclasses

    from test_gpu_performance import LOADED, sampled, series

    info = read_gguf(tiny_model)
    capped = dataclasses.replace(LOADED, power_limit_mw=200_000, power_default_mw=450_000)
    telemetry, gpu = sampled(series(80, capped, dataclasses.replace(capped, clocks_event_reasons=0x4)))
    assert cpu_outcome.inferred is not None
    judged = inference_verdict(cpu_outcome.inferred, info, Thresholds(), telemetry, on_gpu=True, gpu=gpu)
    perf = next(c for c in judged.checks if c.id == "gpu.performance")
    assert (perf.status, perf.summary) == (
        Status.WARN,
        "power limit 200 W, default 450 W, SW power cap for 80 % of inference",
    )
    assert judged.proceed and all(c.status != Status.FAIL for c in judged.checks)
    healthy, gpu = sampled([LOADED] * 20)
    judged = inference_verdict(cpu_outcome.inferred, info, Thresholds(), healthy, on_gpu=True, gpu=gpu)
    assert [(c.id, c.status) for c in judged.checks if c.id == "gpu.performance"] == [("gpu.performance", Status.PASS)]
    on_cpu = inference_verdict(cpu_outcome.inferred, info, Thresholds(), telemetry, on_gpu=False, gpu=gpu)
    assert "gpu.performance" not in [c.id for c in on_cpu.checks]


def test_the_roofline_also_measures_against_the_probed_bandwidth(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    """On a GPU run the achieved bandwidth is set against NVML's peak and against what detect's timed copies
    reached on that GPU (found by NVML index in the detect verdict); without a probe that share is n/a."""
    from kcuda_validate.checks import Check
    from kcuda_validate.verdicts import StageVerdict, probed_bandwidth

    probe = Check(
        "torch.bandwidth.0",
        "detect",
        "Memory bandwidth of cuda:0",
        Status.PASS,
        "memory 3.02 TB/s",
        evidence={"nvml_index": 1, "mem_bw_bytes_s": 3.0e12},
    )
    detect = StageVerdict("detect", (probe,))
    assert probed_bandwidth([detect], 1) == 3.0e12
    assert probed_bandwidth([detect], 0) is None  # another GPU than the one probed
    assert cpu_outcome.inferred is not None
    info = read_gguf(tiny_model)
    v = inference_verdict(cpu_outcome.inferred, info, Thresholds(), None, 3.35e12, True, None, 3.0e12)
    achieved = find(v.metrics, MetricName.BANDWIDTH_ACHIEVED)
    probed, share = find(v.metrics, MetricName.BANDWIDTH_PROBED), find(v.metrics, MetricName.BANDWIDTH_PCT_OF_PROBED)
    assert achieved is not None and achieved.value and probed is not None and share is not None
    assert (probed.value, probed.estimate, share.estimate) == (3.0e12, False, True)
    assert share.value == pytest.approx(achieved.value / 3.0e12 * 100)
    unprobed = inference_verdict(cpu_outcome.inferred, info, Thresholds(), None, 3.35e12, True, None, None)
    assert [(m.name, m.value) for m in unprobed.metrics if "probed" in m.name] == [
        (MetricName.BANDWIDTH_PROBED, None),
        (MetricName.BANDWIDTH_PCT_OF_PROBED, None),
    ]


def test_a_gpu_run_judges_its_decode_against_the_probed_bandwidth(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    """Wiring: the inference stage hands the roofline's bytes per token, the decode speed, detect's probe and the
    performance check to judge_decode_bandwidth (its cases are in test_gpu_performance.py). The result is this CPU
    run's and the probes are made up, so no figure here stands for a GPU's; a CPU run gets no such check."""
    assert cpu_outcome.inferred is not None
    info = read_gguf(tiny_model)

    def judged(probed: float | None) -> tuple[Check, float, float]:
        v = inference_verdict(cpu_outcome.inferred, info, Thresholds(), None, 3.35e12, True, None, probed)
        per_token, gen = find(v.metrics, MetricName.BYTES_PER_TOKEN), find(v.metrics, MetricName.GEN_TPS)
        assert per_token is not None and per_token.value and gen is not None and gen.value
        return next(c for c in v.checks if c.id == "infer.bandwidth"), per_token.value, gen.value

    tiny, per_token, gen = judged(3.0e12)
    assert tiny.status is Status.SKIP and tiny.summary.startswith("not judged: ")
    slow_copy = per_token / 0.005  # the reads then take 5 ms: judged
    check, _, gen = judged(slow_copy)
    assert check.status is (Status.PASS if gen * 0.005 >= 0.15 else Status.WARN)
    assert check.evidence["share_of_probed"] == pytest.approx(gen * 0.005)
    assert check.summary.startswith("decode read ")
    if check.status is Status.WARN:  # no telemetry was handed in
        assert check.summary.endswith("; nothing was sampled under load to say why")
    else:
        assert check.fix is None
    assert judged(None)[0].summary.startswith("no probed bandwidth to compare with")
    # worker_verdicts hands the load stage's offload check on: this run's layers stayed on the CPU.
    _, infer = worker_verdicts(
        cpu_outcome, info, Thresholds(), infer_requested=True, on_gpu=True, probed_bandwidth=slow_copy
    )
    offload = next(c for c in infer.checks if c.id == "infer.bandwidth")
    assert (offload.status, offload.summary) == (
        Status.SKIP,
        "not judged: the offload is not full (GPU offload (CPU run): CPU run: 0/4 layers offloaded (by request), "
        "4 MiB of weights in host memory)",
    )
    on_cpu = inference_verdict(cpu_outcome.inferred, info, Thresholds(), None, None, False, None, 3.0e12)
    assert "infer.bandwidth" not in [c.id for c in on_cpu.checks]
    # The header decides whether it is a mixture of experts: this one, relabelled with 2 of 8 routed experts.
    exps = TensorInfo("blk.0.ffn_up_exps.weight", (320, 768, 8), 8, 0, 8 * 261120)
    moe = dataclasses.replace(
        info,
        metadata={**info.metadata, "llama.expert_count": 8, "llama.expert_used_count": 2},
        tensors=(*info.tensors, exps),
    )
    v = inference_verdict(cpu_outcome.inferred, moe, Thresholds(), None, 3.35e12, True, None, slow_copy)
    routed = next(c for c in v.checks if c.id == "infer.bandwidth")
    assert (routed.status, routed.summary.split(" reads ")[0]) == (
        Status.SKIP,
        "not judged: a mixture of experts (2 of 8 experts per token)",
    )


def test_thresholds_are_judged_on_the_measured_figures(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    assert cpu_outcome.inferred is not None
    v = inference_verdict(cpu_outcome.inferred, read_gguf(tiny_model), Thresholds(min_gen_tps=1e9, max_ttft_ms=1e9))
    gen = find(v.metrics, MetricName.GEN_TPS)
    ttft = find(v.metrics, MetricName.TTFT_WARM_MS)
    assert gen is not None and gen.value is not None and ttft is not None and ttft.value is not None
    by_id = {c.id: c for c in v.checks}
    missed = by_id["threshold.min_gen_tps"]
    gap = 1e9 - gen.value
    assert (missed.status, missed.exit_code, missed.summary) == (
        Status.FAIL,
        ExitCode.BELOW_THRESHOLD,
        f"generation speed {gen.value:.1f} tok/s misses 1000000000 tok/s "
        f"(short by {gap:.1f} tok/s, {gap / 1e9 * 100:.0f}%)",
    )
    met = by_id["threshold.max_ttft_ms"]
    met_summary = f"warm time to first token {ttft.value:.1f} ms meets 1000000000 ms"
    assert (met.status, met.summary) == (Status.PASS, met_summary)
    assert not v.proceed and not v.halted  # the run completed; the next stage (compare-cpu) does not run


def test_a_near_miss_never_reads_as_the_limit() -> None:
    """49.96 against 50 failed while the text said "50.0 tok/s misses 50 tok/s (short by 0.0 tok/s, 0%)"."""
    gen = Metric(MetricName.GEN_TPS, 49.96, "tok/s", "llama_perf_context")
    ttft = Metric(MetricName.TTFT_WARM_MS, 20.004, "ms", "wall clock")
    missed = speed_threshold_checks(Thresholds(min_gen_tps=50, max_ttft_ms=20), (gen, ttft))
    assert [(c.status, c.exit_code) for c in missed] == [(Status.FAIL, ExitCode.BELOW_THRESHOLD)] * 2
    assert [c.summary for c in missed] == [
        "generation speed 49.96 tok/s misses 50 tok/s (short by 0.04 tok/s, 0.08%)",
        "warm time to first token 20.004 ms misses 20 ms (over by 0.004 ms, 0.02%)",
    ]


def test_energy_per_token_counts_every_run_in_the_sampler_window(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    """Backend sampling alternates a CPU-sampled run after each measured one, inside the same NVML window: their
    tokens are part of the energy, so they are part of the divisor (left out, J/token read 1.75x at --repeat 3)."""
    from kcuda_validate.telemetry import TelemetrySummary

    real = cpu_outcome.inferred
    assert real is not None and real.warmup is not None
    result = dataclasses.replace(real, cpu_sampled_runs=real.runs)
    telemetry = TelemetrySummary(samples=50, duration_s=5.0, interval_s=0.1, energy_j=500.0)
    v = inference_verdict(result, read_gguf(tiny_model), Thresholds(), telemetry=telemetry)
    tokens = real.warmup.generated_tokens + 2 * sum(r.generated_tokens for r in real.runs)
    energy = find(v.metrics, MetricName.ENERGY_PER_TOKEN)
    assert energy is not None and energy.value == pytest.approx(500.0 / tokens)


def test_a_cpu_comparison_whose_worker_dies_is_a_failed_check_not_a_missed_threshold(
    cpu_outcome: WorkerOutcome, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker that exits with a status during the CPU run: the check names the status and carries the crash
    hint (it read "failed: None"), and --min-speedup is not met for that reason, exit 1 as specified, not 6."""
    assert cpu_outcome.inferred is not None
    monkeypatch.setenv("KCUDA_TEST_FAULT", "exit:infer")
    out = Worker(pin="").run(_cpu_request(tiny_model), 120)
    assert out.crash is not None and out.crash.returncode == 3
    v = compare_cpu_verdict(cpu_outcome.inferred, out, Thresholds(min_speedup=2))
    compare, threshold = v.checks
    assert (compare.status, compare.exit_code, compare.summary, compare.fix) == (
        Status.FAIL,
        ExitCode.CHECK_FAILED,
        "the CPU comparison run failed: its worker died with status 3",
        out.crash.hint,
    )
    assert (threshold.id, threshold.exit_code, threshold.summary) == (
        "threshold.min_speedup",
        ExitCode.CHECK_FAILED,
        "speedup over CPU was not measured (the CPU comparison run failed), so --min-speedup 2 cannot be met",
    )
    assert verdict(list(v.checks)) == ExitCode.CHECK_FAILED


def test_min_speedup_without_a_cpu_run_is_not_measured() -> None:
    (check,) = speedup_threshold_checks(Thresholds(min_speedup=2), ())
    assert (check.id, check.status, check.exit_code, check.summary, check.fix) == (
        "threshold.min_speedup",
        Status.FAIL,
        ExitCode.BELOW_THRESHOLD,
        "speedup over CPU was not measured, so --min-speedup 2 cannot be met",
        NOT_MEASURED_FIX["min_speedup"],
    )


def test_the_same_greedy_run_agrees_with_itself(cpu_outcome: WorkerOutcome) -> None:
    assert cpu_outcome.inferred is not None
    v = compare_cpu_verdict(cpu_outcome.inferred, cpu_outcome, Thresholds(min_speedup=0.5))
    compare, threshold = v.checks
    speed = find(v.metrics, MetricName.SPEEDUP_VS_CPU)
    cpu = find(v.metrics, MetricName.CPU_GEN_TPS)
    assert speed is not None and speed.value == pytest.approx(1.0) and cpu is not None and cpu.value is not None
    n = len(cpu_outcome.inferred.first.token_ids)
    assert compare.summary == (
        f"GPU {cpu.value:.1f} vs CPU {cpu.value:.1f} tok/s = 1.0× faster; "
        f"outputs identical token for token ({n} tokens)"
    )
    assert (threshold.id, threshold.status) == ("threshold.min_speedup", Status.PASS)
    assert v.sections["compare_cpu"]["tokens_identical"] is True


def _cpu_request(model: Path) -> WorkerRequest:
    return WorkerRequest(model, LoadOptions(cpu_mode=True, n_ctx=256), InferOptions(max_tokens=64, repeat=2), "")


def test_a_cpu_comparison_that_times_out_stops_the_run_with_124(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    assert cpu_outcome.inferred is not None
    out = Worker(pin="").run(_cpu_request(tiny_model), 0.01)  # a real worker, killed at its deadline
    assert out.timeout is not None
    v = compare_cpu_verdict(cpu_outcome.inferred, out, Thresholds(min_speedup=2))
    (check,) = v.checks  # no speedup judged after the stop
    assert (check.id, check.exit_code, check.summary) == (
        "infer.compare_cpu",
        ExitCode.TIMEOUT,
        "the CPU comparison run did not finish within 0.01 s; its worker was killed",
    )
    assert (v.halted, v.stage, v.error_line) == (True, "infer", (check.summary, check.fix))


def test_a_cpu_comparison_stopped_by_sigterm_exits_143(cpu_outcome: WorkerOutcome, tiny_model: Path) -> None:
    assert cpu_outcome.inferred is not None
    # A real SIGTERM to this process once the model is loaded and the comparison run is about to generate (a
    # timer raced a tiny model that loads and generates in under its 0.3 s on an idle machine).
    out = Worker(pin="").run(_cpu_request(tiny_model), 120, before_infer=lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert out.interrupted is not None and out.interrupted.signum == signal.SIGTERM
    v = compare_cpu_verdict(cpu_outcome.inferred, out, Thresholds())
    (check,) = v.checks
    summary = "interrupted by SIGTERM during the CPU comparison run; the worker process was stopped"
    assert (check.id, check.exit_code, check.summary) == ("infer.interrupted", ExitCode.TERMINATED, summary)
    assert (v.exit_override, v.halted, v.error_line) == (ExitCode.TERMINATED, True, (summary, None))
