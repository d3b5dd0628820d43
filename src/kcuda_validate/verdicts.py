"""The judges of the model stages: pure functions from stage results to a `StageVerdict` (checks, metrics,
the stage's report section, and whether the run stops there).

No I/O, no terminal, no report: tests call them with real results (parsed llama.cpp logs, real CPU runs).
The pipeline runs the services, hands their results here, and builds the report once from the verdicts.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kcuda_validate.checks import Check, Metric, MetricName, Status, failed, mean_of, passed, warned
from kcuda_validate.errors import ExitCode, KcudaError, UsageError
from kcuda_validate.isolation import WorkerOutcome
from kcuda_validate.llm.loader import LoadResult, judge_offload
from kcuda_validate.llm.measures import InferenceResult
from kcuda_validate.model.gguf_info import GgufInfo
from kcuda_validate.model.layout import decode_reads, routed_experts
from kcuda_validate.report import Sections
from kcuda_validate.worker_protocol import ErrorKind, WorkerError

if TYPE_CHECKING:
    from kcuda_validate.gpu.nvml import GpuInfo
    from kcuda_validate.telemetry import TelemetrySummary

# Perf counters time only llama_decode; the wall clock adds sampling and detokenising per token.
PERF_WALL_TOLERANCE = 0.15
# Why a threshold's figure can be missing, and what brings it back.
NOT_MEASURED_FIX = {
    "min_speedup": "Add --compare-cpu: the speedup is measured against a CPU run of the same prompt.",
    "max_ttft_ms": "Keep the warm-up, or pass --repeat 2 or more: warm TTFT excludes the first (cold) run.",
    "min_gen_tps": "Raise --max-tokens: generation speed needs at least two generated tokens.",
}
TIMEOUT_FIX = (
    "Raise --timeout if the model is large or the disk slow; otherwise the driver or llama.cpp hung "
    "(check `sudo dmesg | grep -i xid`)."
)


@dataclass(frozen=True)
class Thresholds:
    min_gen_tps: float | None = None
    min_prompt_tps: float | None = None
    max_ttft_ms: float | None = None
    min_speedup: float | None = None
    require_full_offload: bool = True


@dataclass(frozen=True)
class StageVerdict:
    """One stage's judgement. `halted`: the run stops here (the report's stopped_at is `stage`);
    `error_line`: the one `Error:` line (and fix) the command prints for it; `exit_override`: an interrupt's
    130/143, which beats every check."""

    stage: str
    checks: tuple[Check, ...] = ()
    metrics: tuple[Metric, ...] = ()
    sections: Sections = field(default_factory=lambda: Sections())
    halted: bool = False
    error_line: tuple[str, str | None] | None = None
    exit_override: ExitCode | None = None
    gpu: dict[str, Any] | None = None
    driver: dict[str, Any] | None = None
    torch_cuda: str | None = None
    device_mode: str | None = None

    @property
    def proceed(self) -> bool:
        """The next stage may run: nothing stopped the run and no check failed."""
        return not self.halted and not any(c.status == Status.FAIL for c in self.checks)


def halt(stage: str, check: Check, announce: bool = True, **kw: Any) -> StageVerdict:
    """The run stops at `stage` with `check`; with `announce`, its summary and fix are the Error: line."""
    return StageVerdict(stage, (check,), halted=True, error_line=(check.summary, check.fix) if announce else None, **kw)


def error_check(exc: KcudaError, id: str, stage: str, title: str) -> Check:
    return Check(id, stage, title, Status.FAIL, exc.message, {"error": type(exc).__name__}, exc.fix, exc.exit_code)


def worker_error_check(id: str, stage: str, title: str, error: WorkerError, log_tail: Sequence[str]) -> Check:
    return Check(
        id, stage, title, Status.FAIL, error.message, {"log_tail": list(log_tail[-15:])}, error.fix, error.exit_code
    )


# -- interrupts, timeouts, crashes: one place ---------------------------------------------------------------------
def interrupt_exit(signum: int) -> ExitCode:
    return ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED


def interrupted(
    stage: str, signum: int, *, during: str | None = None, fix: str | None = None, worker: bool = False
) -> StageVerdict:
    """An interrupt, whether the parent caught it (detection, download, header) or the worker stage did.

    `during` names what was under way when it is not the stage itself (the CPU comparison run)."""
    name = signal.Signals(signum).name
    what = during or stage
    summary = f"interrupted by {name} during {what}" + ("; the worker process was stopped" if worker else "")
    code = interrupt_exit(signum)
    check = failed(f"{stage}.interrupted", stage, f"{stage.capitalize()} stage", summary, fix, code)
    line = summary if worker else f"interrupted by {name} during the {what} stage"
    return StageVerdict(stage, (check,), halted=True, error_line=(line, fix), exit_override=code)


def worker_stopped(out: WorkerOutcome) -> StageVerdict | None:
    """Interrupt, timeout or crash of the worker: the verdict that says so; None when none happened."""
    if out.interrupted is not None:
        return interrupted(out.interrupted.stage, out.interrupted.signum, worker=True)
    if out.timeout is not None:
        t = out.timeout
        check = failed(
            f"{t.stage}.timeout",
            t.stage,
            f"{t.stage.capitalize()} stage",
            f"{t.stage} did not finish within {t.timeout_s:g} s; the worker's process group was killed",
            TIMEOUT_FIX,
            ExitCode.TIMEOUT,
            log_tail=list(out.log_tail[-15:]),
        )
        return halt(t.stage, check)
    if out.crash is not None:
        c = out.crash
        check = Check(
            f"{c.stage}.crash",
            c.stage,
            f"{c.stage.capitalize()} stage",
            Status.FAIL,
            f"the worker died during {c.stage}" + (f" by {c.signal}" if c.signal else f" with status {c.returncode}"),
            c.to_json(),
            c.hint,
            ExitCode.CRASHED,
        )
        return halt(c.stage, check, sections=Sections(crash=c.to_json()))
    return None


# -- load ---------------------------------------------------------------------------------------------------------
def load_verdict(
    res: LoadResult,
    n_layer: int | None,
    vram_before: int | None,
    vram_after: int | None,
    gpu_name: str | None,
    require_full_offload: bool = True,
) -> StageVerdict:
    """The offload judged once, here, from the worker's llama.cpp log and the VRAM the parent read."""
    opts = res.options
    evidence = res.evidence
    delta = vram_after - vram_before if vram_after is not None and vram_before is not None else None
    verdict = judge_offload(evidence, opts, n_layer, delta, gpu_name)
    section = {
        "model_path": str(res.model_path),
        "n_ctx": res.n_ctx,
        "gpu_layers_requested": opts.gpu_layers,
        "cpu_mode": opts.cpu_mode,
        "load_s": res.load_s,
        "offload": verdict.to_json(),
        "evidence": evidence.to_json(),
        "vram_used_before_bytes": vram_before,
        "vram_used_after_bytes": vram_after,
    }
    layers = (
        "CPU only" if opts.cpu_mode else f"{'all' if opts.gpu_layers < 0 else opts.gpu_layers} GPU layers requested"
    )
    loaded = passed(
        "load.model",
        "load",
        "Model load",
        f"loaded in {res.load_s:.2f} s (n_ctx {res.n_ctx}, {layers})",
        load_s=res.load_s,
        n_ctx=res.n_ctx,
    )
    offload = verdict.check(evidence, opts.cpu_mode, require_full_offload, duration_s=res.load_s)
    metrics = [Metric(MetricName.LOAD_TIME, res.load_s, "s", "wall clock around llama.cpp model+context load")]
    if verdict.vram_delta_bytes is not None:
        metrics.append(
            Metric(
                MetricName.VRAM_LOAD_DELTA, verdict.vram_delta_bytes, "bytes", "NVML used memory after − before load"
            )
        )
    metrics.append(
        Metric(MetricName.GPU_BUFFERS, verdict.gpu_buffer_bytes, "bytes", "llama.cpp log: model+KV+compute on GPU")
    )
    return StageVerdict(
        "load",
        (loaded, offload),
        tuple(metrics),
        Sections(load=section),
        halted=offload.status == Status.FAIL,
    )


# -- inference ----------------------------------------------------------------------------------------------------
def _v(m: Metric | float | None, digits: int = 1) -> str:
    value = m.value if isinstance(m, Metric) else m
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def find(metrics: Iterable[Metric], name: MetricName) -> Metric | None:
    return next((m for m in metrics if m.name == name), None)


def inference_verdict(
    result: InferenceResult,
    info: GgufInfo,
    thresholds: Thresholds,
    telemetry: TelemetrySummary | None = None,
    peak_bandwidth: float | None = None,
    on_gpu: bool = False,
    gpu: GpuInfo | None = None,
    probed_bandwidth: float | None = None,
    offload: Check | None = None,
) -> StageVerdict:
    """Generation, determinism, the two clocks, telemetry, the roofline estimate, the GPU's performance health
    under load and the speed thresholds.

    `on_gpu`: the run used a GPU, so the achieved bandwidth's share of its `peak_bandwidth` (and of the
    `probed_bandwidth` detect measured, the ceiling a copy really reaches) is reported, and
    the telemetry sampled during the decode is judged against the GPU's own limits (`gpu`, read at detect).
    `offload` is the load stage's load.offload check: a decode with part of the model on the CPU is not set
    against the GPU's bandwidth."""
    sections = Sections(inference=result.to_json())
    metrics = list(result.metrics())
    runs = result.runs
    n_gen = runs[0].generated_tokens if runs else 0
    if n_gen == 0:
        check = failed(
            "infer.generate",
            "infer",
            "Inference",
            "the model generated no tokens (it emitted end-of-sequence at once)",
            "Try another prompt or model; with --temperature 0 an instruct model should answer.",
        )
        return StageVerdict("infer", (check,), tuple(metrics), sections, halted=True)
    gen, gen_wall = find(metrics, MetricName.GEN_TPS), find(metrics, MetricName.GEN_TPS_WALL)
    ttft, cold = find(metrics, MetricName.TTFT_WARM_MS), find(metrics, MetricName.TTFT_COLD_MS)
    if ttft is not None and ttft.value is not None:
        ttft_text = f"TTFT {_v(ttft, 0)} ms"
    else:  # --no-warmup with one run: only the cold figure exists
        ttft_text = f"TTFT {_v(cold, 0)} ms (cold)"
    checks = [
        passed(
            "infer.generate",
            "infer",
            "Inference",
            f"{n_gen} tokens at {_v(gen)} tok/s (perf) / {_v(gen_wall)} tok/s (wall), {ttft_text}, {len(runs)} run(s)",
            text=result.text,
            chat_template=result.chat_template_applied,
        )
    ]
    checks += determinism_checks(result)
    checks += timing_agreement_checks(metrics)
    performance: Check | None = None
    if telemetry is not None:
        sections["telemetry"] = telemetry.to_json()
        # Every run the sampler's window saw: the warm-up, the measured runs, and the CPU-sampled runs that backend
        # sampling alternates with them (leaving those out overstated J/token 1.75x at --repeat 3).
        window = [*runs, *([result.warmup] if result.warmup else []), *result.cpu_sampled_runs]
        tokens = sum(x.generated_tokens for x in window)
        metrics += telemetry.metrics(tokens)
        if on_gpu and gpu is not None:
            from kcuda_validate.gpu_performance import judge_gpu_performance

            checks.append(performance := judge_gpu_performance(telemetry, gpu))
    metrics += roofline_metrics(
        info, result, find(metrics, MetricName.GEN_TPS), on_gpu, peak_bandwidth, probed_bandwidth
    )
    if on_gpu:
        from kcuda_validate.gpu_performance import judge_decode_bandwidth

        per_token, achieved = (find(metrics, n) for n in (MetricName.BYTES_PER_TOKEN, MetricName.BANDWIDTH_ACHIEVED))
        read = (per_token.value if per_token else None, achieved.value if achieved else None)
        experts = routed_experts(info)
        checks.append(judge_decode_bandwidth(*read, probed_bandwidth, performance, str(info.path), offload, experts))
    checks += speed_threshold_checks(thresholds, metrics)
    return StageVerdict("infer", tuple(checks), tuple(metrics), sections)


def determinism_checks(result: InferenceResult) -> list[Check]:
    """Same seed, same tokens, every run."""
    if result.deterministic is None:
        return []
    if result.deterministic:
        n = len(result.runs) + (1 if result.warmup else 0)
        return [passed("infer.determinism", "infer", "Determinism", f"{n} runs produced identical tokens")]
    return [
        failed(
            "infer.determinism",
            "infer",
            "Determinism",
            f"runs diverged at generated token {result.divergence}",
            "Non-deterministic output with a fixed seed points at a numerical problem (driver, "
            "kernels or memory); rerun and check `sudo dmesg | grep -i xid` for Xid errors.",
            divergence_token=result.divergence,
        )
    ]


def timing_agreement_checks(metrics: Sequence[Metric]) -> list[Check]:
    """Perf counters vs wall clock: the same decode window timed twice must agree. The end-to-end wall speed
    also pays for sampling and streaming, which llama.cpp's decode counter (like llama-bench) leaves out; that
    cost is reported per token, not hidden: on a 262k-token vocabulary and a fast GPU it is large."""
    perf_ms = find(metrics, MetricName.DECODE_MS_PER_TOKEN)
    wall_ms = find(metrics, MetricName.DECODE_MS_PER_TOKEN_WALL)
    if perf_ms is None or wall_ms is None or not perf_ms.value or not wall_ms.value:
        return []
    ratio = perf_ms.value / wall_ms.value
    sample, other = find(metrics, MetricName.SAMPLE_MS_PER_TOKEN), find(metrics, MetricName.OTHER_MS_PER_TOKEN)
    ev = {
        "perf_decode_ms": perf_ms.value,
        "wall_decode_ms": wall_ms.value,
        "ratio": ratio,
        "tolerance": PERF_WALL_TOLERANCE,
        "sample_ms": sample.value if sample else None,
        "other_ms": other.value if other else None,
    }
    split = (
        f"; per token also sampling {_v(sample, 2)} ms, other {_v(other, 2)} ms"
        if sample is not None and other is not None
        else ""
    )
    agree = abs(1 - ratio) <= PERF_WALL_TOLERANCE
    summary = (
        f"decode {wall_ms.value:.2f} ms/token by wall clock vs {perf_ms.value:.2f} by llama.cpp "
        f"({'within' if agree else 'outside'} ±{PERF_WALL_TOLERANCE:.0%}){split}"
    )
    title = "Perf counters vs wall clock"
    if agree:
        return [passed("infer.timing_agreement", "infer", title, summary, **ev)]
    fix = "The two clocks disagree on the same decode window (busy CPU or a throttling GPU?); rerun on an idle machine."
    return [warned("infer.timing_agreement", "infer", title, summary, fix, **ev)]


def roofline_metrics(
    info: GgufInfo,
    result: InferenceResult,
    gen: Metric | None,
    on_gpu: bool = False,
    peak: float | None = None,
    probed: float | None = None,
) -> list[Metric]:
    """Achieved bandwidth = tokens/s × bytes read per token (layout.decode_reads); on a GPU
    also its share of the peak (`peak` None: NVML could not tell, the share is n/a) and of what detect's
    timed copies reached (`probed` None: not probed in this run, e.g. `infer` or --skip-torch)."""
    if gen is None or not gen.value:
        return []
    runs = result.runs
    avg_ctx = (runs[0].prompt_tokens + runs[0].generated_tokens / 2) if runs else 0
    per_token = decode_reads(info, avg_ctx)
    achieved = gen.value * per_token
    out = [
        Metric(
            MetricName.BYTES_PER_TOKEN,
            per_token,
            "bytes",
            "GGUF tensor sizes (input lookup tables excluded unless tied as the output, routed experts at "
            "used/count) + f16 KV cache at mean context + any recurrent state",
            estimate=True,
        ),
        Metric(MetricName.BANDWIDTH_ACHIEVED, achieved, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
    ]
    if on_gpu:
        out += [
            Metric(
                MetricName.BANDWIDTH_PEAK,
                peak,
                "bytes/s",
                "NVML memory bus width × max memory clock × 2",
                estimate=True,
            ),
            Metric(
                MetricName.BANDWIDTH_PCT_OF_PEAK,
                achieved / peak * 100 if peak else None,
                "%",
                "bandwidth_achieved / bandwidth_peak",
                estimate=True,
            ),
            Metric(
                MetricName.BANDWIDTH_PROBED,
                probed,
                "bytes/s",
                "detect's timed device-to-device copies (torch.bandwidth)",
            ),
            Metric(
                MetricName.BANDWIDTH_PCT_OF_PROBED,
                achieved / probed * 100 if probed else None,
                "%",
                "bandwidth_achieved / bandwidth_probed",
                estimate=True,
            ),
        ]
    return out


# -- thresholds ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdRule:
    option: str  # the Thresholds field, and (with dashes) the CLI option
    metric: MetricName
    unit: str
    op: Literal["ge", "le"]
    what: str


SPEED_RULES = (
    ThresholdRule("min_gen_tps", MetricName.GEN_TPS, "tok/s", "ge", "generation speed"),
    ThresholdRule("min_prompt_tps", MetricName.PROMPT_TPS, "tok/s", "ge", "prompt speed"),
    ThresholdRule("max_ttft_ms", MetricName.TTFT_WARM_MS, "ms", "le", "warm time to first token"),
)
SPEEDUP_RULES = (ThresholdRule("min_speedup", MetricName.SPEEDUP_VS_CPU, "×", "ge", "speedup over CPU"),)


def _shown(value: float, limit: float) -> tuple[str, int]:
    """`value` with as few decimals as keep it from reading as `limit` (49.96 against 50 is "49.96", not "50.0",
    which would say the limit was met), and that count of decimals, for the gap beside it."""
    for decimals in range(1, 7):
        text = f"{value:.{decimals}f}"
        if float(text) != limit or value == limit:
            return text, decimals
    return f"{value:.10g}", 10


def threshold_checks(
    thresholds: Thresholds,
    metrics: Sequence[Metric],
    rules: Sequence[ThresholdRule],
    unmeasured_because: str | None = None,
) -> list[Check]:
    """One check per threshold set in `thresholds`: met, missed, or not measured.

    `unmeasured_because`: a failure already reported (the CPU comparison run died) is why nothing was measured;
    the threshold says so and fails as that failure does (1), not as a missed threshold (6)."""
    out: list[Check] = []
    for rule in rules:
        limit: float | None = getattr(thresholds, rule.option)
        if limit is None:
            continue
        option = "--" + rule.option.replace("_", "-")
        cid, title = f"threshold.{rule.option}", f"Threshold {option}"
        m = find(metrics, rule.metric)
        if m is None or m.value is None:
            out.append(
                failed(
                    cid,
                    "threshold",
                    title,
                    f"{rule.what} was not measured"
                    + (f" ({unmeasured_because})" if unmeasured_because else "")
                    + f", so {option} {limit:.10g} cannot be met",
                    NOT_MEASURED_FIX.get(rule.option, "Run the stage that measures it."),
                    ExitCode.CHECK_FAILED if unmeasured_because else ExitCode.BELOW_THRESHOLD,
                )
            )
            continue
        ok = m.value >= limit if rule.op == "ge" else m.value <= limit
        gap = abs(m.value - limit)
        pct = gap / limit * 100 if limit else 0
        ev = {"measured": m.value, "limit": limit, "unit": rule.unit}
        unit = rule.unit
        if ok:
            out.append(
                passed(cid, "threshold", title, f"{rule.what} {m.value:.1f} {unit} meets {limit:.10g} {unit}", **ev)
            )
            continue
        word = "short by" if rule.op == "ge" else "over by"
        value, decimals = _shown(m.value, limit)
        share = f"{pct:.0f}%" if pct >= 1 else f"{pct:.2g}%"
        out.append(
            failed(
                cid,
                "threshold",
                title,
                f"{rule.what} {value} {unit} misses {limit:.10g} {unit} ({word} {gap:.{decimals}f} {unit}, {share})",
                "Check the offload verdict and GPU utilisation; a partial offload or a busy GPU slows generation.",
                ExitCode.BELOW_THRESHOLD,
                **ev,
            )
        )
    return out


def speed_threshold_checks(thresholds: Thresholds, metrics: Sequence[Metric]) -> list[Check]:
    return threshold_checks(thresholds, metrics, SPEED_RULES)


def speedup_threshold_checks(thresholds: Thresholds, metrics: Sequence[Metric]) -> list[Check]:
    return threshold_checks(thresholds, metrics, SPEEDUP_RULES)


# -- GPU vs CPU ---------------------------------------------------------------------------------------------------
def token_agreement(
    gpu_ids: tuple[int, ...], cpu_ids: tuple[int, ...], gpu_temperature: float
) -> tuple[bool | None, int | None, str]:
    """(identical, first differing token, summary) for the GPU run against the greedy CPU run.

    Only a greedy GPU run can be compared token for token: a sampled one differs by design."""
    if gpu_temperature > 0:
        return (
            None,
            None,
            (
                f"outputs not compared token for token (the GPU run sampled at --temperature {gpu_temperature:g}; "
                "the CPU run is greedy)"
            ),
        )
    if gpu_ids == cpu_ids:
        return True, None, f"outputs identical token for token ({len(gpu_ids)} tokens)"
    diverge = next(
        (i for i, (a, b) in enumerate(zip(gpu_ids, cpu_ids, strict=False)) if a != b),
        min(len(gpu_ids), len(cpu_ids)),
    )
    return False, diverge, f"outputs diverge at token {diverge} (normal: GPU and CPU kernels round differently)"


COMPARE_ID, COMPARE_TITLE = "infer.compare_cpu", "GPU vs CPU"


def compare_cpu_verdict(gpu: InferenceResult, out: WorkerOutcome, thresholds: Thresholds) -> StageVerdict:
    """The CPU run of the same greedy prompt (its worker's outcome) against the GPU run: speedup, agreement,
    and the --min-speedup threshold. An interrupt or timeout of the CPU run stops the run with 130/143/124."""
    if out.interrupted is not None:
        return interrupted("infer", out.interrupted.signum, during="the CPU comparison run", worker=True)
    if out.timeout is not None:
        check = failed(
            COMPARE_ID,
            "infer",
            COMPARE_TITLE,
            f"the CPU comparison run did not finish within {out.timeout.timeout_s:g} s; its worker was killed",
            TIMEOUT_FIX,
            ExitCode.TIMEOUT,
            log_tail=list(out.log_tail[-15:]),
        )
        return halt("infer", check)
    cpu = out.inferred
    if cpu is None:
        if out.error is not None:
            reason, fix = out.error.message, out.error.fix
        elif out.crash is not None:
            c = out.crash
            reason = "its worker died " + (f"by {c.signal}" if c.signal else f"with status {c.returncode}")
            fix = c.hint
        else:
            reason, fix = "its worker ended without a result", None
        check = failed(
            COMPARE_ID,
            "infer",
            COMPARE_TITLE,
            f"the CPU comparison run failed: {reason}",
            fix,
            log_tail=list(out.log_tail[-15:]),
        )
        unmeasured = threshold_checks(thresholds, (), SPEEDUP_RULES, "the CPU comparison run failed")
        return StageVerdict("infer", (check, *unmeasured))
    cpu_tps = mean_of([x.gen_tps_perf for x in cpu.runs])
    gen = find(gpu.metrics(), MetricName.GEN_TPS)
    gpu_tps = gen.value if gen is not None else None
    speedup = gpu_tps / cpu_tps if gpu_tps and cpu_tps else None
    metrics = (
        Metric(
            MetricName.CPU_GEN_TPS, cpu_tps, "tokens/s", "llama_perf_context on a 0-GPU-layer run of the same prompt"
        ),
        Metric(MetricName.SPEEDUP_VS_CPU, speedup, "×", "gen_tps / cpu_gen_tps"),
    )
    temperature = gpu.options.temperature
    same, diverge, agree = token_agreement(gpu.first.token_ids, cpu.first.token_ids, temperature)
    section = {
        "cpu_gen_tps": cpu_tps,
        "speedup": speedup,
        "tokens_identical": same,
        "divergence_token": diverge,
        "cpu_text": cpu.text,
        "greedy": temperature == 0,
    }
    summary = f"GPU {_v(gpu_tps)} vs CPU {_v(cpu_tps)} tok/s = {_v(speedup)}× faster; {agree}"
    check = passed(COMPARE_ID, "infer", COMPARE_TITLE, summary, **section)
    return StageVerdict(
        "infer", (check, *speedup_threshold_checks(thresholds, metrics)), metrics, Sections(compare_cpu=section)
    )


# -- the worker's load (and inference) ----------------------------------------------------------------------------
def worker_verdicts(
    out: WorkerOutcome,
    info: GgufInfo,
    thresholds: Thresholds,
    *,
    infer_requested: bool,
    vram_before: int | None = None,
    vram_after: int | None = None,
    gpu_name: str | None = None,
    telemetry: TelemetrySummary | None = None,
    peak_bandwidth: float | None = None,
    on_gpu: bool = False,
    gpu: GpuInfo | None = None,
    probed_bandwidth: float | None = None,
) -> list[StageVerdict]:
    """The load stage's verdict, then (when asked for and the load passed) the inference stage's.

    An option value only the model could refuse (ErrorKind.USAGE from the inference) raises UsageError:
    exit 2, like every other bad option."""
    stopped = worker_stopped(out)
    if out.loaded is None:
        if stopped is not None:
            return [stopped]
        if out.error is not None:
            return [halt("load", worker_error_check("load.model", "load", "Model load", out.error, out.log_tail))]
        return [halt("load", failed("load.model", "load", "Model load", "the worker returned no result", None))]
    load = load_verdict(
        out.loaded, info.block_count, vram_before, vram_after, gpu_name, thresholds.require_full_offload
    )
    if not load.proceed:
        return [load]
    if stopped is not None:
        return [load, stopped]
    if not infer_requested:
        return [load]
    if out.error is not None:
        if out.error.kind == ErrorKind.USAGE:
            raise UsageError(out.error.message, fix=out.error.fix)
        check = worker_error_check("infer.generate", "infer", "Inference", out.error, out.log_tail)
        return [load, halt("infer", check, announce=False)]
    if out.inferred is None:
        check = failed("infer.generate", "infer", "Inference", "the worker returned no result", None)
        return [load, halt("infer", check, announce=False)]
    offload = next((c for c in load.checks if c.id == "load.offload"), None)
    judged = (telemetry, peak_bandwidth, on_gpu, gpu, probed_bandwidth, offload)
    return [load, inference_verdict(out.inferred, info, thresholds, *judged)]


def probed_bandwidth(verdicts: Iterable[StageVerdict], nvml_index: int) -> float | None:
    """What detect's timed copies measured on this GPU (NVML index) in this run, if it ran them."""
    for verdict in verdicts:
        for c in verdict.checks:
            if c.id.startswith("torch.bandwidth.") and c.evidence.get("nvml_index") == nvml_index:
                value = c.evidence.get("mem_bw_bytes_s")
                return float(value) if value else None
    return None
