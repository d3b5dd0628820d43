"""One stop per run: the first SIGINT or SIGTERM starts it; later ones are ignored while it finishes.

`timeout`, systemd and Kubernetes signal the whole process group, and `uv run` forwards the signal it got as
well, so the tool sees two SIGTERMs (or a SIGTERM and a SIGINT) a moment apart; a terminal's Ctrl-C pressed
twice does the same. The first one unwinds the run in order: the worker is stopped, the stage's verdict is
kept and its one `Error:` line printed, the result is printed and the requested report files are written,
marked interrupted. A later one used to raise again somewhere in that unwinding and abort it: a second
`Error:` line, no result on stdout, no report files, or the wrong stage named.

Ignoring them keeps the stop bounded without them: the worker gets 3 s after its SIGTERM, then SIGKILL
(isolation.Worker.kill), a build's process group 10 s (engine.build), the Hub's requests run in daemon
threads nothing waits for, and the report files are small. SIGKILL (or Ctrl-\\, SIGQUIT) still ends the
process at once. Each ignored signal is recorded in the log when the run ends.

The handlers only set state and raise: nothing is logged or printed inside them (the main thread may be in
the middle of a write to the same stream or log).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from kcuda_validate.errors import Interrupted

log = logging.getLogger(__name__)

_stop: int | None = None  # the signal that started the stop, None while the run goes on
_ignored: list[int] = []  # the signals that arrived after it


def stopping() -> int | None:
    """The signal that started the stop, or None."""
    return _stop


def ignored() -> tuple[int, ...]:
    return tuple(_ignored)


def reset() -> None:
    """A new run in this process (the in-process test runner runs many)."""
    global _stop
    _stop = None
    _ignored.clear()


def _first(signum: int) -> bool:
    """True for the signal that starts the stop; any later one is only counted."""
    global _stop
    if _stop is not None:
        _ignored.append(signum)
        return False
    _stop = signum
    return True


def check() -> None:
    """Raise the stop again where the run waits (the worker's event loop), in case its first raise was lost.

    A signal handler's exception can be swallowed where Python code cannot see it: seen in a real run, a SIGTERM
    that arrived while a C extension was importing a module (`_elementtree` importing `pyexpat`) vanished, the
    stop was marked started, and the run then waited on a hung worker with every later SIGTERM ignored. Called
    only while nothing has caught the stop yet: the catchers leave the worker stage before they unwind."""
    if _stop is not None:
        raise Interrupted(_stop)


def raise_interrupted(signum: int, frame: Any) -> None:
    """SIGTERM anywhere, and SIGINT in the worker stages: `Interrupted`, once per run."""
    if _first(signum):
        raise Interrupted(signum)


def raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """SIGINT outside the worker stages: KeyboardInterrupt as Python's own handler raises it, once per run."""
    if _first(signum):
        raise KeyboardInterrupt


_OURS = (raise_interrupted, raise_keyboard_interrupt)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """The start of a run: SIGTERM unwinds like Ctrl-C (so the reports are still written and the worker is
    stopped), SIGINT still raises KeyboardInterrupt; both only once. A SIGINT this process was started
    ignoring (a background job, `nohup`) stays ignored."""
    reset()
    if not _main_thread():
        return
    signal.signal(signal.SIGTERM, raise_interrupted)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_keyboard_interrupt)


def settle() -> None:
    """The end of a run: after a stop, SIGINT and SIGTERM are ignored until the process exits.

    Python puts SIG_DFL back for its handlers when the interpreter shuts down: a late SIGTERM then killed the
    process (after its reports were written, but its status was "killed by SIGTERM" instead of exit 143)."""
    if _stop is None:
        return
    if _ignored:
        names = ", ".join(signal.Signals(s).name for s in _ignored)
        log.info("ignored during the stop started by %s: %s", signal.Signals(_stop).name, names)
    if _main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


@dataclass
class StageHandlers:
    """What `enter_worker_stage` replaced, for `leave_worker_stage`."""

    old: dict[int, Any] = field(default_factory=dict)
    outermost: bool = False


def enter_worker_stage() -> StageHandlers:
    """While a worker stage runs, SIGTERM and SIGINT raise `Interrupted` (the stage names the signal), except a
    SIGINT this process was started ignoring: a background job or a `nohup` run must not become interruptible
    by a terminal's Ctrl-C here. Still once per run."""
    if not _main_thread():
        return StageHandlers()
    # Outside a run (a test driving a Worker directly), the stop this stage saw ends with it.
    stage = StageHandlers(outermost=signal.getsignal(signal.SIGTERM) not in _OURS)
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
            continue
        stage.old[sig] = signal.signal(sig, raise_interrupted)
    return stage


def leave_worker_stage(stage: StageHandlers) -> None:
    for sig, handler in stage.old.items():
        signal.signal(sig, handler)
    if stage.outermost:
        reset()
