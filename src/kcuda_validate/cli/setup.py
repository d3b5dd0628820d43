"""`kcuda-validate setup`: make the tool's llama-cpp-python a CUDA build for the GPUs of this machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kcuda_validate.cli._common import make_output, output_options
from kcuda_validate.cli._output import check_writable_dir
from kcuda_validate.cli._setup_step import plan_lines, run_setup_step
from kcuda_validate.errors import ExitCode, KcudaError


class ArchList(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click; >=8.1 is allowed
    """`--arch 89,90` or `--arch 8.9,9.0`: compute capabilities as CMake spells them."""

    name = "ARCH[,ARCH...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        out: list[int] = []
        for token in str(value).replace(";", ",").split(","):
            t = token.strip().lower().removeprefix("sm_").removesuffix("-real").removesuffix("-virtual")
            if not t:
                continue
            if "." in t:
                major, _, minor = t.partition(".")
                t = major + minor
            if not t.isdigit() or not 50 <= int(t) <= 139:
                self.fail(f"{token.strip()!r} is not a compute capability (e.g. 89 or 8.9)", param, ctx)
            out.append(int(t))
        if not out:
            self.fail("no architecture given", param, ctx)
        return tuple(sorted(set(out)))


WHEEL_DIR_FIX = "Pass a directory you can write to (or a new one inside such a directory), or leave --wheel-dir out."


def copy_into(wheel: Path, directory: Path) -> Path:
    """Copy `wheel` into `directory` (made, with its parents, when missing) as report files are written: the
    directory never holds half a wheel under the wheel's name, and a failure (OSError) leaves nothing made."""
    from kcuda_validate.report import replace_atomically

    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        shutil.copy2(wheel, tmp)  # the bytes, then the mode and times of the cached wheel

    target = directory / wheel.name
    replace_atomically(target, fill)
    return target


def setup_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `setup` (validate-all --setup runs it with the defaults)."""
    opts = [
        click.option(
            "--toolkit",
            type=click.Choice(["auto", "system", "pypi"]),
            default="auto",
            show_default=True,
            help="CUDA toolkit: a system one that fits the driver, else the package index's (auto), or force one.",
        ),
        click.option(
            "--arch",
            "archs",
            type=ArchList(),
            help="Build for these compute capabilities (e.g. 80,90) instead of this machine's GPUs.",
        ),
        click.option(
            "--cuda",
            "cuda",
            metavar="X.Y",
            help="Newest CUDA the target driver supports (default: this machine's driver).",
        ),
        click.option(
            "--jobs", type=click.IntRange(min=1), help="Parallel compile jobs (default: cores, capped by memory)."
        ),
        click.option("--force", is_flag=True, help="Rebuild even when a matching build is installed or cached."),
        click.option(
            "--sdist",
            type=click.Path(),  # a str, judged by engine.install.check_sdist: one message per kind of bad file
            help="Build this llama-cpp-python sdist (offline machines) instead of downloading the locked one.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("setup")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (GPUs, toolkit, packages, commands, disk, time) only; exit 0, or the code of its refusal.",
)
@click.option(
    "--wheel-dir",
    type=click.Path(path_type=Path),  # judged by check_writable_dir: one message per kind of bad destination
    help="Also copy the built wheel here.",
)
@click.option(
    "--wheel",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Install this wheel (from `setup --wheel-dir` on another machine) if it fits these GPUs; never build.",
)
@setup_options
@output_options
@click.pass_context
def setup(ctx: click.Context, /, dry_run: bool, wheel_dir: Path | None, wheel: Path | None, **kw: Any) -> int:
    """Build (or reuse) a CUDA llama-cpp-python for this machine's GPUs and install it, verified, into this
    environment. Needs only the NVIDIA driver: a CUDA toolkit comes from the package index when none fits."""
    from kcuda_validate.engine.setup import setup_checks
    from kcuda_validate.report import Report

    ui = make_output(ctx, **kw)
    if wheel is not None and (kw.get("force") or kw.get("sdist") is not None):
        from kcuda_validate.errors import UsageError

        raise UsageError(
            "--wheel: installs a built wheel; --force and --sdist (they build) do not apply", fix="Drop one."
        )
    if wheel_dir is not None:  # before the plan, a dry run's too: not found only after a build of many minutes
        check_writable_dir(wheel_dir, "--wheel-dir", WHEEL_DIR_FIX)
    report = Report("setup")
    result = run_setup_step(ui, {**kw, "wheel": wheel}, dry_run=dry_run)
    report.add(*setup_checks(result))
    report.sections["setup"] = result.to_json()
    facts = result.plan.facts
    if facts is not None and facts.driver_version:
        report.driver = {"driver_version": facts.driver_version, "cuda_version": facts.driver_cuda}
    if dry_run and ui.human:
        ui.note("\n".join(plan_lines(result.plan)), stdout=True)
    # The result first, then the files: the report files (ui.result), then the wheel's copy, each attempted
    # whatever became of the other; a failure is one error naming each, exit 2 or the run's own code.
    try:
        ui.result(report)
    except KcudaError as exc:
        unwritten: KcudaError | None = exc
    else:
        unwritten = None
    uncopied = None
    if wheel_dir is not None and result.wheel is not None:
        try:
            copy_into(result.wheel, wheel_dir)
        except OSError as exc:
            uncopied = f"--wheel-dir {wheel_dir}: the wheel could not be copied there ({exc.strerror or exc})"
    if uncopied is not None:
        code = report.exit_code if report.exit_code != ExitCode.OK else ExitCode.USAGE
        if unwritten is not None:
            raise KcudaError(f"{uncopied}; {unwritten.message}", fix=unwritten.fix, exit_code=code)
        raise KcudaError(f"{uncopied}; the result above stands", fix=WHEEL_DIR_FIX, exit_code=code)
    if unwritten is not None:
        raise unwritten
    if result.next_command and ui.human and result.outcome in ("installed", "nothing"):
        ui.note(f"Next: {result.next_command}")
    return int(report.exit_code)
