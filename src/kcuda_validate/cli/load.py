"""`kcuda-validate load`: get the model, read its header, load it offloaded, prove where it went."""

from __future__ import annotations

from typing import Any

import click

from kcuda_validate.cli._common import load_options, model_options, output_options, run_model_command


@click.command("load")
@model_options
@load_options
@output_options
@click.pass_context
def load(ctx: click.Context, /, **kw: Any) -> int:
    """Load a GGUF model with all layers on the GPU and prove they got there.

    Without a model option the default model (Qwen2.5-0.5B-Instruct Q4_K_M) is fetched from the Hub.
    """
    return run_model_command(ctx, kw, "load", with_infer=False)
