"""`kcuda-validate detect`: check every layer of the CUDA stack, with evidence and fixes."""

from __future__ import annotations

import json
from typing import Any

import click

from kcuda_validate import defaults
from kcuda_validate.cli._common import DEVICE, FiniteFloatRange, make_output, output_options


@click.command("detect")
@click.option("--device", type=DEVICE, default=None, help="Check only this GPU index ('cpu': a CPU-only run).")
@click.option(
    "--skip-torch", is_flag=True, help="Skip PyTorch (saves its ~1-10 s import) when only the driver matters."
)
@click.option(
    "--min-vram-gb",
    type=FiniteFloatRange(min=0),
    default=defaults.MIN_VRAM_GB,
    show_default=True,
    help="Minimum total VRAM per GPU.",
)
@click.option(
    "--min-compute",
    type=FiniteFloatRange(min=0),
    default=defaults.MIN_COMPUTE,
    show_default=True,
    help="Minimum CUDA compute capability.",
)
@click.option(
    "--check",
    "check_ids",
    multiple=True,
    metavar="ID",
    help="Run only this check (repeatable; the IDs are in --list-checks).",
)
@click.option("--list-checks", is_flag=True, help="List the checks (ID, title, tags) and exit; with --json a list.")
@output_options
@click.pass_context
def detect(
    ctx: click.Context,
    /,
    device: Any,
    skip_torch: bool,
    min_vram_gb: float,
    min_compute: float,
    check_ids: tuple[str, ...],
    list_checks: bool,
    **kw: Any,
) -> int:
    """Detect NVIDIA GPUs and diagnose the driver, CUDA, PyTorch and llama-cpp-python."""
    from kcuda_validate.cache_dir import hub_cache_dir
    from kcuda_validate.detect import CHECKS, DetectOptions, run_detect
    from kcuda_validate.detect.registry import select
    from kcuda_validate.report import Report

    ui = make_output(ctx, **kw)
    only = select(check_ids or None) if check_ids else None  # an unknown ID fails before any work
    if list_checks:
        opts = ui.opts
        named = {"--report": opts.report_path, "--junit-xml": opts.junit_path, "--prometheus": opts.prometheus_path}
        files = [(option, path) for option, path in named.items() if path is not None]
        if files:  # nothing runs, so there would be nothing to write: say so rather than write nothing
            from kcuda_validate.errors import UsageError

            option, path = files[0]
            raise UsageError(
                f"--list-checks runs no check, so {option} {path} would get no results",
                fix="Drop --list-checks to run the checks and write the file, or drop the file option.",
            )
        if ui.opts.json:
            click.echo(json.dumps([c.to_json() for c in CHECKS], indent=2))
        else:
            width = max(len(c.id) for c in CHECKS)
            title_width = max(len(c.title) for c in CHECKS)
            for c in CHECKS:
                click.echo(f"{c.id:<{width}}  {c.title:<{title_width}}  {', '.join(c.tags)}".rstrip())
        return 0
    report = Report("detect")
    cpu = device == "cpu"
    report.device_mode = "cpu" if cpu else "gpu"
    ui.progress("Checking the GPU stack…")
    options = DetectOptions(
        device=device if isinstance(device, int) else None,
        skip_torch=skip_torch,
        min_vram_gb=min_vram_gb,
        min_compute=min_compute,
        cpu_mode=cpu,
        model_dir=hub_cache_dir(),
    )
    result = run_detect(options, only=None if only is None else [c.id for c in only], answer_each=only is not None)
    report.add(*result.checks)
    report.sections["detect"] = result.to_json()
    if result.driver is not None:
        report.driver = {"driver_version": result.driver.driver_version, "cuda_version": result.driver.cuda_version}
    if result.usable_gpus:
        report.gpu = result.usable_gpus[0].to_json()
    if result.torch is not None:
        report.torch_cuda = result.torch.cuda_build
    ui.result(report)
    return int(report.exit_code)
