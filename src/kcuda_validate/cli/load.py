"""`kcuda-validate load`: get the model, read its header, load it offloaded, prove where it went."""

from __future__ import annotations

from typing import Any

import click

from kcuda_validate.cli._common import build_run, load_options, make_output, model_options, output_options, start_worker


@click.command("load")
@model_options
@load_options
@output_options
@click.pass_context
def load(ctx: click.Context, **kw: Any) -> int:
    """Load a GGUF model with all layers on the GPU and prove they got there.

    Without a model option the default model (Qwen2.5-0.5B-Instruct Q4_K_M) is fetched from the Hub.
    """
    worker = start_worker(kw)
    try:
        from kcuda_validate.pipeline import run_pipeline
        from kcuda_validate.report import Report

        ui = make_output(ctx, **kw)
        run = build_run(kw, with_infer=False)
        report = Report("load")
        run_pipeline(report, ui, run, worker=worker)
        ui.result(report)
        return int(report.exit_code)
    finally:
        worker.kill()
