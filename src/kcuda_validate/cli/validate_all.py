"""`kcuda-validate validate-all`: detect, load, infer — one verdict, stopping at the first failing stage."""

from __future__ import annotations

from typing import Any

import click

from kcuda_validate.cli._common import (
    build_run,
    infer_options,
    load_options,
    make_output,
    model_options,
    output_options,
    start_worker,
    threshold_options,
)


@click.command("validate-all")
@click.argument("prompt", required=False)
@click.option("--skip-torch", is_flag=True, help="Skip the PyTorch checks.")
@click.option("--min-vram-gb", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Minimum VRAM.")
@click.option("--min-compute", type=click.FloatRange(min=0), default=6.1, show_default=True, help="Minimum CC.")
@infer_options
@model_options
@load_options
@threshold_options
@output_options
@click.pass_context
def validate_all(ctx: click.Context, **kw: Any) -> int:
    """Run the whole check: GPU stack, model load with offload proof, measured inference."""
    worker = start_worker(kw)
    try:
        from kcuda_validate.cli.detect import _model_dir
        from kcuda_validate.detect import DetectOptions
        from kcuda_validate.pipeline import run_pipeline
        from kcuda_validate.report import Report

        ui = make_output(ctx, **kw)
        run = build_run(kw, with_infer=True)
        report = Report("validate-all")
        report.device_mode = "cpu" if run.load.cpu_mode else "gpu"
        detect_opts = DetectOptions(
            device=run.device,
            skip_torch=kw.get("skip_torch", False),
            min_vram_gb=kw.get("min_vram_gb", 2.0),
            min_compute=kw.get("min_compute", 6.1),
            cpu_mode=run.load.cpu_mode,
            model_dir=_model_dir(),
        )
        run_pipeline(report, ui, run, detect_opts, worker=worker)
        ui.result(report)
        return int(report.exit_code)
    finally:
        worker.kill()
