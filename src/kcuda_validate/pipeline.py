"""The stages behind load, infer and validate-all: detect, select GPU, get model, inspect, fit, load, infer,
compare with the CPU.

Each stage runs a service (detect, NVML, the Hub, the GGUF reader, the worker child) and hands its frozen
result to a judge (verdicts.py, gpu_choice.py) that returns a `StageVerdict`; `record` then builds the
report once from the verdicts. Model work happens in the worker child (see isolation.py); NVML telemetry
and VRAM readings stay here. Progress and the one `Error:` line reach the terminal through `ProgressUI`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kcuda_validate import defaults
from kcuda_validate.checks import Check, Metric, Status, passed
from kcuda_validate.errors import ExitCode, KcudaError, UsageError
from kcuda_validate.gpu.nvml import read_gpus, usable_gpus, worker_pin
from kcuda_validate.gpu_choice import GpuContext, select_gpu
from kcuda_validate.isolation import Interrupted, Worker, WorkerOutcome
from kcuda_validate.llm.loader import LoadOptions, LoadResult
from kcuda_validate.llm.measures import InferOptions
from kcuda_validate.model.fit import padded_ctx, synthetic_prompt_overflow
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.gguf_info import GgufInfo
from kcuda_validate.model.layout import recurrent_layers, routed_experts
from kcuda_validate.model.source import ModelSpec, ResolvedModel, resolve_model
from kcuda_validate.report import Report, Sections
from kcuda_validate.verdicts import (
    PERF_WALL_TOLERANCE,
    StageVerdict,
    Thresholds,
    compare_cpu_verdict,
    error_check,
    halt,
    interrupted,
    probed_bandwidth,
    speedup_threshold_checks,
    token_agreement,
    worker_verdicts,
)
from kcuda_validate.worker_protocol import WorkerRequest

if TYPE_CHECKING:
    from kcuda_validate.detect import DetectOptions
    from kcuda_validate.model.hub_transfer import DownloadProgress
    from kcuda_validate.telemetry import TelemetrySampler, TelemetrySummary

__all__ = [
    "PERF_WALL_TOLERANCE",
    "ModelRun",
    "ModelValidation",
    "ProgressUI",
    "Thresholds",
    "early_pin",
    "record",
    "run_pipeline",
    "token_agreement",
    "visible_gpu_indices",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
N_CTX_MIN = 64
N_CTX_MAX = 1 << 20
# The hint after an interrupt, by what was under way: only a Hub download can leave something to resume, and
# only once a byte of it is on disk (an interrupt while the Hub has not answered yet keeps nothing).
INTERRUPT_HINTS = {
    "hub": "A partial download is kept: run the same command again to resume it.",
    "synthetic": "Nothing partial is kept: run the same command again to generate the synthetic model.",
}
NOTHING_DOWNLOADED = "Nothing partial is kept: run the same command again to download the model."
AGAIN = "Run the command again."


def interrupt_hint(activity: str | None, partial_kept: bool = False) -> str:
    """What to do next after an interrupt during `activity`; `partial_kept`: a Hub download's partial file is on
    disk for the next run to resume (hub_partial_kept)."""
    if activity == "hub" and not partial_kept:
        return NOTHING_DOWNLOADED
    return INTERRUPT_HINTS.get(activity or "", AGAIN)


def hub_partial_kept(spec: ModelSpec) -> bool:
    """Whether the Hub cache now holds a resumable partial of the model `spec` names (any part of a split one)."""
    from kcuda_validate.model.hub import cache_dir, split_parts
    from kcuda_validate.model.hub_transfer import partial_bytes

    try:
        repo, filename, _ = spec.hub_file()
        return partial_bytes(cache_dir(), repo, split_parts(filename) or [filename]) > 0
    except (KcudaError, OSError):
        return False


class DownloadBarUI(Protocol):
    """A model download's progress as the CLI draws it (cli._output.DownloadBar is one)."""

    def update(self, p: DownloadProgress) -> None: ...

    def close(self) -> None: ...


class ProgressUI(Protocol):
    """What the stages tell the person running them (cli._output.Output is one)."""

    @property
    def human(self) -> bool: ...

    def progress(self, message: str) -> None: ...

    def end_progress(self) -> None: ...

    def download_bar(self) -> DownloadBarUI: ...

    def stream(self, text: str) -> None: ...

    def end_stream(self) -> None: ...

    def error(self, message: str, fix: str | None = None, show_log: bool = True) -> None: ...


@dataclass(frozen=True)
class ModelRun:
    spec: ModelSpec
    load: LoadOptions
    infer: InferOptions | None = None
    device: int | None = None
    timeout_s: float | None = defaults.STAGE_TIMEOUT_S
    compare_cpu: bool = False
    telemetry: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)
    all_devices: bool = False


def record(report: Report, verdicts: Iterable[StageVerdict]) -> None:
    """The one place the stages write the report: every verdict's checks, metrics, sections and facts in
    stage order; stopped_at is the first stage that halted, and an interrupt's exit code beats the checks."""
    for v in verdicts:
        report.add(*v.checks)
        report.add_metrics(list(v.metrics))
        report.sections.update(v.sections)
        if v.gpu is not None:
            report.gpu = v.gpu
        if v.driver is not None:
            report.driver = v.driver
        if v.torch_cuda is not None:
            report.torch_cuda = v.torch_cuda
        if v.device_mode is not None:
            report.device_mode = v.device_mode
        if v.exit_override is not None:
            report.interrupted = True
            report.exit_override = v.exit_override
        if v.halted and report.stopped_at is None:
            report.stopped_at = v.stage


def source_detail(resolved: ResolvedModel) -> dict[str, Any]:
    """Where the model came from, for the report (model.source is moving from a dict to a frozen detail
    record with its own to_json(); both shapes are read until that lands)."""
    detail: Any = resolved.detail
    return dict(detail.to_json() if hasattr(detail, "to_json") else detail)


def check_ctx(info: GgufInfo, n_ctx: int) -> None:
    """Refuse absurd --n-ctx at once, before llama.cpp spends seconds and gigabytes failing."""
    limit = min(info.context_length or N_CTX_MAX, N_CTX_MAX)
    if n_ctx < N_CTX_MIN or n_ctx > limit:
        raise UsageError(
            f"--n-ctx {n_ctx}: out of range for {info.path.name} (allowed {N_CTX_MIN}..{limit}, "
            f"the model's trained context)",
            fix=f"Pass --n-ctx between {N_CTX_MIN} and {limit}.",
        )


@dataclass
class TelemetryWindow:
    """The NVML sampler around the measured inference: started when the worker is told to go, stopped at
    its result (or when it dies mid-inference). No GPU (or --no-telemetry): nothing is sampled."""

    gpu: GpuContext | None
    sampler: TelemetrySampler | None = None
    summary: TelemetrySummary | None = None

    def start(self) -> None:
        if self.gpu is not None:
            from kcuda_validate.telemetry import TelemetrySampler

            self.sampler = TelemetrySampler(self.gpu.nvml, self.gpu.info.index).start()

    def stop(self) -> None:
        if self.sampler is not None:
            self.summary = self.sampler.stop()
            self.sampler = None


class ModelValidation:
    """The model stages for one GPU (or the CPU): each runs its service, judges the result, and appends the
    verdict to `verdicts`. `activity` is the model's origin while it is fetched (`hub`, `synthetic`,
    `local`), so an interrupt then gets the hint that fits it."""

    def __init__(self, ui: ProgressUI, verdicts: list[StageVerdict], earlier: Sequence[StageVerdict] = ()) -> None:
        self.ui = ui
        self.verdicts = verdicts
        self.earlier = earlier  # the run's verdicts before this GPU's stages (detect's, for an --all-devices sub-run)
        self.gpu: GpuContext | None = None
        self.activity: str | None = None

    def keep(self, verdict: StageVerdict) -> bool:
        """Keep a stage's verdict (and print its Error: line); True when the next stage may run."""
        self.verdicts.append(verdict)
        if verdict.error_line is not None:
            # An interrupt's line (exit_override: its 130/143) names no log file: the message is all it holds.
            self.ui.error(*verdict.error_line, show_log=verdict.exit_override is None)
        return verdict.proceed

    def run(self, run: ModelRun, worker: Worker) -> None:
        try:
            verdict, self.gpu = select_gpu(run.device, run.load.cpu_mode)
            if not self.keep(verdict):
                return
            self.activity = run.spec.origin  # an interrupt now is one of the fetch (run_pipeline reads it)
            resolved = self.resolve(run.spec)
            self.activity = None
            if resolved is None:
                return
            info = self.inspect(resolved)
            if info is None:
                return
            check_ctx(info, run.load.n_ctx)
            if run.infer is not None and run.infer.prompt_tokens:
                overflow = synthetic_prompt_overflow(
                    run.infer.prompt_tokens,
                    run.infer.max_tokens,
                    run.load.n_ctx,
                    padded_ctx(run.load.n_ctx),
                    info.context_length,
                )
                if overflow is not None:
                    raise overflow
            if not self.keep(self.fit(info, run.load)):
                return
            outcome = self.run_model(run, resolved, info, worker)
            if outcome is None or outcome.inferred is None:
                return
            if run.compare_cpu:
                self.keep(self.compare_cpu(run, resolved, outcome))
            elif run.thresholds.min_speedup is not None:
                self.keep(StageVerdict("threshold", tuple(speedup_threshold_checks(run.thresholds, ()))))
        finally:
            if self.gpu is not None:
                self.gpu.close()

    def resolve(self, spec: ModelSpec) -> ResolvedModel | None:
        self.ui.end_progress()  # a download draws its own bar; a spinner would fight it
        bar = self.ui.download_bar()
        try:
            resolved = resolve_model(spec, on_progress=bar.update)
        except UsageError:
            raise
        except KcudaError as exc:
            self.keep(halt("model", error_check(exc, "model.source", "model", "Model source")))
            return None
        finally:
            bar.close()
        detail = source_detail(resolved)
        section = {"origin": resolved.origin, **detail, "resolve_s": resolved.resolve_s}
        label = resolved.describe()
        if resolved.origin == "synthetic":
            label += " — synthetic weights: text is meaningless, speeds are real"
        check = passed("model.source", "model", "Model source", label, origin=resolved.origin, **detail)
        self.keep(StageVerdict("model", (check,), sections=Sections(model_source=section)))
        return resolved

    def inspect(self, resolved: ResolvedModel) -> GgufInfo | None:
        self.ui.progress("Reading the GGUF header…")
        try:
            info = read_gguf(resolved.path)
        except KcudaError as exc:
            self.keep(halt("model", error_check(exc, "model.gguf", "model", "GGUF header")))
            return None
        s = info.summary()
        params = info.parameter_count
        size = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.0f} M"
        text = (
            f"{info.architecture}, {size} params, {info.quantization}, ctx {info.context_length or 'n/a'}, "
            f"{info.file_size / MIB:.0f} MiB"
        )
        if info.split_count > 1:
            text += f" in {info.split_count} parts"
        text += _layout_text(info)
        if info.is_synthetic:
            text += " (synthetic)"
        self.keep(
            StageVerdict(
                "model", (passed("model.gguf", "model", "GGUF header", text, **s),), sections=Sections(model=s)
            )
        )
        return info

    def fit(self, info: GgufInfo, load: LoadOptions) -> StageVerdict:
        from kcuda_validate.model.fit import estimate_fit

        free = self.gpu.info.memory_free if self.gpu is not None else None
        check = estimate_fit(info, load, free, cpu_mode=load.cpu_mode)
        return StageVerdict(
            "model", (check,), sections=Sections(fit=dict(check.evidence)), halted=check.status == Status.FAIL
        )

    def request(self, run: ModelRun, resolved: ResolvedModel) -> WorkerRequest:
        return WorkerRequest(
            model_path=resolved.path,
            load=run.load,
            infer=run.infer,
            cuda_visible_devices=self.gpu.info.uuid if self.gpu is not None and self.gpu.info.uuid else None,
        )

    def run_model(self, run: ModelRun, resolved: ResolvedModel, info: GgufInfo, worker: Worker) -> WorkerOutcome | None:
        """Load (and infer) in the child, then judge it; the outcome when every check passed, else None."""
        gpu = self.gpu if not run.load.cpu_mode else None
        before = gpu.vram_used() if gpu is not None else None
        after: list[int | None] = [None]
        window = TelemetryWindow(gpu if run.telemetry else None)

        def on_loaded(loaded: LoadResult) -> None:
            after[0] = gpu.vram_used() if gpu is not None else None
            self.ui.progress("Generating…")

        self.ui.progress("Loading the model in llama.cpp…")
        outcome = worker.run(
            self.request(run, resolved),
            run.timeout_s,
            on_text=self.ui.stream,
            on_loaded=on_loaded,
            before_infer=window.start,
            after_infer=window.stop,
        )
        window.stop()  # the child died mid-inference
        self.ui.end_stream()
        verdicts = worker_verdicts(
            outcome,
            info,
            run.thresholds,
            infer_requested=run.infer is not None,
            vram_before=before,
            vram_after=after[0],
            gpu_name=self.gpu.info.name if self.gpu is not None else None,
            telemetry=window.summary,
            peak_bandwidth=self.gpu.info.peak_bandwidth_bytes_s if self.gpu is not None else None,
            on_gpu=self.gpu is not None,
            gpu=self.gpu.info if self.gpu is not None else None,
            probed_bandwidth=probed_bandwidth([*self.earlier, *self.verdicts], self.gpu.info.index)
            if self.gpu is not None
            else None,
        )
        proceed = [self.keep(v) for v in verdicts]
        return outcome if all(proceed) else None

    def compare_cpu(self, run: ModelRun, resolved: ResolvedModel, gpu_run: WorkerOutcome) -> StageVerdict:
        """Same greedy prompt with zero GPU layers: speedup and token-for-token agreement."""
        assert run.infer is not None and gpu_run.inferred is not None
        self.ui.progress("Running the same prompt on the CPU for comparison…")
        cpu_infer = dataclasses.replace(run.infer, temperature=0.0, repeat=max(1, min(run.infer.repeat, 2)))
        cpu_load = dataclasses.replace(run.load, cpu_mode=True, gpu_layers=0)
        cpu_run = dataclasses.replace(run, load=cpu_load, infer=cpu_infer)
        request = dataclasses.replace(self.request(cpu_run, resolved), cuda_visible_devices="")
        out = Worker(pin="").run(request, run.timeout_s)
        return compare_cpu_verdict(gpu_run.inferred, out, run.thresholds)


def detect_verdict(ui: ProgressUI, options: DetectOptions) -> StageVerdict:
    from kcuda_validate.detect import run_detect

    ui.progress("Checking the GPU stack…")
    det = run_detect(options)
    d = det.driver
    driver = None if d is None else {"driver_version": d.driver_version, "cuda_version": d.cuda_version}
    return StageVerdict(
        "detect",
        det.checks,
        sections=Sections(detect=det.to_json()),
        halted=det.exit_code != ExitCode.OK,
        driver=driver,
        torch_cuda=det.torch.cuda_build if det.torch is not None else None,
    )


def run_pipeline(
    report: Report,
    ui: ProgressUI,
    run: ModelRun,
    detect_options: DetectOptions | None = None,
    worker: Worker | None = None,
) -> Report:
    """load / infer / validate-all: each stage runs only if the previous one passed.

    `worker`: a worker the command started first thing (pinned to the GPU it will use), so its llama.cpp
    import overlaps with detection and model resolution.
    """
    worker = worker or Worker(pin=early_pin(run)).start()
    verdicts: list[StageVerdict] = []
    stages = ModelValidation(ui, verdicts)
    stage = "detect" if detect_options is not None else "model"
    try:
        if detect_options is not None and not stages.keep(detect_verdict(ui, detect_options)):
            return report
        stage = "model"
        if run.all_devices and not run.load.cpu_mode:
            worker.kill()
            all_devices(report, run, stages)
        else:
            stages.run(run, worker)
    except (KeyboardInterrupt, Interrupted) as exc:
        # Outside the worker stages (detection, download): still a report, marked interrupted.
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        kept = stages.activity == "hub" and hub_partial_kept(run.spec)
        stages.keep(interrupted(stage, signum, fix=interrupt_hint(stages.activity, kept)))
    finally:
        worker.kill()
        record(report, verdicts)
        report.finish()
    return report


def early_pin(run: ModelRun) -> str | None:
    """The CUDA_VISIBLE_DEVICES the worker will get (see gpu.nvml.worker_pin)."""
    return worker_pin(run.load.cpu_mode, run.device)


def visible_gpu_indices() -> list[int] | None:
    """NVML indices of the GPUs CUDA can see; None when NVML is unavailable."""
    gpus = read_gpus()
    if gpus is None:
        return None
    return [g.index for g in usable_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))]


def all_devices(report: Report, run: ModelRun, stages: ModelValidation) -> None:
    """Validate each visible GPU in turn; checks and metrics are prefixed gpuN., the verdict is the worst."""
    indices = visible_gpu_indices()
    if not indices:
        stages.run(dataclasses.replace(run, all_devices=False), Worker())
        return
    devices: dict[str, dict[str, Any]] = {}
    checks: list[Check] = []
    metrics: list[Metric] = []
    gpu: dict[str, Any] | None = None
    driver: dict[str, Any] | None = None
    exit_override: ExitCode | None = None
    for idx in indices:
        sub = Report(report.command, report.argv)
        sub.device_mode = report.device_mode
        one = dataclasses.replace(run, device=idx, all_devices=False)
        sub_stages = ModelValidation(stages.ui, [], earlier=stages.verdicts)
        try:
            sub_stages.run(one, Worker(pin=early_pin(one)).start())
        except (KeyboardInterrupt, Interrupted):
            stages.activity = sub_stages.activity  # the hint follows what this GPU's run was doing
            raise
        record(sub, sub_stages.verdicts)
        sub.finish()
        checks += [dataclasses.replace(c, id=f"gpu{idx}.{c.id}", title=f"GPU {idx}: {c.title}") for c in sub.checks]
        metrics += [dataclasses.replace(m, name=f"gpu{idx}.{m.name}") for m in sub.metrics]
        devices[str(idx)] = {
            "gpu": sub.gpu,
            "exit_code": int(sub.exit_code),
            "stopped_at": sub.stopped_at,
            "sections": sub.sections,
        }
        gpu, driver = gpu or sub.gpu, driver or sub.driver or None
        if sub.interrupted:
            exit_override = sub.exit_override
            break
    failing = [(k, v) for k, v in devices.items() if v["exit_code"] != 0]
    stopped = f"gpu{failing[0][0]}.{failing[0][1]['stopped_at'] or 'checks'}" if failing else "gpu"
    stages.keep(
        StageVerdict(
            stopped,
            tuple(checks),
            tuple(metrics),
            Sections(devices=devices),
            halted=bool(failing),
            exit_override=exit_override,
            gpu=gpu,
            driver=driver,
        )
    )


def _layout_text(info: GgufInfo) -> str:
    """What sets a model's memory apart from a dense transformer's, for the header line: the experts a token uses,
    and the layers that keep a recurrent state instead of a KV cache."""
    text = ""
    if experts := routed_experts(info):
        text += f", {experts[0]} of {experts[1]} experts per token"
    if recurrent := recurrent_layers(info):
        text += f", {len(recurrent)} of {info.block_count} layers recurrent"
    return text
