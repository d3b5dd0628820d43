"""`kcuda-validate validate-all`: detect, load, infer — one verdict, stopping at the first failing stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kcuda_validate import defaults
from kcuda_validate.cli._common import (
    FiniteFloatRange,
    OutputPath,
    infer_options,
    load_options,
    model_options,
    output_options,
    run_model_command,
    threshold_options,
)


def _clear_ready_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager, so the old file is gone before any other option is even converted: a run that fails in any
    way after this, a bad option value included, leaves no stale gate from an older pass."""
    if value is not None:
        from kcuda_validate.cli._output import check_writable
        from kcuda_validate.readyfile import FIX, OPTION, clear

        check_writable(value, OPTION, FIX)
        clear(value)
    return value


def _ready_file_in(args: list[str]) -> Path | None:
    """The --ready-file value as typed, for a command line click could not parse (the last one wins, as in
    click)."""
    found: Path | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--ready-file" and i + 1 < len(args):
            found = Path(args[i + 1])
        elif arg.startswith("--ready-file="):
            found = Path(arg.split("=", 1)[1])
    return found


class _GatedCommand(click.Command):
    """An unknown option or a missing value stops click before any option callback, the eager --ready-file
    one included: the old gate is closed here too, since that run is not a GPU pass either."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        raw = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.UsageError:
            close_stale_gate(raw)
            raise


def close_stale_gate(args: list[str]) -> None:
    """Remove the ready file a command line that click could not parse names, if it is a regular file."""
    path = _ready_file_in(args)
    if path is not None and path.is_file():
        from kcuda_validate.readyfile import clear

        clear(path)


@click.command("validate-all", cls=_GatedCommand)
@click.argument("prompt", required=False)
@click.option(
    "--setup",
    is_flag=True,
    help="First make the CUDA engine ready (`kcuda-validate setup`: from the cache in seconds, else a build).",
)
@click.option(
    "--toolkit",
    type=click.Choice(["auto", "system", "pypi"]),
    help="With --setup: the CUDA toolkit to build with, as `setup --toolkit` (default auto).",
)
@click.option(
    "--ready-file",
    type=OutputPath(),
    callback=_clear_ready_file,
    is_eager=True,
    help="Create this file when the GPU passes; it is removed first thing, so it exists only after a GPU pass.",
)
@click.option("--skip-torch", is_flag=True, help="Skip the PyTorch checks.")
@click.option(
    "--min-vram-gb", type=FiniteFloatRange(min=0), default=defaults.MIN_VRAM_GB, show_default=True, help="Minimum VRAM."
)
@click.option(
    "--min-compute", type=FiniteFloatRange(min=0), default=defaults.MIN_COMPUTE, show_default=True, help="Minimum CC."
)
@infer_options
@model_options
@load_options
@threshold_options
@output_options
@click.pass_context
def validate_all(ctx: click.Context, /, **kw: Any) -> int:
    """Run the whole check: GPU stack, model load with offload proof, measured inference."""
    if kw.get("toolkit") is not None and not kw.get("setup"):
        from kcuda_validate.errors import UsageError

        raise UsageError(
            "--toolkit: only means something with --setup",
            fix=f"Add --setup, or run `kcuda-validate setup --toolkit {kw['toolkit']}` first.",
        )
    if kw.get("ready_file") is not None:
        from kcuda_validate.readyfile import refuse_cpu_run

        refuse_cpu_run(kw.get("device"))

    def detect_options(run: Any) -> Any:
        from kcuda_validate.cache_dir import hub_cache_dir
        from kcuda_validate.detect import DetectOptions

        return DetectOptions(
            device=run.device,
            skip_torch=kw.get("skip_torch", False),
            min_vram_gb=kw.get("min_vram_gb", defaults.MIN_VRAM_GB),
            min_compute=kw.get("min_compute", defaults.MIN_COMPUTE),
            cpu_mode=run.load.cpu_mode,
            model_dir=hub_cache_dir(),
            model_origin=run.spec.origin,
            hub_model=run.spec.hub_file() if run.spec.origin == "hub" else None,
        )

    return run_model_command(ctx, kw, "validate-all", with_infer=True, detect_options=detect_options)
