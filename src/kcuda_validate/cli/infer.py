"""`kcuda-validate infer`: load the model in this run, stream a real generation, measure it."""

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


@click.command("infer")
@click.argument("prompt", required=False)
@infer_options
@model_options
@load_options
@threshold_options
@output_options
@click.pass_context
def infer(ctx: click.Context, **kw: Any) -> int:
    """Run a prompt and report tokens/s, time to first token and GPU telemetry, all measured."""
    worker = start_worker(kw)
    try:
        from kcuda_validate.pipeline import run_pipeline
        from kcuda_validate.report import Report

        ui = make_output(ctx, **kw)
        run = build_run(kw, with_infer=True)
        report = Report("infer")
        run_pipeline(report, ui, run, worker=worker)
        ui.result(report)
        return int(report.exit_code)
    finally:
        worker.kill()
