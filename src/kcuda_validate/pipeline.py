"""The stages behind load, infer and validate-all: select GPU, get model, inspect, fit, load, infer, judge.

Each stage adds checks (and metrics) to the report and says whether the next
stage may run; the commands stay thin. Model work happens in the worker
child (see isolation.py); NVML telemetry and VRAM readings stay here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from kcuda_validate.checks import Check, Metric, Status, failed, mean_of, passed, skipped, warned
from kcuda_validate.errors import ExitCode, KcudaError, UsageError
from kcuda_validate.gpu.nvml import (
    GpuInfo,
    Nvml,
    NvmlInitError,
    choose_gpu,
    parse_visible_devices,
    read_gpus,
    usable_gpus,
    worker_pin,
)
from kcuda_validate.isolation import Interrupted, Worker, WorkerOutcome
from kcuda_validate.llm.inference import InferenceResult, InferOptions
from kcuda_validate.llm.loader import LoadOptions, LoadResult, judge_offload
from kcuda_validate.model.gguf_file import GgufInfo, read_gguf
from kcuda_validate.model.source import ModelSpec, ResolvedModel, resolve_model
from kcuda_validate.report import Report
from kcuda_validate.worker_protocol import ErrorKind, WorkerError, WorkerRequest

log = logging.getLogger(__name__)

MIB = 1024 * 1024
N_CTX_MIN = 64
N_CTX_MAX = 1 << 20
# Perf counters time only llama_decode; the wall clock adds sampling and detokenising per token.
PERF_WALL_TOLERANCE = 0.15
# Why a threshold's figure can be missing, and what brings it back.
NOT_MEASURED_FIX = {
    "min_speedup": "Add --compare-cpu: the speedup is measured against a CPU run of the same prompt.",
    "max_ttft_ms": "Keep the warm-up, or pass --repeat 2 or more: warm TTFT excludes the first (cold) run.",
    "min_gen_tps": "Raise --max-tokens: generation speed needs at least two generated tokens.",
}


@dataclass(frozen=True)
class Thresholds:
    min_gen_tps: float | None = None
    min_prompt_tps: float | None = None
    max_ttft_ms: float | None = None
    min_speedup: float | None = None
    require_full_offload: bool = True


@dataclass(frozen=True)
class ModelRun:
    spec: ModelSpec
    load: LoadOptions
    infer: InferOptions | None = None
    device: int | None = None
    timeout_s: float | None = 600.0
    compare_cpu: bool = False
    telemetry: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)
    all_devices: bool = False


@dataclass
class GpuContext:
    """The GPU this run uses, with an NVML session for VRAM readings and telemetry."""

    nvml: Nvml
    info: GpuInfo
    driver: dict[str, Any]

    def vram_used(self) -> int | None:
        return self.nvml.memory_used(self.info.index)

    def close(self) -> None:
        self.nvml.close()


def other_gpu_processes(nvml: Nvml, index: int) -> Check:
    """Other work on the GPU shares its bandwidth, VRAM and power: the figures measured then include it.

    Checked once, before the model loads (this run holds no CUDA context yet, so every process listed is
    another's). WSL2's driver lists no processes at all, so there an empty list proves nothing; inside a
    container the driver may list only that container's processes, hence "lists", not "there are"."""
    from kcuda_validate.gpu.platform import probe_platform

    title = "Other GPU processes"
    if probe_platform().is_wsl2:
        return skipped(
            "gpu.processes", "gpu", title, "WSL2's driver does not list GPU processes: make sure nothing else runs"
        )
    procs = nvml.compute_processes(index)
    if procs is None:
        return skipped("gpu.processes", "gpu", title, f"the driver cannot list the processes using GPU {index}")
    if not procs:
        return passed("gpu.processes", "gpu", title, f"the driver lists no other process on GPU {index}", processes=[])
    n = len(procs)
    return warned(
        "gpu.processes",
        "gpu",
        title,
        f"{n} other process{'es are' if n > 1 else ' is'} using GPU {index}: "
        + ", ".join(p.describe() for p in procs[:3])
        + (f" and {n - 3} more" if n > 3 else "")
        + "; the speed, VRAM and energy figures include their work",
        "Stop them for clean figures (`nvidia-smi` lists them), or accept the figures as those of a shared GPU.",
        processes=[p.to_json() for p in procs],
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


LOST_FIX = "Check `sudo dmesg | grep -i xid` (Xid 79); reboot, and check the GPU's power and seating or PCIe riser."
NO_HANDLE_FIX = (
    'Run `nvidia-smi` and `sudo dmesg | grep -i xid`; "Unable to determine the device handle" usually needs a '
    "reboot. In a container, check that /dev/nvidia* for this GPU is mounted."
)
CPU_RUN_HINT = "Or pass --device cpu for a CPU-only run."


def no_usable_gpu(gpus: tuple[GpuInfo, ...], driver_version: str | None, device: int | None, cvd: str | None) -> Check:
    """The driver answers but no GPU can run the model: which GPUs it sees and why each one is out.

    Exit 3 when the driver sees none at all, 4 when it sees some that cannot be used (hidden by
    CUDA_VISIBLE_DEVICES, fallen off the bus, no NVML handle). Names only what the user set."""
    driver = f"the NVIDIA driver{f' {driver_version}' if driver_version else ''}"
    if not gpus:
        return failed(
            "gpu.select",
            "gpu",
            "GPU selection",
            f"no GPU: {driver} is loaded but sees no GPU",
            "Check that the GPU is seated and powered (`lspci | grep -i nvidia`), and that a container was "
            f"started with `--gpus all`. {CPU_RUN_HINT}",
            ExitCode.NO_GPU,
            driver_version=driver_version,
            gpus=[],
        )
    hidden = set(parse_visible_devices(cvd, gpus) or ()) if device is None else set()
    considered = [g for g in gpus if device is None or g.index == device]
    reasons, fixes = [], []
    for g in considered:
        label = f"GPU {g.index}" + (f" ({g.name})" if g.name else "")
        if g.lost:
            reasons.append(f"{label} has fallen off the bus (NVML: GPU is lost)")
            fixes.append(LOST_FIX)
        elif g.error is not None:
            reasons.append(f"{label}: {g.error}")
            fixes.append(NO_HANDLE_FIX)
        elif g.index in hidden:
            reasons.append(f"{label} is hidden by CUDA_VISIBLE_DEVICES={cvd!r}")
            fixes.append(
                "Unset CUDA_VISIBLE_DEVICES (`unset CUDA_VISIBLE_DEVICES`), or set it to an index or UUID "
                "that `nvidia-smi -L` lists."
            )
    fix = " ".join(dict.fromkeys(fixes)) + f" {CPU_RUN_HINT}"
    if device is not None:
        summary = f"--device {device}: " + "; ".join(reasons)
    else:
        summary = f"no usable GPU: {driver} sees {_count(len(gpus), 'GPU')}, and none can be used: " + "; ".join(
            reasons
        )
    return failed(
        "gpu.select",
        "gpu",
        "GPU selection",
        summary,
        fix,
        ExitCode.GPU_UNUSABLE,
        driver_version=driver_version,
        gpus=[g.to_json() | {"hidden": g.index in hidden} for g in gpus],
    )


def check_from_error(exc: KcudaError, id: str, stage: str, title: str) -> Check:
    return Check(id, stage, title, Status.FAIL, exc.message, {"error": type(exc).__name__}, exc.fix, exc.exit_code)


class Stages:
    def __init__(self, report: Report, ui: Any) -> None:
        self.report = report
        self.ui = ui
        self.gpu: GpuContext | None = None

    # -- GPU selection -----------------------------------------------------------------------------------
    def select_gpu(self, device: int | None, cpu_mode: bool) -> bool:
        if cpu_mode:
            self.report.device_mode = "cpu"
            self.report.add(skipped("gpu.select", "gpu", "GPU selection", "CPU run: no GPU used (--device cpu)"))
            return True
        try:
            nvml = Nvml.open()
        except NvmlInitError as exc:
            self.report.add(
                failed(
                    "gpu.select",
                    "gpu",
                    "GPU selection",
                    f"no usable NVIDIA GPU: NVML {exc.kind.replace('_', ' ')} ({exc.detail})",
                    "Run `kcuda-validate detect` for the diagnosis and fix, or `--device cpu` for a CPU-only run.",
                    ExitCode.GPU_UNUSABLE if exc.kind == "version_mismatch" else ExitCode.NO_GPU,
                )
            )
            self.ui.error(self.report.checks[-1].summary, self.report.checks[-1].fix)
            return False
        driver = nvml.driver()
        gpus = tuple(nvml.gpu(i) for i in range(driver.device_count))
        if device is not None and gpus and device not in {g.index for g in gpus}:
            nvml.close()
            raise UsageError(
                f"--device {device}: no such GPU (the driver sees {_count(len(gpus), 'GPU')}: "
                + ", ".join(str(g.index) for g in gpus)
                + ")",
                fix="Pick an index from `kcuda-validate detect`, or --device cpu.",
            )
        # --device N picks that NVML index whatever CUDA_VISIBLE_DEVICES says (the worker is pinned to its
        # UUID); without it, the first GPU CUDA can see and NVML can read.
        chosen = choose_gpu(gpus, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if chosen is None or chosen.lost or chosen.error is not None:
            nvml.close()
            check = no_usable_gpu(gpus, driver.driver_version, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
            self.report.driver = {"driver_version": driver.driver_version, "cuda_version": driver.cuda_version}
            self.report.add(check)
            self.ui.error(check.summary, check.fix)
            return False
        gpu = chosen
        self.gpu = GpuContext(
            nvml,
            gpu,
            {"driver_version": driver.driver_version, "cuda_version": driver.cuda_version},
        )
        self.report.driver = self.gpu.driver
        self.report.gpu = gpu.to_json()
        free = f"{gpu.memory_free / 1024**3:.1f} GiB free" if gpu.memory_free is not None else "VRAM n/a"
        self.report.add(
            passed(
                "gpu.select",
                "gpu",
                "GPU selection",
                f"GPU {gpu.index}: {gpu.name} (cc {gpu.compute_capability_str or 'n/a'}, {free})",
                index=gpu.index,
                uuid=gpu.uuid,
            )
        )
        self.report.add(other_gpu_processes(nvml, gpu.index))
        return True

    # -- model ---------------------------------------------------------------------------------------------
    def resolve(self, spec: ModelSpec) -> ResolvedModel | None:
        # The Hub download draws its own progress bar on stderr; a spinner would fight it.
        self.ui.end_progress()
        try:
            resolved = resolve_model(spec, progress=self.ui.human)
        except UsageError:
            raise
        except KcudaError as exc:
            self.report.add(check_from_error(exc, "model.source", "model", "Model source"))
            self.ui.error(exc.message, exc.fix)
            return None
        self.report.sections["model_source"] = {
            "origin": resolved.origin,
            **resolved.detail,
            "resolve_s": resolved.resolve_s,
        }
        label = resolved.describe()
        if resolved.origin == "synthetic":
            label += " — synthetic weights: text is meaningless, speeds are real"
        self.report.add(
            passed("model.source", "model", "Model source", label, origin=resolved.origin, **resolved.detail)
        )
        return resolved

    def inspect(self, resolved: ResolvedModel) -> GgufInfo | None:
        self.ui.progress("Reading the GGUF header…")
        try:
            info = read_gguf(resolved.path)
        except KcudaError as exc:
            self.report.add(check_from_error(exc, "model.gguf", "model", "GGUF header"))
            self.ui.error(exc.message, exc.fix)
            return None
        s = info.summary()
        self.report.sections["model"] = s
        params = info.parameter_count
        size = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.0f} M"
        text = (
            f"{info.architecture}, {size} params, {info.quantization}, ctx {info.context_length or 'n/a'}, "
            f"{info.file_size / MIB:.0f} MiB"
        )
        if info.is_synthetic:
            text += " (synthetic)"
        self.report.add(passed("model.gguf", "model", "GGUF header", text, **s))
        return info

    def check_ctx(self, info: GgufInfo, n_ctx: int) -> None:
        """Refuse absurd --n-ctx at once, before llama.cpp spends seconds and gigabytes failing."""
        limit = info.context_length or N_CTX_MAX
        if n_ctx < N_CTX_MIN or n_ctx > min(limit, N_CTX_MAX):
            raise UsageError(
                f"--n-ctx {n_ctx}: out of range for {info.path.name} (allowed {N_CTX_MIN}..{min(limit, N_CTX_MAX)}, "
                f"the model's trained context)",
                fix=f"Pass --n-ctx between {N_CTX_MIN} and {min(limit, N_CTX_MAX)}.",
            )

    def fit(self, info: GgufInfo, load: LoadOptions) -> bool:
        from kcuda_validate.model.fit import estimate_fit

        free = self.gpu.info.memory_free if self.gpu is not None else None
        check = estimate_fit(info, load, free, cpu_mode=load.cpu_mode)
        self.report.add(check)
        self.report.sections["fit"] = dict(check.evidence)
        return check.status != Status.FAIL

    # -- worker ----------------------------------------------------------------------------------------------
    def run_model(self, run: ModelRun, resolved: ResolvedModel, info: GgufInfo, worker: Worker | None = None) -> bool:
        """Load (and infer) in the child; add load/infer checks and metrics. False when a stage failed."""
        request = self._request(run, resolved)
        worker = worker or Worker()
        sampler_box: dict[str, Any] = {}
        before = self.gpu.vram_used() if self.gpu and not run.load.cpu_mode else None
        vram_after: dict[str, int | None] = {}

        def on_loaded(loaded: LoadResult) -> None:
            vram_after["v"] = self.gpu.vram_used() if self.gpu and not run.load.cpu_mode else None
            self.ui.progress("Generating…")

        def before_infer() -> None:
            if self.gpu is not None and not run.load.cpu_mode and run.telemetry:
                from kcuda_validate.telemetry import TelemetrySampler

                sampler_box["s"] = TelemetrySampler(self.gpu.nvml, self.gpu.info.index).start()

        def after_infer() -> None:
            if "s" in sampler_box:
                sampler_box["summary"] = sampler_box.pop("s").stop()

        self.ui.progress("Loading the model in llama.cpp…")
        outcome = worker.run(
            request,
            run.timeout_s,
            on_text=self.ui.stream,
            on_loaded=on_loaded,
            before_infer=before_infer,
            after_infer=after_infer,
        )
        if "s" in sampler_box:  # the child died mid-inference
            sampler_box["summary"] = sampler_box.pop("s").stop()
        self.ui.end_stream()
        return self._judge(run, info, outcome, before, vram_after.get("v"), sampler_box.get("summary"))

    def _request(self, run: ModelRun, resolved: ResolvedModel) -> WorkerRequest:
        return WorkerRequest(
            model_path=resolved.path,
            load=run.load,
            infer=run.infer,
            cuda_visible_devices=self.gpu.info.uuid if self.gpu is not None and self.gpu.info.uuid else None,
        )

    def _judge(
        self,
        run: ModelRun,
        info: GgufInfo,
        out: WorkerOutcome,
        before: int | None,
        after: int | None,
        telemetry: Any,
    ) -> bool:
        r = self.report
        if out.loaded is None and self._terminal(out):
            return False
        if out.error is not None and out.loaded is None:
            e = out.error
            r.add(self._error_check("load.model", "load", "Model load", e, out))
            self.ui.error(e.message, e.fix)
            r.stopped_at = "load"
            return False
        assert out.loaded is not None
        res = out.loaded
        evidence = res.evidence
        delta = after - before if after is not None and before is not None else None
        verdict = judge_offload(evidence, run.load, info.block_count, delta, self.gpu.info.name if self.gpu else None)
        r.sections["load"] = {
            "model_path": str(res.model_path),
            "n_ctx": res.n_ctx,
            "gpu_layers_requested": res.options.gpu_layers,
            "cpu_mode": res.options.cpu_mode,
            "load_s": res.load_s,
            "offload": verdict.to_json(),
            "evidence": evidence.to_json(),
            "vram_used_before_bytes": before,
            "vram_used_after_bytes": after,
        }
        r.add(
            passed(
                "load.model",
                "load",
                "Model load",
                f"loaded in {res.load_s:.2f} s (n_ctx {res.n_ctx}, "
                f"{'all' if run.load.gpu_layers < 0 else run.load.gpu_layers} GPU layers requested)"
                if not run.load.cpu_mode
                else f"loaded in {res.load_s:.2f} s (n_ctx {res.n_ctx}, CPU only)",
                load_s=res.load_s,
                n_ctx=res.n_ctx,
            )
        )
        r.add_metrics([Metric("load_time", res.load_s, "s", "wall clock around llama.cpp model+context load")])
        offload = verdict.check(evidence, run.load.cpu_mode, run.thresholds.require_full_offload, duration_s=res.load_s)
        r.add(offload)
        if verdict.vram_delta_bytes is not None:
            r.add_metrics(
                [Metric("vram_load_delta", verdict.vram_delta_bytes, "bytes", "NVML used memory after − before load")]
            )
        r.add_metrics(
            [Metric("gpu_buffers", verdict.gpu_buffer_bytes, "bytes", "llama.cpp log: model+KV+compute on GPU")]
        )
        if offload.status == Status.FAIL:
            r.stopped_at = "load"
            return False
        if self._terminal(out):
            return False
        if run.infer is None:
            return True
        if out.error is not None:
            e = out.error
            if e.kind == ErrorKind.USAGE:
                raise UsageError(e.message, fix=e.fix)
            r.add(self._error_check("infer.generate", "infer", "Inference", e, out))
            r.stopped_at = "infer"
            return False
        if out.inferred is None:
            r.add(failed("infer.generate", "infer", "Inference", "the worker returned no result", None))
            r.stopped_at = "infer"
            return False
        return self._judge_inference(run, info, out.inferred, telemetry)

    @staticmethod
    def _error_check(id: str, stage: str, title: str, e: WorkerError, out: WorkerOutcome) -> Check:
        return Check(
            id, stage, title, Status.FAIL, e.message, {"log_tail": list(out.log_tail[-15:])}, e.fix, e.exit_code
        )

    def _terminal(self, out: WorkerOutcome) -> bool:
        """Interrupt, timeout or crash: add the check that says so. True when one happened."""
        r = self.report
        if out.interrupted is not None:
            sig = signal.Signals(out.interrupted.signum).name
            r.interrupted = True
            r.exit_override = ExitCode.TERMINATED if sig == "SIGTERM" else ExitCode.INTERRUPTED
            r.add(
                failed(
                    f"{out.stage}.interrupted",
                    out.stage,
                    f"{out.stage.capitalize()} stage",
                    f"interrupted by {sig} during {out.stage}; the worker process was stopped",
                    None,
                    r.exit_override,
                )
            )
            r.stopped_at = out.stage
            self.ui.error(r.checks[-1].summary, r.checks[-1].fix)  # one Error: line, --json included
            return True
        if out.timeout is not None:
            t = out.timeout
            r.add(
                failed(
                    f"{t.stage}.timeout",
                    t.stage,
                    f"{t.stage.capitalize()} stage",
                    f"{t.stage} did not finish within {t.timeout_s:g} s; the worker's process group was killed",
                    "Raise --timeout if the model is large or the disk slow; otherwise the driver or llama.cpp hung "
                    "(check `dmesg`).",
                    ExitCode.TIMEOUT,
                    log_tail=list(out.log_tail[-15:]),
                )
            )
            r.stopped_at = t.stage
            self.ui.error(r.checks[-1].summary, r.checks[-1].fix)  # one Error: line, --json included
            return True
        if out.crash is not None:
            c = out.crash
            r.sections["crash"] = c.to_json()
            r.add(
                Check(
                    f"{c.stage}.crash",
                    c.stage,
                    f"{c.stage.capitalize()} stage",
                    Status.FAIL,
                    f"the worker died during {c.stage}"
                    + (f" by {c.signal}" if c.signal else f" with status {c.returncode}"),
                    c.to_json(),
                    c.hint,
                    ExitCode.CRASHED,
                )
            )
            r.stopped_at = c.stage
            self.ui.error(r.checks[-1].summary, r.checks[-1].fix)  # one Error: line, --json included
            return True
        return False

    def _judge_inference(self, run: ModelRun, info: GgufInfo, result: InferenceResult, telemetry: Any) -> bool:
        r = self.report
        r.sections["inference"] = result.to_json()
        metrics = result.metrics()
        r.add_metrics(metrics)
        gen = r.metric("gen_tps")
        gen_wall = r.metric("gen_tps_wall")
        ttft = r.metric("ttft_warm_ms")
        runs = result.runs
        n_gen = runs[0].generated_tokens if runs else 0
        cold = r.metric("ttft_cold_ms")
        if ttft is not None and ttft.value is not None:
            ttft_text = f"TTFT {_v(ttft, 0)} ms"
        else:  # --no-warmup with one run: only the cold figure exists
            ttft_text = f"TTFT {_v(cold, 0)} ms (cold)"
        if n_gen == 0:
            r.add(
                failed(
                    "infer.generate",
                    "infer",
                    "Inference",
                    "the model generated no tokens (it emitted end-of-sequence at once)",
                    "Try another prompt or model; with --temperature 0 an instruct model should answer.",
                )
            )
            r.stopped_at = "infer"
            return False
        r.add(
            passed(
                "infer.generate",
                "infer",
                "Inference",
                f"{n_gen} tokens at {_v(gen)} tok/s (perf) / {_v(gen_wall)} tok/s (wall), {ttft_text}, "
                f"{len(runs)} run(s)",
                text=result.text,
                chat_template=result.chat_template_applied,
            )
        )
        # Determinism: same seed, same tokens, every run.
        if result.deterministic is not None:
            if result.deterministic:
                r.add(
                    passed(
                        "infer.determinism",
                        "infer",
                        "Determinism",
                        f"{len(runs) + (1 if result.warmup else 0)} runs produced identical tokens",
                    )
                )
            else:
                r.add(
                    failed(
                        "infer.determinism",
                        "infer",
                        "Determinism",
                        f"runs diverged at generated token {result.divergence}",
                        "Non-deterministic output with a fixed seed points at a numerical problem (driver, "
                        "kernels or memory); rerun and check `dmesg` for Xid errors.",
                        divergence_token=result.divergence,
                    )
                )
        # Perf counters vs wall clock: the same decode window timed twice must agree. The end-to-end wall speed
        # also pays for sampling and streaming, which llama.cpp's decode counter (like llama-bench) leaves out;
        # that cost is reported per token, not hidden: on a 262k-token vocabulary and a fast GPU it is large.
        perf_ms, wall_ms = r.metric("decode_ms_per_token"), r.metric("decode_ms_per_token_wall")
        if perf_ms is not None and wall_ms is not None and perf_ms.value and wall_ms.value:
            ratio = perf_ms.value / wall_ms.value
            sample, other = r.metric("sample_ms_per_token"), r.metric("other_ms_per_token")
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
            if agree:
                r.add(passed("infer.timing_agreement", "infer", "Perf counters vs wall clock", summary, **ev))
            else:
                r.add(
                    warned(
                        "infer.timing_agreement",
                        "infer",
                        "Perf counters vs wall clock",
                        summary,
                        "The two clocks disagree on the same decode window (busy CPU or a throttling GPU?); "
                        "rerun on an idle machine.",
                        **ev,
                    )
                )
        if telemetry is not None:
            r.sections["telemetry"] = telemetry.to_json()
            r.add_metrics(
                telemetry.metrics(
                    sum(x.generated_tokens for x in runs) + (result.warmup.generated_tokens if result.warmup else 0)
                )
            )
        self._roofline(info, result)
        self._thresholds(run.thresholds)
        return not any(c.status == Status.FAIL for c in r.checks if c.stage in ("infer", "threshold"))

    def _roofline(self, info: GgufInfo, result: InferenceResult) -> None:
        """Achieved bandwidth = tokens/s × bytes read per token (weights except embedding lookup + KV)."""
        gen = self.report.metric("gen_tps")
        if gen is None or not gen.value:
            return
        tensors = {t.name: t for t in info.tensors}
        weights = sum(t.nbytes for t in info.tensors)
        if "token_embd.weight" in tensors and "output.weight" in tensors:
            weights -= tensors["token_embd.weight"].nbytes  # only one row is read per token
        n_layer = info.block_count or 0
        kv_per_token = 2 * n_layer * (info.head_count_kv or 0) * (info.key_length or 0) * 2  # f16 K and V
        runs = result.runs
        avg_ctx = (runs[0].prompt_tokens + runs[0].generated_tokens / 2) if runs else 0
        per_token = weights + kv_per_token * avg_ctx
        achieved = gen.value * per_token
        self.report.add_metrics(
            [
                Metric(
                    "bytes_per_token",
                    per_token,
                    "bytes",
                    "GGUF tensor sizes (token embedding excluded unless tied) + f16 KV cache at mean context",
                    estimate=True,
                ),
                Metric("bandwidth_achieved", achieved, "bytes/s", "gen_tps × bytes_per_token", estimate=True),
            ]
        )
        if self.report.device_mode == "gpu" and self.gpu is not None:
            peak = self.gpu.info.peak_bandwidth_bytes_s
            self.report.add_metrics(
                [
                    Metric(
                        "bandwidth_peak",
                        peak,
                        "bytes/s",
                        "NVML memory bus width × max memory clock × 2",
                        estimate=True,
                    ),
                    Metric(
                        "bandwidth_pct_of_peak",
                        achieved / peak * 100 if peak else None,
                        "%",
                        "bandwidth_achieved / bandwidth_peak",
                        estimate=True,
                    ),
                ]
            )

    def _thresholds(self, t: Thresholds, only_speedup: bool = False, skip_speedup: bool = True) -> None:
        r = self.report
        rules = [
            ("min_gen_tps", "gen_tps", t.min_gen_tps, "tok/s", "ge", "generation speed"),
            ("min_prompt_tps", "prompt_tps", t.min_prompt_tps, "tok/s", "ge", "prompt speed"),
            ("max_ttft_ms", "ttft_warm_ms", t.max_ttft_ms, "ms", "le", "warm time to first token"),
            ("min_speedup", "speedup_vs_cpu", t.min_speedup, "×", "ge", "speedup over CPU"),
        ]
        if only_speedup:
            rules = rules[3:]
        elif skip_speedup:
            rules = rules[:3]
        for key, metric, limit, unit, op, what in rules:
            if limit is None:
                continue
            m = r.metric(metric)
            cid, title = f"threshold.{key}", f"Threshold --{key.replace('_', '-')}"
            if m is None or m.value is None:
                r.add(
                    failed(
                        cid,
                        "threshold",
                        title,
                        f"{what} was not measured, so --{key.replace('_', '-')} {limit:.10g} cannot be met",
                        NOT_MEASURED_FIX.get(key, "Run the stage that measures it."),
                        ExitCode.BELOW_THRESHOLD,
                    )
                )
                continue
            ok = m.value >= limit if op == "ge" else m.value <= limit
            gap = abs(m.value - limit)
            pct = gap / limit * 100 if limit else 0
            ev = {"measured": m.value, "limit": limit, "unit": unit}
            if ok:
                r.add(passed(cid, "threshold", title, f"{what} {m.value:.1f} {unit} meets {limit:.10g} {unit}", **ev))
            else:
                word = "short by" if op == "ge" else "over by"
                r.add(
                    failed(
                        cid,
                        "threshold",
                        title,
                        f"{what} {m.value:.1f} {unit} misses {limit:.10g} {unit} ({word} {gap:.1f} {unit}, {pct:.0f}%)",
                        "Check the offload verdict and GPU utilisation; a partial offload or a busy GPU slows "
                        "generation.",
                        ExitCode.BELOW_THRESHOLD,
                        **ev,
                    )
                )

    def compare_cpu(self, run: ModelRun, resolved: ResolvedModel, info: GgufInfo) -> None:
        """Same greedy prompt with zero GPU layers: speedup and token-for-token agreement."""
        r = self.report
        gpu_inf = r.sections.get("inference")
        if gpu_inf is None or run.infer is None:
            return
        self.ui.progress("Running the same prompt on the CPU for comparison…")
        cpu_infer = dataclasses.replace(run.infer, temperature=0.0, repeat=max(1, min(run.infer.repeat, 2)))
        cpu_run = dataclasses.replace(
            run, load=dataclasses.replace(run.load, cpu_mode=True, gpu_layers=0), infer=cpu_infer
        )
        request = dataclasses.replace(self._request(cpu_run, resolved), cuda_visible_devices="")
        out = Worker(pin="").run(request, run.timeout_s)
        if out.inferred is None:
            reason = out.error.message if out.error else (out.crash.signal if out.crash else "no result")
            r.add(
                failed(
                    "infer.compare_cpu",
                    "infer",
                    "GPU vs CPU",
                    f"the CPU comparison run failed: {reason}",
                    None,
                )
            )
            return
        cpu = out.inferred
        gpu = InferenceResult.from_json(gpu_inf)
        cpu_tps = mean_of([x.gen_tps_perf for x in cpu.runs])
        gen = r.metric("gen_tps")
        gpu_tps = gen.value if gen is not None else None
        speedup = gpu_tps / cpu_tps if gpu_tps and cpu_tps else None
        r.add_metrics(
            [
                Metric(
                    "cpu_gen_tps", cpu_tps, "tokens/s", "llama_perf_context on a 0-GPU-layer run of the same prompt"
                ),
                Metric("speedup_vs_cpu", speedup, "×", "gen_tps / cpu_gen_tps"),
            ]
        )
        gpu_ids = (gpu.warmup or gpu.runs[0]).token_ids
        cpu_ids = (cpu.warmup or cpu.runs[0]).token_ids
        same, diverge, agree = token_agreement(gpu_ids, cpu_ids, run.infer.temperature)
        r.sections["compare_cpu"] = {
            "cpu_gen_tps": cpu_tps,
            "speedup": speedup,
            "tokens_identical": same,
            "divergence_token": diverge,
            "cpu_text": cpu.text,
            "greedy": run.infer.temperature == 0,
        }
        summary = f"GPU {_v(gpu_tps)} vs CPU {_v(cpu_tps)} tok/s = {_v(speedup)}× faster; {agree}"
        r.add(passed("infer.compare_cpu", "infer", "GPU vs CPU", summary, **r.sections["compare_cpu"]))


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


def _v(m: Any, digits: int = 1) -> str:
    value = m.value if isinstance(m, Metric) else m
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def run_pipeline(
    report: Report, ui: Any, run: ModelRun, detect_options: Any = None, worker: Worker | None = None
) -> Report:
    """load / infer / validate-all: each stage runs only if the previous one passed.

    `worker`: a worker the command started first thing (pinned to the GPU it will use), so its llama.cpp
    import overlaps with detection and model resolution.
    """
    worker = worker or Worker(pin=early_pin(run)).start()
    stage = ["detect" if detect_options is not None else "model"]
    doing: dict[str, str] = {}  # what the model stage is in the middle of: {"activity": "hub"}
    try:
        if detect_options is not None and not _detect(report, ui, detect_options):
            return report
        stage[0] = "model"
        if run.all_devices and not run.load.cpu_mode:
            worker.kill()
            _all_devices(report, ui, run, doing)
            return report
        _model_stages(report, ui, run, worker, doing)
        return report
    except (KeyboardInterrupt, Interrupted) as exc:
        # Outside the worker stages (detection, download): still a report, marked interrupted.
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _mark_interrupted(report, ui, stage[0], signum, doing.get("activity"))
        return report
    finally:
        worker.kill()
        report.finish()


# The hint after an interrupt, by what was under way: only a Hub download leaves something to resume.
INTERRUPT_HINTS = {
    "hub": "A partial download is kept: run the same command again to resume it.",
    "synthetic": "Nothing partial is kept: run the same command again to generate the synthetic model.",
}


def _mark_interrupted(report: Report, ui: Any, stage: str, signum: int, activity: str | None = None) -> None:
    name = signal.Signals(signum).name
    report.interrupted = True
    report.exit_override = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    report.stopped_at = stage
    hint = INTERRUPT_HINTS.get(activity or "", "Run the command again.")
    report.add(
        failed(
            f"{stage}.interrupted",
            stage,
            f"{stage.capitalize()} stage",
            f"interrupted by {name} during {stage}",
            hint,
            report.exit_override,
        )
    )
    ui.error(f"interrupted by {name} during the {stage} stage", hint)


def _detect(report: Report, ui: Any, options: Any) -> bool:
    from kcuda_validate.detect import run_detect

    ui.progress("Checking the GPU stack…")
    det = run_detect(options)
    report.add(*det.checks)
    report.sections["detect"] = det.to_json()
    if det.driver is not None:
        report.driver = {"driver_version": det.driver.driver_version, "cuda_version": det.driver.cuda_version}
    if det.torch is not None:
        report.torch_cuda = det.torch.cuda_build
    if det.exit_code != ExitCode.OK:
        report.stopped_at = "detect"
        return False
    return True


def _model_stages(report: Report, ui: Any, run: ModelRun, worker: Worker, doing: dict[str, str] | None = None) -> None:
    """`doing["activity"]` is the model's origin while it is fetched (`hub`, `synthetic`, `local`): an
    interrupt then gets the hint that fits it."""
    doing = doing if doing is not None else {}
    stages = Stages(report, ui)
    try:
        if not stages.select_gpu(run.device, run.load.cpu_mode):
            report.stopped_at = "gpu"
            return
        doing["activity"] = run.spec.origin  # an interrupt now is one of the fetch (run_pipeline reads it)
        resolved = stages.resolve(run.spec)
        doing.pop("activity", None)
        if resolved is None:
            report.stopped_at = "model"
            return
        info = stages.inspect(resolved)
        if info is None:
            report.stopped_at = "model"
            return
        stages.check_ctx(info, run.load.n_ctx)
        if not stages.fit(info, run.load):
            report.stopped_at = "model"
            return
        if not stages.run_model(run, resolved, info, worker):
            return
        if run.infer is not None and (run.compare_cpu or run.thresholds.min_speedup is not None):
            if run.compare_cpu:
                stages.compare_cpu(run, resolved, info)
            stages._thresholds(run.thresholds, only_speedup=True)
    finally:
        if stages.gpu is not None:
            stages.gpu.close()


def early_pin(run: ModelRun) -> str | None:
    """The CUDA_VISIBLE_DEVICES the worker will get (see gpu.nvml.worker_pin)."""
    return worker_pin(run.load.cpu_mode, run.device)


def visible_gpu_indices() -> list[int] | None:
    """NVML indices of the GPUs CUDA can see; None when NVML is unavailable."""
    gpus = read_gpus()
    if gpus is None:
        return None
    return [g.index for g in usable_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))]


def _all_devices(report: Report, ui: Any, run: ModelRun, doing: dict[str, str] | None = None) -> None:
    """Validate each visible GPU in turn; checks and metrics are prefixed gpuN., the verdict is the worst."""
    indices = visible_gpu_indices()
    if not indices:
        _model_stages(report, ui, dataclasses.replace(run, all_devices=False), Worker(), doing)
        return
    devices: dict[str, Any] = {}
    for idx in indices:
        sub = Report(report.command, report.argv)
        sub.device_mode = report.device_mode
        one = dataclasses.replace(run, device=idx, all_devices=False)
        _model_stages(sub, ui, one, Worker(pin=early_pin(one)).start(), doing)
        sub.finish()
        for c in sub.checks:
            report.add(dataclasses.replace(c, id=f"gpu{idx}.{c.id}", title=f"GPU {idx}: {c.title}"))
        report.add_metrics(sub.metrics, prefix=f"gpu{idx}.")
        devices[str(idx)] = {
            "gpu": sub.gpu,
            "exit_code": int(sub.exit_code),
            "stopped_at": sub.stopped_at,
            "sections": sub.sections,
        }
        report.gpu = report.gpu or sub.gpu
        report.driver = report.driver or sub.driver
        if sub.interrupted:
            report.interrupted = True
            report.exit_override = sub.exit_override
            break
    report.sections["devices"] = devices
    failing = [(k, v) for k, v in devices.items() if v["exit_code"] != 0]
    if failing:
        report.stopped_at = f"gpu{failing[0][0]}.{failing[0][1]['stopped_at'] or 'checks'}"
