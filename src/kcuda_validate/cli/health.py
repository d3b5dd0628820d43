"""`kcuda-validate health`: a node health check for node-problem-detector, Slurm and NHC.

One line on stdout (at most 80 ASCII characters), exit 0 healthy, 1 a problem, anything else unknown.
`--slurm` also drains this node when it fails, and resumes it only from a drain this tool set.
"""

from __future__ import annotations

import os
from typing import Any

import click

from kcuda_validate.cli._common import FiniteFloatRange, make_output, output_options


@click.command("health")
@click.option(
    "--check",
    "check_ids",
    multiple=True,
    metavar="ID",
    help="Run only this check (repeatable; default: the node-health subset of `detect --list-checks`).",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.1),
    default=None,
    help="Seconds the checks may take before the answer is 'unknown' (exit 124). Default 4 (30 with --slurm).",
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
    """Node health in one line: driver, GPUs, CUDA driver API, engine build. No PyTorch, no model."""
    from kcuda_validate.errors import ExitCode, KcudaError, UsageError
    from kcuda_validate.nodehealth import DEFAULT_TIMEOUT_S, SLURM_TIMEOUT_S, Slurm, node_name, run_health
    from kcuda_validate.report import Report

    ui = make_output(ctx, **kw)
    if node is not None and not slurm:
        raise UsageError("--node: only means something with --slurm", fix="Add --slurm or drop --node.")
    slurmctl = Slurm(node or node_name(os.environ), os.environ) if slurm else None  # scontrol found, before work
    result = run_health(
        check_ids, timeout if timeout is not None else (SLURM_TIMEOUT_S if slurm else DEFAULT_TIMEOUT_S)
    )
    report = Report("health")
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
