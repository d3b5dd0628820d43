"""`kcuda-validate infer`: load the model in this run, stream a real generation, measure it."""

from __future__ import annotations

from typing import Any

import click

from kcuda_validate.cli._common import (
    infer_options,
    load_options,
    model_options,
    output_options,
    run_model_command,
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
def infer(ctx: click.Context, /, **kw: Any) -> int:
    """Run a prompt and report tokens/s, time to first token and GPU telemetry, all measured."""
    return run_model_command(ctx, kw, "infer", with_infer=True)
