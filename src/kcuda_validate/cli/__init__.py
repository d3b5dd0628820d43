"""The `kcuda-validate` command line: a group wiring one small module per command."""

from __future__ import annotations

import sys
from typing import Any

import click

from kcuda_validate import __version__
from kcuda_validate.cli._common import output_options
from kcuda_validate.cli._errors import run_with_boundary
from kcuda_validate.cli._output import OutputOptions


def _version_text() -> str:
    """Tool, key packages and, when a driver answers, the NVIDIA driver — without importing them."""
    from kcuda_validate.report import package_versions

    lines = [f"kcuda-validate {__version__}"]
    for name, version in package_versions().items():
        if name in ("click", "rich"):
            continue
        lines.append(f"  {name} {version or 'not installed'}")
    try:
        from kcuda_validate.gpu.nvml import Nvml, NvmlInitError

        try:
            with Nvml.open() as nvml:
                d = nvml.driver()
                lines.append(f"  nvidia driver {d.driver_version} (CUDA {d.cuda_version or 'n/a'})")
        except NvmlInitError as exc:
            lines.append(f"  nvidia driver not found ({exc.kind.replace('_', ' ')})")
    except ImportError:
        lines.append("  nvidia driver unknown (nvidia-ml-py not installed)")
    return "\n".join(lines)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(_version_text())
    ctx.exit(0)


class KcudaGroup(click.Group):
    """Applies the single error boundary around every invocation (CLI and CliRunner alike)."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        code = run_with_boundary(
            lambda: super(KcudaGroup, self).main(args, prog_name, standalone_mode=False, **extra),
            None if args is None else list(args),
        )
        sys.exit(code)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A group option click cannot parse (`kcuda-validate --bogus validate-all --ready-file F`) stops before
        validate-all is reached: its old gate is closed here too, as validate-all does for its own options."""
        raw = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.UsageError:
            if "validate-all" in raw:
                from kcuda_validate.cli.validate_all import close_stale_gate

                close_stale_gate(raw[raw.index("validate-all") + 1 :])
            raise


@click.group(cls=KcudaGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the versions of the tool, llama-cpp-python, torch, nvidia-ml-py, huggingface-hub, gguf and the driver.",
)
@output_options
@click.pass_context
def cli(ctx: click.Context, /, **kw: Any) -> None:
    """Prove this machine can run local LLM inference on its NVIDIA GPU — or say exactly why not and how to fix it.

    \b
    Start with `kcuda-validate detect`, then `kcuda-validate validate-all`.
    Exit codes are the same for every command: see `kcuda-validate exit-codes`.
    """
    ctx.ensure_object(dict)["output"] = OutputOptions(
        json=bool(kw.get("json_out")),
        verbose=kw.get("verbose") or 0,
        quiet=bool(kw.get("quiet")),
        report_path=kw.get("report_path"),
        junit_path=kw.get("junit_path"),
        prometheus_path=kw.get("prometheus_path"),
        debug=bool(kw.get("debug")),
    )


def _register() -> None:
    from kcuda_validate.cli import detect, exit_codes, fleet, health, infer, load, setup, validate_all

    cli.add_command(detect.detect)
    cli.add_command(load.load)
    cli.add_command(infer.infer)
    cli.add_command(validate_all.validate_all)
    cli.add_command(setup.setup)
    cli.add_command(health.health)
    cli.add_command(fleet.fleet)
    cli.add_command(exit_codes.exit_codes)


_register()


def main(obj: dict[str, Any] | None = None) -> None:
    """Console-script entry point. `obj` starts the click context object (the entry point's early worker)."""
    cli.main(prog_name="kcuda-validate", obj={} if obj is None else obj)
