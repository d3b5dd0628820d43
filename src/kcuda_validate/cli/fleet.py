"""`kcuda-validate fleet REPORT...`: many nodes' JSON reports as one table, with outliers and mixed versions.

The table is plain fixed-width text, not a rich table: rich takes seconds for thousands of rows, and a fleet
report is read on exactly those (bench/bench_fleet.py). Text from the reports (host names, versions, file
names) has its control characters spelled out, so a report cannot drive the terminal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from kcuda_validate.cli._common import make_output, output_options
from kcuda_validate.cli._output import refuse_unwritten
from kcuda_validate.safetext import spelled_out

COLUMNS = (
    "Node",
    "GPU",
    "Command",
    "Verdict",
    "Stopped at",
    "Driver",
    "CUDA",
    "Engine",
    "Gen tok/s",
    "TTFT ms",
    "J/token",
)
RIGHT = {"Gen tok/s", "TTFT ms", "J/token"}


@click.command("fleet")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="REPORT...")
@output_options
@click.pass_context
def fleet(ctx: click.Context, /, reports: tuple[Path, ...], **kw: Any) -> int:
    """Many nodes' JSON reports (files, or directories of *.json) as one table: verdicts, versions, speed,
    outliers and mixed drivers or engines. Exit 0 when every node passed, 1 otherwise."""
    from kcuda_validate.errors import UsageError
    from kcuda_validate.fleet import NoReportsError, file_identity, find_report_files, load_files

    ui = make_output(ctx, **kw)
    refuse_unwritten(
        "fleet",
        {"--junit-xml": ui.opts.junit_path, "--prometheus": ui.opts.prometheus_path},
        "each node's own run writes one",
        "Leave {option} out; `--report PATH` writes the fleet JSON.",
    )
    try:
        files = find_report_files(list(reports))
    except NoReportsError as exc:
        raise UsageError(
            str(exc), fix="Name report files written by `--json`/`--report`, or directories of them."
        ) from None
    dest = ui.opts.report_path
    if dest is not None and file_identity(dest) in {file_identity(f) for f in files}:
        raise UsageError(  # checked before a report is read: the fleet JSON would replace one of them
            f"--report {dest}: is one of the REPORT files, which the fleet JSON would replace",
            fix="Write the fleet JSON to a path that is not one of the reports.",
        )
    summary = load_files(files)
    ui.result(_Result(summary), line=spelled_out(summary.line) if ui.opts.quiet else render(summary))
    return summary.exit_code


# Accepted (before or after the command name, as everywhere) only to be refused with a message that says why,
# so they are left out of fleet's --help.
for _param in fleet.params:
    if _param.name in ("junit_path", "prometheus_path") and isinstance(_param, click.Option):
        _param.hidden = True


class _Result:
    """What Output.result needs of a result: the JSON document, the log lines, the exit code."""

    def __init__(self, summary: Any) -> None:
        self.summary = summary

    @property
    def exit_code(self) -> Any:
        from kcuda_validate.errors import ExitCode

        return ExitCode(self.summary.exit_code)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.summary.to_json()
        return doc

    def log(self, logger: logging.Logger) -> None:
        s = self.summary
        for p in s.problems:
            logger.info("fleet: unreadable %s", p.message)
        for o in s.outliers:
            logger.info("fleet: outlier %s", o.message)
        for m in s.mixed:
            logger.info("fleet: mixed %s", m.message)
        logger.info("fleet: %s", s.line)


def render(summary: Any) -> str:
    """The human result: the table, then the unreadable files, outliers, mixed versions and the verdict line."""
    from kcuda_validate.fleet import OUTLIER_BELOW_MEDIAN, OUTLIER_MIN_PEERS, plural, row_labels

    labels = row_labels(summary.rows)
    table = [
        (
            labels[r],
            r.gpu_label,
            r.command,
            r.verdict,
            r.stopped_at or "-",
            r.driver or "n/a",
            r.cuda or "n/a",
            r.engine or "n/a",
            _num(r.gen_tps, "{:.1f}"),
            _num(r.ttft_ms, "{:.1f}"),
            _num(r.j_per_token, "{:.3f}"),
        )
        for r in summary.rows
    ]
    files, nodes = summary.files, len(summary.nodes)
    out = [f"Fleet: {files} report {plural(files, 'file')}, {nodes} {plural(nodes, 'node')}", ""]
    if table:
        out += _columns([COLUMNS, *([spelled_out(c) for c in row] for row in table)])
        out.append("")
    if summary.problems:
        out.append("Files that gave no report (each counts as a failure):")
        out += [f"  FAIL {spelled_out(p.message)}" for p in summary.problems]
        out.append("")
    if summary.outliers:
        out.append(
            f"Outliers (gen tok/s ≥ {OUTLIER_BELOW_MEDIAN:.0%} below the median of ≥ {OUTLIER_MIN_PEERS} other nodes"
            " with the same GPU model, model file and settings):"
        )
        out += [f"  {spelled_out(o.message)}" for o in summary.outliers]
        out.append("")
    if summary.mixed:
        out.append("Mixed versions:")
        out += [f"  {spelled_out(m.message)}" for m in summary.mixed]
        out.append("")
    if summary.superseded:
        out.append(
            f"{summary.superseded} older {'report' if summary.superseded == 1 else 'reports'} superseded"
            " (the newest per node, GPU and command counts)."
        )
    cpu = sum(1 for r in summary.rows if r.device_mode == "cpu")
    if cpu:
        out.append(f"{cpu} {'row is a CPU run' if cpu == 1 else 'rows are CPU runs'}: not a GPU validation.")
    out.append(spelled_out(summary.line))  # it names the failed nodes: text from the reports
    return "\n".join(out)


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _columns(rows: list[Any]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(w) if COLUMNS[i] in RIGHT else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines
