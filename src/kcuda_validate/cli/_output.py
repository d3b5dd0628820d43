"""One output object for every command: human (rich), JSON, or quiet.

stdout carries the result (the streamed text and the final table, or exactly
one JSON document); progress, hints and errors go to stderr so scripts can
parse stdout. Colour follows the terminal: none when piped or NO_COLOR is set.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kcuda_validate.logs import log_path
from kcuda_validate.safetext import as_generated, safe, safe_json, safe_stream, spelled_out


def error_text(message: str, fix: str | None = None, show_log: bool = True) -> str:
    """The Error:, Fix: and Log: lines, one line each whatever a path in them holds (a newline, an ESC sequence)."""
    lines = [f"Error: {message}"]
    if fix:
        lines.append(f"Fix: {fix}")
    path = log_path()
    if show_log and path is not None:
        lines.append(f"Log: {path}")
    return "\n".join(spelled_out(safe(line)) for line in lines) + "\n"


@dataclass
class OutputOptions:
    json: bool = False
    verbose: int = 0
    quiet: bool = False
    report_path: Path | None = None
    junit_path: Path | None = None
    prometheus_path: Path | None = None
    ready_path: Path | None = None  # validate-all --ready-file
    debug: bool = False
    width: int | None = None

    @property
    def mode(self) -> str:
        return "json" if self.json else ("quiet" if self.quiet else "human")


class Output:
    def __init__(self, opts: OutputOptions, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.opts = opts
        # Everything this object prints passes through safetext.safe: any bytes survive, no credential leaves.
        self._stdout = safe_stream(stdout or sys.stdout)
        self._stderr = safe_stream(stderr or sys.stderr)
        self._console: Any = None
        self._err_console: Any = None
        self._status: Any = None
        self._streamed = False

    # rich is imported lazily: `--help` and `--version` must start fast.
    @property
    def console(self) -> Any:
        if self._console is None:
            self._console = _make_console(self._stdout, self.opts.width)
        return self._console

    @property
    def err_console(self) -> Any:
        if self._err_console is None:
            self._err_console = _make_console(self._stderr, self.opts.width)
        return self._err_console

    @property
    def human(self) -> bool:
        return self.opts.mode == "human"

    def progress(self, message: str) -> None:
        """A transient status line on stderr (terminals only)."""
        if self.opts.mode != "human" or not self._stderr.isatty():
            return
        if self._status is None:
            self._status = self.err_console.status(message)
            self._status.start()
        else:
            self._status.update(message)

    def end_progress(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def stream(self, text: str) -> None:
        """Generated text as it arrives (human mode only; JSON carries the full text instead).

        Its control codes are spelled out (`as_generated`): the model's text must not drive the terminal."""
        if self.opts.mode != "human":
            return
        if not self._streamed:
            self.end_progress()
            self._streamed = True
        self._stdout.write(as_generated(text))
        self._stdout.flush()

    def end_stream(self) -> None:
        if self._streamed:
            self._stdout.write("\n")
            self._stdout.flush()
            self._streamed = False

    def note(self, text: str, stdout: bool = False) -> None:
        """Plain lines for a person (human mode only): the plan on stderr, or on stdout when it is the result."""
        if self.opts.mode != "human":
            return
        self.end_progress()
        stream = self._stdout if stdout else self._stderr
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()

    def build_bar(self) -> BuildBar:
        """A progress bar with an ETA for a long build (ninja's [n/N]); quiet unless on a terminal."""
        return BuildBar(self)

    def download_bar(self) -> DownloadBar:
        """A model download's bar (size, speed, ETA) on stderr; drawn only on a terminal, in human mode."""
        return DownloadBar(self)

    def error(self, message: str, fix: str | None = None, show_log: bool = True) -> None:
        """One line on stderr naming the input; the fix and the log file on the next lines.

        `show_log=False` for an interrupt (exit 130/143): the message is all the log holds about it."""
        self.end_progress()
        self.end_stream()
        self._stderr.write(error_text(message, fix, show_log))
        self._stderr.flush()

    def result(self, report: Any, line: str | None = None) -> None:
        """Print the final result in the chosen mode, then write any requested report files.

        `line`: a command whose result is one line (`health`) prints it instead of the table (and with -q).

        Printing comes first so that a report file that cannot be written (the disk filled up during a
        long run) still leaves the user the result; the write failure is then the error."""
        self.end_progress()
        self.end_stream()
        doc = safe_json(report.to_json())
        doc_text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        report.log(logging.getLogger("kcuda_validate.report"))
        if self.opts.mode == "json":
            self._stdout.write(doc_text)
            self._stdout.flush()
        elif line is not None:
            self._stdout.write(line + "\n")
            self._stdout.flush()
        else:
            from kcuda_validate.render import render_report

            render_report(report, self.console, verbose=self.opts.verbose, quiet=self.opts.quiet)
        # Each file is attempted even when the other failed: one full disk should not cost both.
        failures: list[str] = []
        if self.opts.report_path is not None:
            failures += _write_report(self.opts.report_path, "--report", doc_text)
        if self.opts.junit_path is not None:
            failures += _write_report(self.opts.junit_path, "--junit-xml", safe(report.to_junit_xml()))
        if self.opts.prometheus_path is not None:
            from kcuda_validate.prometheus import textfile

            failures += _write_report(self.opts.prometheus_path, "--prometheus", textfile(doc))
        if self.opts.ready_path is not None:  # last: it opens a gate only when everything else succeeded
            from kcuda_validate.readyfile import settle

            failures += settle(self.opts.ready_path, doc, others_written=not failures)
        if failures:
            from kcuda_validate.errors import ExitCode, KcudaError

            raise KcudaError(
                "; ".join(failures) + "; the result above stands",
                fix=WRITABLE_FIX,
                exit_code=report.exit_code if report.exit_code != ExitCode.OK else ExitCode.USAGE,
            )


WRITABLE_FIX = "Pass a path in a directory you can write to, or leave the option out."
PROBE_BYTES = 64 * 1024  # what the up-front check writes (and removes) where an output file will go
SHORTER = "Pass a shorter file name."


def check_writable(path: Path, option: str, fix: str = WRITABLE_FIX) -> None:
    """Refuse a destination that cannot be written before the run, not after minutes of it.

    Only a regular file is ever written (replaced whole, via a temp file): a path that is a device, a FIFO, a
    socket or a directory, or a symlink to one, is refused, so `--report /dev/null` can never replace the
    device when the tool runs as root. A symlink to a file is written through (the link stays). Missing parent
    directories are created at the end (only then: an interrupted run leaves nothing behind), so the probe is a
    temporary file in the nearest directory that exists now."""
    from kcuda_validate.errors import UsageError
    from kcuda_validate.paths import special_kind
    from kcuda_validate.report import output_target

    existing, missing = _existing_and_missing(Path(path))
    _check_new_names(
        path, option, existing, missing, lambda p: "file name" if p == Path(path).name else f"directory name {p[:40]}…"
    )
    try:
        target = output_target(Path(path))
    except OSError as exc:  # a symlink loop, or a path over PATH_MAX
        raise _unresolvable(path, option, exc, fix) from (None if exc.errno == errno.ENAMETOOLONG else exc)
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        via = f" (the symlink leads to {target})" if target != Path(path) else ""
        raise UsageError(f"{option} {path}: is {special_kind(st.st_mode)}, not a file to write{via}", fix=fix)
    where = target.absolute().parent
    while not where.exists():
        if where.is_symlink():
            raise UsageError(
                f"{option} {path}: {where} is a symlink to {os.readlink(where)}, which does not exist",
                fix=fix,
            )
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"{option} {path}: {where} is not a directory", fix=fix)
    if len(os.fsencode(target.name)) > _name_max(where):
        raise UsageError(f"{option} {path}: the file it leads to, {target}, has too long a name", fix=SHORTER)
    _probe(where, option, path, fix)


def check_writable_dir(path: Path, option: str, fix: str = WRITABLE_FIX) -> None:
    """`check_writable` for a directory a file is copied into at the end (`setup --wheel-dir`).

    An existing path (or a symlink to one) must be a directory; a missing one is made at the end, so the nearest
    directory above it that exists is the one probed, and a file or a dangling symlink in its way is refused."""
    from kcuda_validate.errors import UsageError
    from kcuda_validate.paths import special_kind

    existing, to_make = _existing_and_missing(Path(path))
    _check_new_names(
        path, option, existing, to_make, lambda p: f"directory name {p[:40]}…", "Pass a shorter directory name."
    )
    here = Path(path).absolute()
    missing: list[str] = []
    while True:
        try:
            st = os.stat(here)
            break
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(here):
                raise UsageError(
                    f"{option} {path}: {here} is a symlink to {os.readlink(here)}, which does not exist", fix=fix
                ) from None
            if here == here.parent:
                raise UsageError(f"{option} {path}: cannot be resolved", fix=fix) from None
            missing.append(here.name)
            here = here.parent
        except OSError as exc:  # a symlink loop, or a path over PATH_MAX
            raise _unresolvable(path, option, exc, fix) from None
    if not stat.S_ISDIR(st.st_mode):
        what = "is" if not missing else f"{here} is"
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else special_kind(st.st_mode)
        raise UsageError(f"{option} {path}: {what} {kind}, not a directory", fix=fix)
    _probe(here, option, path, fix)


def _check_new_names(
    path: Path, option: str, existing: Path, names: list[str], what: Callable[[str], str], fix: str = SHORTER
) -> None:
    """Each name still to make below `existing` fits its filesystem's NAME_MAX (`what` words which name it is)."""
    from kcuda_validate.errors import UsageError

    name_max = _name_max(existing)
    for part in names:
        if len(os.fsencode(part)) > name_max:
            raise UsageError(
                f"{option} {path}: the {what(part)} is {len(os.fsencode(part))} bytes, more than this filesystem "
                "allows",
                fix=fix,
            )


def _unresolvable(path: Path, option: str, exc: OSError, fix: str) -> Exception:
    """The usage error for a destination that cannot be resolved: a symlink loop, or a path over PATH_MAX."""
    from kcuda_validate.errors import UsageError

    if exc.errno == errno.ENAMETOOLONG:
        size = len(os.fsencode(os.path.abspath(path)))
        return UsageError(f"{option} {path}: the path is {size} bytes, more than this system allows", fix=SHORTER)
    return UsageError(f"{option} {path}: cannot be resolved ({exc.strerror or exc})", fix=fix)


def _probe(where: Path, option: str, path: Path, fix: str) -> None:
    """Write and remove PROBE_BYTES in `where`: the files of `option` can be made there, and there is room."""
    from kcuda_validate.errors import UsageError

    try:
        fd, probe = tempfile.mkstemp(prefix=".kcuda-validate-probe.", dir=where)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in {where} ({exc.strerror or exc})", fix=fix) from exc
    try:
        # A full disk still lets an empty file be made: only writing finds it (and a quota). A report is
        # tens of KiB; a filesystem without PROBE_BYTES free is full, better said now than after the run.
        written = 0
        while written < PROBE_BYTES:
            written += os.write(fd, bytes(PROBE_BYTES - written))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(
                f"{option} {path}: no space left in {where} ({exc.strerror})",
                fix="Free some space there, or pass a path on another filesystem.",
            ) from None
        raise UsageError(f"{option} {path}: cannot write in {where} ({exc.strerror or exc})", fix=fix) from exc
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_distinct(paths: dict[str, Path | None]) -> None:
    """Two options naming one file would overwrite each other (or a gate would delete the report)."""
    from kcuda_validate.errors import UsageError
    from kcuda_validate.report import output_target

    seen: dict[str, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = os.path.normcase(os.path.abspath(output_target(Path(path))))
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {option} both name {path}: each file would overwrite the other",
                fix="Give each option its own file.",
            )
        seen[key] = option


def refuse_unwritten(command: str, options: dict[str, Path | None], why: str, fix: str) -> None:
    """Output-file options a command accepts (before or after its name, as everywhere) only to refuse: it writes
    no such file. The first one given is a usage error; `fix` may name it as `{option}`."""
    from kcuda_validate.errors import UsageError

    for option, path in options.items():
        if path is not None:
            raise UsageError(f"{option}: {command} writes no {option[2:]} file ({why})", fix=fix.format(option=option))


def _existing_and_missing(path: Path) -> tuple[Path, list[str]]:
    """The nearest directory of `path` that exists, and the names below it still to make (the file's included)."""
    missing: list[str] = [path.name]
    here = path.absolute().parent
    while not os.path.isdir(here) and here != here.parent:
        missing.append(here.name)
        here = here.parent
    return here, missing


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _write_report(path: Path, option: str, text: str) -> list[str]:
    """Write one report file: [] when written, else the failure as a clause naming the option and path.

    The caller raises once both files were tried; the run's own failure, if any, keeps its more specific
    exit code."""
    from kcuda_validate.report import write_atomic

    try:
        write_atomic(path, text)
    except OSError as exc:
        return [f"{option} {path}: the report could not be written ({exc.strerror or exc})"]
    return []


def _make_console(stream: TextIO, width: int | None) -> Any:
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(
        file=stream,
        width=width or (None if is_tty else 100),
        no_color=no_color,
        color_system=None if (no_color or not is_tty) else "auto",
        highlight=False,
        emoji=False,
        soft_wrap=False,
        force_terminal=None if is_tty else False,
    )


class BuildBar:
    """rich's progress bar on stderr for a terminal; elsewhere a line every 10 % so CI logs show life."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._progress: Any = None
        self._task: Any = None
        self._last_decile = -1

    def update(self, p: Any) -> None:
        if self._out.opts.mode != "human":
            return
        if not self._out._stderr.isatty():
            decile = p.done * 10 // max(1, p.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self._out._stderr.write(f"build: [{p.done}/{p.total}] {p.target}\n")
                self._out._stderr.flush()
            return
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._out.end_progress()
            self._progress = Progress(
                TextColumn("building"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=self._out.err_console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=p.total)
        self._progress.update(self._task, completed=p.done, total=p.total, description=p.target)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class DownloadBar:
    """rich's download bar on stderr, one line whatever the width: the numbers keep their room, the bar shrinks
    and the label is cut short (…). Nothing off a terminal: a CI log gets the download's time in the report."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._progress: Any = None
        self._task: Any = None

    def update(self, p: Any) -> None:
        if self._out.opts.mode != "human" or not self._out._stderr.isatty():
            return
        if self._progress is None:
            from rich.markup import escape
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.table import Column

            self._out.end_progress()
            console = self._out.err_console
            label_width = max(12, console.width - 14 - 10 - 7 - 6 - 4)  # the numbers, a 6-cell bar, the gaps
            self._progress = Progress(
                TextColumn(
                    "{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=label_width)
                ),
                BarColumn(bar_width=None, table_column=Column(min_width=6, ratio=1)),
                DownloadColumn(table_column=Column(no_wrap=True, min_width=14)),
                TransferSpeedColumn(table_column=Column(no_wrap=True, min_width=10)),
                TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task(escape(p.label), total=p.total, completed=p.done)
            return
        self._progress.update(self._task, completed=p.done, total=p.total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
