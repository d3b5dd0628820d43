"""`kcuda-validate exit-codes`: the exit-code table, for scripts and humans."""

from __future__ import annotations

import json

import click

from kcuda_validate.errors import ExitCode

MEANING = {
    ExitCode.OK: "passed",
    ExitCode.CHECK_FAILED: "a check failed",
    ExitCode.USAGE: "usage error (bad option or argument)",
    ExitCode.NO_GPU: "no NVIDIA driver or GPU",
    ExitCode.GPU_UNUSABLE: "GPU present but the stack cannot use it (driver, CUDA, PyTorch or llama.cpp)",
    ExitCode.MODEL_INVALID: "model file missing, unreadable, not GGUF, truncated or rejected by llama.cpp",
    ExitCode.BELOW_THRESHOLD: "below a threshold or minimum (VRAM, compute capability, speed, TTFT, memory fit)",
    ExitCode.CRASHED: "the model worker crashed (a native signal, or it exited without a result)",
    ExitCode.MODEL_NOT_FOUND: "no such repo, file or revision on the Hub (or not cached in offline mode)",
    ExitCode.HUB_UNREACHABLE: "the Hugging Face Hub is unreachable",
    ExitCode.HUB_AUTH: "gated or private repo: log in (401) or request access (403)",
    ExitCode.DISK_FULL: "no room for the model: not enough disk space, or a cache directory it cannot write",
    ExitCode.INTERNAL: (
        "internal error (a bug: please report it with the log file), or a dependency that is missing or "
        "incompatible (the message names it; reinstall the locked dependencies)"
    ),
    ExitCode.TIMEOUT: "a stage timed out (--timeout)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C / SIGINT)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}


@click.command("exit-codes")
@click.option("--json", "json_out", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def exit_codes(ctx: click.Context, /, json_out: bool) -> int:
    """Print the exit-code table shared by every command."""
    group = (ctx.obj or {}).get("output")  # the global options given before the command name
    if group is not None:
        from kcuda_validate.cli._output import refuse_unwritten
        from kcuda_validate.llm.build import invocation

        refuse_unwritten(
            "exit-codes",
            {"--report": group.report_path, "--junit-xml": group.junit_path, "--prometheus": group.prometheus_path},
            "it prints a fixed table",
            "Leave {option} out; `" + invocation() + " exit-codes --json` prints the table as JSON.",
        )
        json_out = json_out or group.json
    if json_out:
        click.echo(json.dumps({str(int(c)): {"name": c.reason, "meaning": MEANING[c]} for c in ExitCode}, indent=2))
        return 0
    for c in ExitCode:
        click.echo(f"{int(c):>4}  {c.reason:<16} {MEANING[c]}")
    return 0
