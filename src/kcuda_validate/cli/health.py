"""`kcuda-validate health`: a node health check for node-problem-detector, Slurm and NHC.

One line on stdout (at most 80 ASCII characters), exit 0 healthy, 1 a problem, anything else unknown.
`--slurm` also drains this node when it fails, and resumes it only from a drain this tool set.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from kcuda_validate import defaults
from kcuda_validate.cli._common import FiniteFloatRange, make_output, output_options

MAX_TIMEOUT_S = defaults.HEALTH_MAX_TIMEOUT_S


class HealthCommand(click.Command):
    """Its --help names the checks it runs, read from the registry's node-health tag (so it cannot drift)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from kcuda_validate.detect import NODE_HEALTH

        super().format_help_text(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text("Runs the node-health checks: " + ", ".join(NODE_HEALTH) + ".")


@click.command("health", cls=HealthCommand)
@click.option(
    "--check",
    "check_ids",
    multiple=True,
    metavar="ID",
    help="Run only this check (repeatable; default: the node-health subset of `detect --list-checks`).",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.1, max=MAX_TIMEOUT_S),
    default=None,
    help="Seconds (0.1 to 3600) the checks may take before the answer is 'unknown' (exit 124). Default 4 (30"
    " with --slurm); the scontrol calls get what is left, at least 5 s.",
)
@click.option(
    "--slurm",
    is_flag=True,
    help="Slurm HealthCheckProgram: drain this node when it fails (reason 'kcuda-validate: ...'), and resume"
    " it when it passes, only if this tool drained it.",
)
@click.option("--node", metavar="NAME", help="Slurm node name (default: $SLURMD_NODENAME, else the short host name).")
@output_options
@click.pass_context
def health(
    ctx: click.Context, /, check_ids: tuple[str, ...], timeout: float | None, slurm: bool, node: str | None, **kw: Any
) -> int:
    """Node health in one line from detect's node-health checks. No PyTorch, no model."""
    from kcuda_validate.errors import ExitCode, KcudaError, UsageError
    from kcuda_validate.nodehealth import (
        DEFAULT_TIMEOUT_S,
        SLURM_TIMEOUT_S,
        Slurm,
        node_name,
        run_health,
        slurm_until,
    )
    from kcuda_validate.report import Report

    ui = make_output(ctx, **kw)
    if node is not None and not slurm:
        raise UsageError("--node: only means something with --slurm", fix="Add --slurm or drop --node.")
    timeout_s = timeout if timeout is not None else (SLURM_TIMEOUT_S if slurm else DEFAULT_TIMEOUT_S)
    report = Report("health")  # its clock covers the checks and the Slurm step
    started = time.monotonic()
    slurmctl = Slurm(node or node_name(os.environ), os.environ) if slurm else None  # scontrol found, before work
    result = run_health(check_ids, timeout_s)
    report.add(*result.checks)
    report.sections["health"] = result.to_json()
    if result.report is not None:
        detect = result.report
        if detect.driver is not None:
            report.driver = {"driver_version": detect.driver.driver_version, "cuda_version": detect.driver.cuda_version}
        if detect.usable_gpus:
            report.gpu = detect.usable_gpus[0].to_json()
    # The process answers node-problem-detector's way (0, 1, or unknown); each check keeps its specific code.
    report.exit_override = ExitCode(result.exit_code)
    if slurmctl is not None:
        slurmctl.until = slurm_until(started, timeout_s)
        try:
            outcome = slurmctl.act(result)
        except KcudaError as exc:  # the verdict still goes out (and into the report), then the Slurm error
            report.sections["slurm"] = {"node": slurmctl.node, "error": exc.message}
            ui.result(report, line=result.line)
            raise
        report.sections["slurm"] = outcome.to_json()
        ui.note(f"slurm: node {outcome.node.name} {outcome.decision.why}")
    ui.result(report, line=result.line)
    return result.exit_code
