"""The `kcuda-validate` command line: a group wiring one small module per command."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from kcuda_validate import __version__
from kcuda_validate.cli._common import output_options
from kcuda_validate.cli._errors import run_with_boundary
from kcuda_validate.cli._output import OutputOptions


def version_info() -> dict[str, Any]:
    """Tool, key packages and, when a driver answers, the NVIDIA driver — without importing them. One object for
    the text and the `--json` form, so the two cannot say different things."""
    from kcuda_validate.report import package_versions

    packages = {name: v for name, v in package_versions().items() if name not in ("click", "rich")}
    driver: dict[str, Any]
    try:
        from kcuda_validate.gpu.nvml import Nvml, NvmlInitError

        try:
            with Nvml.open() as nvml:
                d = nvml.driver()
                driver = {"found": True, "version": d.driver_version, "cuda_version": d.cuda_version, "reason": None}
        except NvmlInitError as exc:
            driver = {"found": False, "version": None, "cuda_version": None, "reason": exc.kind.replace("_", " ")}
    except ImportError:
        driver = {"found": None, "version": None, "cuda_version": None, "reason": "nvidia-ml-py not installed"}
    return {"tool": "kcuda-validate", "version": __version__, "packages": packages, "nvidia_driver": driver}


def _version_text(info: dict[str, Any]) -> str:
    lines = [f"{info['tool']} {info['version']}"]
    lines += [f"  {name} {version or 'not installed'}" for name, version in info["packages"].items()]
    d = info["nvidia_driver"]
    if d["found"]:
        lines.append(f"  nvidia driver {d['version']} (CUDA {d['cuda_version'] or 'n/a'})")
    elif d["found"] is False:
        lines.append(f"  nvidia driver not found ({d['reason']})")
    else:
        lines.append(f"  nvidia driver unknown ({d['reason']})")
    return "\n".join(lines)


_VERSION_ASKED = "kcuda.version_asked"


def _ask_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Only noted here: `--version` is eager, so `--version --json` would reach it before --json is parsed.
    KcudaGroup.parse_args prints it once every group option is known."""
    if value and not ctx.resilient_parsing:
        ctx.meta[_VERSION_ASKED] = True


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
            rest = super().parse_args(ctx, args)
        except click.UsageError:
            if "validate-all" in raw:
                from kcuda_validate.cli.validate_all import close_stale_gate

                close_stale_gate(raw[raw.index("validate-all") + 1 :])
            raise
        if ctx.meta.get(_VERSION_ASKED):
            info = version_info()
            click.echo(json.dumps(info, indent=2) if ctx.params.get("json_out") else _version_text(info))
            ctx.exit(0)
        return rest


@click.group(cls=KcudaGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_ask_version,
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
