"""The one error boundary: exceptions become a one-line message and a documented exit code.

--debug or KCUDA_DEBUG=1 add the traceback of an unexpected error (exit 70) on
stderr; the exit code and the Error:/Fix: lines stay what they are without it,
and an expected error (a KcudaError) gets no traceback there, only in the log
file. Bugs are re-raised under pytest so tests see them instead of a friendly
message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from kcuda_validate import signals
from kcuda_validate.cli._output import error_text
from kcuda_validate.errors import ExitCode, Interrupted, KcudaError
from kcuda_validate.logs import setup_logging
from kcuda_validate.safetext import safe

log = logging.getLogger("kcuda_validate.cli")


# Set by the --debug option's callback (cli._common.output_options), so only the option click parsed counts: not a
# value that happens to read `--debug` (`infer --prompt --debug`), nor an argument after `--`. Reset by each run.
_debug_option = False


def note_debug(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool | None:
    """Callback of --debug, before or after the command name."""
    global _debug_option
    if value and not ctx.resilient_parsing:
        _debug_option = True
    return value


def _debug_requested() -> bool:
    return _debug_option or os.environ.get("KCUDA_DEBUG", "") not in ("", "0")


def _traceback(exc: BaseException) -> None:
    """--debug's traceback on stderr, before the Error: lines (which stay the last thing said)."""
    _safe_excepthook(type(exc), exc, exc.__traceback__)


def _say(message: str, fix: str | None = None, show_log: bool = True) -> None:
    sys.stderr.write(error_text(message, fix, show_log))
    sys.stderr.flush()


def _safe_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """--debug tracebacks quote exception texts (URLs among them): printed through safetext.safe too."""
    import traceback

    sys.stderr.write(safe("".join(traceback.format_exception(kind, value, tb))))
    sys.stderr.flush()


def _command_path(argv: list[str]) -> str | None:
    """The command a parser error without a context belongs to (`validate-all --max-tokens` with no value):
    the first argument that names one, so the message and its fix name the command, not only the tool."""
    from kcuda_validate.cli import cli

    name = next((a for a in argv if a in cli.commands), None)
    return None if name is None else f"kcuda-validate {name}"


def run_with_boundary(invoke: Callable[[], Any], args: list[str] | None = None) -> int:
    """Run the command; its exit code. SIGTERM unwinds like Ctrl-C (the reports are still written, the worker is
    stopped), and only the first SIGINT or SIGTERM does: later ones are ignored while that stop finishes (see
    kcuda_validate.signals)."""
    try:
        return _run(invoke, args)
    finally:
        signals.settle()


def _interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    log.info("interrupted by %s", name)
    _say(f"interrupted by {name}", show_log=False)
    return int(ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED)


def _tolerant_streams() -> None:
    """A stdout or stderr whose encoding cannot spell a character (PYTHONIOENCODING=ascii, a locale Python's UTF-8
    mode does not cover) writes it as an escape (`\\u2014`) instead of failing the run with exit 70."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, io.UnsupportedOperation):
                stream.reconfigure(errors="backslashreplace")


def _run(invoke: Callable[[], Any], args: list[str] | None) -> int:
    global _debug_option
    argv = list(sys.argv[1:] if args is None else args)
    _tolerant_streams()
    setup_logging()
    sys.excepthook = _safe_excepthook
    log.info("start: kcuda-validate %s", " ".join(argv))
    _debug_option = False
    signals.install()
    try:
        result = invoke()
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else _command_path(argv)
        where = f"{path}: " if path else ""
        hint = f"See `{path or 'kcuda-validate'} --help`."
        log.info("usage error: %s", exc.format_message())
        _say(where + exc.format_message().replace("\n", " "), hint, show_log=False)
        return int(ExitCode.USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        log.info("interrupted")
        _say("interrupted", show_log=False)
        return int(ExitCode.INTERRUPTED)
    except Interrupted as exc:
        return _interrupted(exc.signum)
    except KcudaError as exc:
        # Expected: --debug changes neither the code nor the lines; its traceback goes to the log only.
        log.info("error (%s): %s", exc.exit_code.reason, exc.message, exc_info=_debug_requested())
        _say(exc.message, exc.fix, show_log=exc.exit_code != ExitCode.USAGE)
        return int(exc.exit_code)
    except BrokenPipeError:
        return 0
    except ImportError as exc:
        # A broken or mismatched install (e.g. huggingface-hub 1.x under code written for 2.x), not a bug here.
        log.exception("dependency import failed")
        if _debug_requested():
            _traceback(exc)
        _say(
            f"a dependency is missing or incompatible: {exc}",
            "Reinstall the tool's locked dependencies: `uv sync --locked --inexact` in the checkout, or run it "
            "through `./run kcuda-validate ...`, which syncs; `kcuda-validate --version` lists what is installed.",
        )
        return int(ExitCode.INTERNAL)
    except Exception as exc:
        log.exception("internal error")
        if "PYTEST_CURRENT_TEST" in os.environ:
            raise
        fix = "Rerun with --debug and report the bug with the log file."
        if _debug_requested():
            _traceback(exc)
            fix = "Report the bug with this traceback and the log file."
        _say(f"internal error: {type(exc).__name__}: {exc}", fix)
        return int(ExitCode.INTERNAL)
    code = int(result) if isinstance(result, int) else 0
    log.info("exit %d", code)
    return code
