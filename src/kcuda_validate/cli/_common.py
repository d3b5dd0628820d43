"""Options shared by several commands, and the glue from parsed options to service inputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kcuda_validate import defaults
from kcuda_validate.cli._errors import note_debug
from kcuda_validate.cli._output import Output, OutputOptions, check_distinct, check_writable


class DeviceType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click; >=8.1 is allowed
    """`--device N` (an NVML GPU index) or `--device cpu` (a CPU-only run, never reported as a GPU pass)."""

    name = "N|cpu"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from kcuda_validate.prestart import parse_device

        if value is None or isinstance(value, int):
            return value
        parsed = parse_device(str(value))
        if parsed is None:
            self.fail(f"{value!r} is not a GPU index or 'cpu'", param, ctx)
        return parsed


DEVICE = DeviceType()


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and ±inf (which pass any range check and are not JSON)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class GivenPath(click.Path):
    """A path option's value, refused when empty (a usage error, exit 2): pathlib reads `""` as `.`, so an unset
    shell variable (`--model-path "$MODEL"`) would be judged as the current directory, with that path's exit code
    and a message about `.`. What the path is otherwise is left to the command, which words it."""

    def __init__(self, *, readable: bool = True) -> None:
        super().__init__(path_type=Path, readable=readable)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path names no file.", param, ctx)
        return super().convert(value, param, ctx)


class OutputPath(GivenPath):
    """A file the tool will write: a directory or any other kind of file is left to `check_writable`, whose
    message says what the path is and what to do."""


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json, -v, -q, --report, --junit-xml, --prometheus, --debug: accepted before or after the command name."""
    opts = [
        click.option("--json", "json_out", is_flag=True, default=None, help="Print one JSON document on stdout."),
        click.option("-v", "--verbose", count=True, help="Show every check and more detail (repeatable)."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Print only the verdict line."),
        click.option(
            "--report",
            "report_path",
            type=OutputPath(),
            help="Also write the JSON report to this file.",
        ),
        click.option(
            "--junit-xml",
            "junit_path",
            type=OutputPath(),
            help="Write a JUnit XML file with one test case per check.",
        ),
        click.option(
            "--prometheus",
            "prometheus_path",
            type=OutputPath(),
            help="Write the verdict, checks and figures as a Prometheus textfile (node_exporter).",
        ),
        click.option(
            "--debug",
            is_flag=True,
            default=None,
            is_eager=True,  # noted before other options are converted, for an error in one of them
            callback=note_debug,
            help="Show tracebacks for unexpected errors.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_output(ctx: click.Context, **kw: Any) -> Output:
    """Merge group-level and command-level output flags (the command's win)."""
    base: OutputOptions = (ctx.find_root().obj or {}).get("output", OutputOptions())
    opts = OutputOptions(
        json=bool(kw.get("json_out") if kw.get("json_out") is not None else base.json),
        verbose=max(kw.get("verbose") or 0, base.verbose),
        quiet=bool(kw.get("quiet") if kw.get("quiet") is not None else base.quiet),
        report_path=kw.get("report_path") or base.report_path,
        junit_path=kw.get("junit_path") or base.junit_path,
        prometheus_path=kw.get("prometheus_path") or base.prometheus_path,
        ready_path=kw.get("ready_file"),
        debug=bool(kw.get("debug") if kw.get("debug") is not None else base.debug),
    )
    if opts.quiet and opts.verbose:
        from kcuda_validate.errors import UsageError

        raise UsageError(
            "-q and -v: -q prints only the verdict line, -v more detail",
            fix="Pass one of them (the report files hold every detail either way).",
        )
    if opts.report_path is not None:
        check_writable(opts.report_path, "--report")
    if opts.junit_path is not None:
        check_writable(opts.junit_path, "--junit-xml")
    if opts.prometheus_path is not None:
        check_writable(opts.prometheus_path, "--prometheus")
    check_distinct(
        {
            "--report": opts.report_path,
            "--junit-xml": opts.junit_path,
            "--prometheus": opts.prometheus_path,
            "--ready-file": opts.ready_path,
        }
    )
    return Output(opts)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--model-path",
            # Checked by the model stage, not by click (exit 5, not 2): see model.source.check_model_file.
            type=GivenPath(readable=False),
            help="A local GGUF file.",
        ),
        click.option("--repo-id", help="Hugging Face repo, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF."),
        click.option("--filename", help="GGUF file in the repo (required with --repo-id)."),
        click.option("--revision", help="Branch, tag or commit of the repo (default: main)."),
        click.option(
            "--synthetic",
            metavar="SIZE",
            help="Generate (once, then cached) a random-weight llama model of this size, e.g. 1GiB. Works offline.",
        ),
        click.option(
            "--synthetic-type",
            type=click.Choice(["F16", "Q8_0", "Q4_0"], case_sensitive=False),
            default=defaults.SYNTHETIC_TYPE,
            show_default=True,
            help="Weight type of the synthetic model.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def load_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--gpu-layers",
            type=click.IntRange(min=-1),
            default=defaults.GPU_LAYERS,
            show_default=True,
            help="Layers to offload to the GPU; -1 = all.",
        ),
        click.option(
            "--n-ctx",
            type=click.IntRange(64, 1 << 20),
            default=defaults.N_CTX,
            show_default=True,
            help="Context size in tokens, 64 up to the model's trained context (more is a usage error).",
        ),
        click.option("--device", type=DEVICE, default=None, help="GPU index to use, or 'cpu' for a CPU-only run."),
        click.option(
            "--timeout",
            type=FiniteFloatRange(min=1),
            default=defaults.STAGE_TIMEOUT_S,
            show_default=True,
            help="Seconds each model stage (load, inference) may take before it is killed.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(1, defaults.MAX_THREADS),
            default=None,
            help=f"CPU threads for llama.cpp (1..{defaults.MAX_THREADS}, llama.cpp's limit).",
        ),
        click.option(
            "--all-devices",
            is_flag=True,
            help="Validate every visible GPU in turn; the verdict is the worst of them.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def infer_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--prompt", "prompt_opt", help="The prompt (or give it as the argument)."),
        click.option(
            "--max-tokens",
            type=click.IntRange(1, 65536),
            default=defaults.MAX_TOKENS,
            show_default=True,
            help="Tokens to generate.",
        ),
        click.option(
            "--temperature",
            type=FiniteFloatRange(0, 5),
            default=defaults.TEMPERATURE,
            show_default=True,
            help="0 = greedy (deterministic).",
        ),
        click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Sampling seed."),
        click.option(
            "--repeat",
            type=click.IntRange(1, 100),
            default=defaults.REPEAT,
            show_default=True,
            help="Measured runs after one warm-up.",
        ),
        click.option("--no-warmup", is_flag=True, help="Skip the warm-up run (the first measured run is cold)."),
        click.option(
            "--sampling",
            type=click.Choice(["auto", "backend", "cpu"]),
            default=defaults.SAMPLING,
            show_default=True,
            help="Where greedy sampling runs. backend: inside the decode graph (as llama-server does), with as many"
            " CPU-sampled runs alternated beside it; auto: backend on a GPU run, cpu on a CPU run.",
        ),
        click.option(
            "--prompt-tokens",
            type=click.IntRange(1, 1 << 20),
            default=None,
            help="Benchmark prompt processing with a synthetic prompt of exactly N tokens.",
        ),
        click.option("--raw", is_flag=True, help="Do not apply the model's chat template."),
        click.option("--compare-cpu", is_flag=True, help="Also run the prompt with 0 GPU layers; report the speedup."),
        click.option(
            "--no-telemetry",
            is_flag=True,
            help="Do not sample NVML during inference (no utilisation, power, energy or VRAM-peak figures).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def threshold_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--min-gen-tps", type=FiniteFloatRange(min=0), help="Fail below this generation tokens/s."),
        click.option("--min-prompt-tps", type=FiniteFloatRange(min=0), help="Fail below this prompt tokens/s."),
        click.option("--max-ttft-ms", type=FiniteFloatRange(min=0), help="Fail above this warm time to first token."),
        click.option("--min-speedup", type=FiniteFloatRange(min=0), help="Fail below this speedup over the CPU."),
        click.option(
            "--allow-partial-offload",
            is_flag=True,
            help="Do not fail when layers, weights or the KV cache stay on the CPU (a full offload is required by"
            " default).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _check_utf8(text: str, name: str) -> None:
    """A prompt that is not UTF-8 (bytes smuggled in by surrogateescape) is refused: replacing them would
    silently benchmark another prompt than the one given."""
    from kcuda_validate.errors import UsageError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = ord(text[err.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"code point U+{char:04X}"
        offset = len(text[: err.start].encode("utf-8", "surrogateescape"))
        raise UsageError(
            f"{name}: not valid UTF-8 text ({what} at offset {offset})",
            fix="Pass the prompt as UTF-8 text (check the encoding of the terminal or script that sends it).",
        ) from None


def build_run(kw: dict[str, Any], with_infer: bool) -> Any:
    """Parsed options -> pipeline.ModelRun (validated where click cannot)."""
    from kcuda_validate.errors import UsageError
    from kcuda_validate.llm.loader import LoadOptions
    from kcuda_validate.llm.measures import DEFAULT_PROMPT, InferOptions
    from kcuda_validate.model.source import ModelSpec
    from kcuda_validate.pipeline import ModelRun, Thresholds

    cpu = kw.get("device") == "cpu"
    spec = ModelSpec(
        model_path=kw.get("model_path"),
        repo_id=kw.get("repo_id"),
        filename=kw.get("filename"),
        revision=kw.get("revision"),
        synthetic=kw.get("synthetic"),
        synthetic_type=(kw.get("synthetic_type") or defaults.SYNTHETIC_TYPE).upper(),
    )
    spec.validate()
    ctx = click.get_current_context(silent=True)
    typed = ctx is not None and ctx.get_parameter_source("synthetic_type") == ParameterSource.COMMANDLINE
    if typed and spec.synthetic is None:
        raise UsageError(
            f"--synthetic-type {spec.synthetic_type}: only used with --synthetic",
            fix="Add --synthetic SIZE (e.g. --synthetic 1GiB), or drop --synthetic-type.",
        )
    if not cpu and kw.get("gpu_layers") == 0:
        # Seen on an H100: with 0 layers llama.cpp still puts a compute buffer on the GPU, yet nothing about
        # GPU offload can be proven; a CPU run is what was meant, and it should say so.
        raise UsageError(
            "--gpu-layers 0: offloads nothing, so the GPU cannot be validated",
            fix="Use --device cpu for a CPU run, or --gpu-layers -1 (all) or N > 0.",
        )
    load = LoadOptions(
        gpu_layers=0 if cpu else kw.get("gpu_layers", defaults.GPU_LAYERS),
        n_ctx=kw.get("n_ctx", defaults.N_CTX),
        cpu_mode=cpu,
        n_threads=kw.get("threads"),
    )
    infer = None
    if with_infer:
        arg, opt = kw.get("prompt"), kw.get("prompt_opt")
        if arg is not None and opt is not None:
            raise UsageError("prompt: given both as argument and --prompt", fix="Pass the prompt once.")
        prompt = opt if opt is not None else arg
        if prompt is not None:
            _check_utf8(prompt, "--prompt" if opt is not None else "prompt")
        if prompt is not None and not prompt.strip():
            raise UsageError("prompt: the prompt is empty", fix="Pass some text, e.g. kcuda-validate infer 'Hello'.")
        if prompt is not None and kw.get("prompt_tokens"):
            raise UsageError(
                f"--prompt-tokens {kw['prompt_tokens']}: replaces the prompt with synthetic tokens, so a prompt"
                " cannot be given too",
                fix="Pass either a prompt or --prompt-tokens N.",
            )
        infer = InferOptions(
            prompt=prompt if prompt is not None else DEFAULT_PROMPT,
            max_tokens=kw.get("max_tokens", defaults.MAX_TOKENS),
            temperature=kw.get("temperature", defaults.TEMPERATURE),
            seed=kw.get("seed", defaults.SEED),
            repeat=kw.get("repeat", defaults.REPEAT),
            warmup=not kw.get("no_warmup", False),
            sampling=kw.get("sampling", defaults.SAMPLING),
            prompt_tokens=kw.get("prompt_tokens"),
            chat=not kw.get("raw", False),
        )
    thresholds = Thresholds(
        min_gen_tps=kw.get("min_gen_tps"),
        min_prompt_tps=kw.get("min_prompt_tps"),
        max_ttft_ms=kw.get("max_ttft_ms"),
        min_speedup=kw.get("min_speedup"),
        require_full_offload=not kw.get("allow_partial_offload", False),
    )
    if kw.get("all_devices") and kw.get("device") is not None:
        raise UsageError("--all-devices: cannot be combined with --device", fix="Pass one of them.")
    if kw.get("compare_cpu") and cpu:
        raise UsageError("--compare-cpu: needs a GPU run", fix="Drop --device cpu or --compare-cpu.")
    if kw.get("min_speedup") is not None and not kw.get("compare_cpu"):
        # Checked after the run, it would fail a whole inference for a figure that was never going to be measured.
        raise UsageError(
            f"--min-speedup {kw['min_speedup']:g}: the GPU-over-CPU speedup is measured only with --compare-cpu",
            fix="Add --compare-cpu (a GPU run), or drop --min-speedup.",
        )
    return ModelRun(
        spec=spec,
        load=load,
        infer=infer,
        device=kw.get("device") if isinstance(kw.get("device"), int) else None,
        timeout_s=kw.get("timeout", defaults.STAGE_TIMEOUT_S),
        compare_cpu=bool(kw.get("compare_cpu")),
        telemetry=not kw.get("no_telemetry", False),
        thresholds=thresholds,
        all_devices=bool(kw.get("all_devices")),
    )


def start_worker(ctx: click.Context, kw: dict[str, Any]) -> Any:
    """Spawn the model worker first thing, pinned to the GPU the run will use, so its llama.cpp import runs
    while this process imports, detects and reads the model header. Reuses the one the entry point started
    before click was even imported (handed in through the context object), when it was started for the
    same options; a worker started for other options is killed."""
    from kcuda_validate.gpu.nvml import worker_pin
    from kcuda_validate.isolation import Worker
    from kcuda_validate.prestart import EARLY_WORKER

    device = kw.get("device")
    cpu_mode, index = device == "cpu", device if isinstance(device, int) else None
    obj = ctx.find_root().obj
    early = obj.pop(EARLY_WORKER, None) if isinstance(obj, dict) else None
    if early is not None and early.guess == (cpu_mode, index):  # same pin, no second NVML read
        return early.worker
    if early is not None:
        early.worker.kill()
    if kw.get("all_devices"):  # each GPU gets its own worker later; the entry point made no guess
        return Worker().start()
    return Worker(pin=worker_pin(cpu_mode, index)).start()


def run_model_command(
    ctx: click.Context,
    kw: dict[str, Any],
    command: str,
    with_infer: bool,
    detect_options: Callable[[Any], Any] | None = None,
) -> int:
    """The body `load`, `infer` and `validate-all` share: worker first, then the pipeline, then the verdict.

    `detect_options(run)` gives validate-all's detect stage its options once the run is known. With
    `--setup` (validate-all), the CUDA engine is made ready first, before any worker imports llama.cpp."""
    from kcuda_validate.report import Report

    setup_checks: list[Any] = []
    setup_section: dict[str, Any] | None = None
    if kw.get("setup"):
        from kcuda_validate.checks import Status
        from kcuda_validate.cli._setup_step import run_setup_step
        from kcuda_validate.engine.setup import setup_checks as judge_setup

        ui = make_output(ctx, **kw)
        build_run(kw, with_infer=with_infer)  # usage errors first, before minutes of building
        result = run_setup_step(ui, {"toolkit": kw.get("toolkit")})
        setup_checks = judge_setup(result, no_gpu_is_skip=True)
        setup_section = result.to_json()
        if any(c.status == Status.FAIL for c in setup_checks):
            report = Report(command)
            report.add(*setup_checks)
            report.sections["setup"] = setup_section
            report.stopped_at = "setup"
            ui.result(report)
            return int(report.exit_code)
    worker = start_worker(ctx, kw)
    try:
        from kcuda_validate.pipeline import run_pipeline

        ui = make_output(ctx, **kw)
        run = build_run(kw, with_infer=with_infer)
        report = Report(command)
        if setup_section is not None:
            report.add(*setup_checks)
            report.sections["setup"] = setup_section
        detect = None
        if detect_options is not None:
            report.device_mode = "cpu" if run.load.cpu_mode else "gpu"
            detect = detect_options(run)
        run_pipeline(report, ui, run, detect, worker=worker)
        ui.result(report)
        return int(report.exit_code)
    finally:
        worker.kill()
