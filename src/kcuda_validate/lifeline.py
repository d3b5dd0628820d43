"""Child processes tied to this one: the model worker and the two short-lived build probes.

A tied child ends itself at the EOF of a "lifeline" pipe whose write end only its parent holds: EOF comes
however the parent ends (SIGKILL included), and also when the parent closes it because nobody will read the
result (a deadline, a stopped run). os.pipe() fds are not inheritable, so only this child gets the read end
(pass_fds) and no other child holds the write end open. On Linux PR_SET_PDEATHSIG adds a kernel-side SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

LIFELINE_ENV = "KCUDA_WORKER_LIFELINE"  # the inherited fd of the pipe to watch
PARENT_ENV = "KCUDA_WORKER_PARENT"  # the parent's pid
PDEATHSIG_ENV = "KCUDA_WORKER_PDEATHSIG"


def spawn_tied(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
) -> tuple[subprocess.Popen[str], int]:
    """Start `cmd` tied to this process; (the process, the lifeline's write end: close it to let the child go).

    An exception that lands while the child starts (a deadline's SIGALRM, Ctrl-C: health's 1 ms timeout hit the
    exec wait) closes the write end here, so a child nobody holds still ends itself, a hung one included."""
    read_end, write_end = os.pipe()
    child_env = dict(os.environ if env is None else env) | {LIFELINE_ENV: str(read_end), PARENT_ENV: str(os.getpid())}
    if threading.current_thread() is threading.main_thread():
        # PR_SET_PDEATHSIG fires when the forking *thread* ends: only safe from the main thread.
        child_env[PDEATHSIG_ENV] = "1"
    try:
        proc: subprocess.Popen[str] = subprocess.Popen(list(cmd), env=child_env, pass_fds=(read_end,), **popen)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return proc, write_end


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _set_pdeathsig() -> bool:
    """Ask the kernel to SIGKILL this process when the thread that forked it ends (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _parent_gone() -> None:
    """Stop now, with anything this child started (when it leads a process group): nobody will read a result."""
    with contextlib.suppress(OSError):
        if os.getpgid(0) == os.getpid():  # the parent made this process a group leader
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _watch_lifeline(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    _parent_gone()


def die_with_parent(environ: Mapping[str, str] = os.environ) -> None:
    """Tie this process's life to the parent that started it with `spawn_tied` (see the module docstring).

    KCUDA_WORKER_PDEATHSIG=1: the parent forked from its main thread, whose end is the process's end, so
    PR_SET_PDEATHSIG cannot fire early. KCUDA_WORKER_PARENT: the parent's pid, to close the race where it
    died before prctl took effect. KCUDA_WORKER_LIFELINE: the inherited fd of the pipe to watch."""
    if environ.get(PDEATHSIG_ENV) == "1":
        _set_pdeathsig()
    parent = environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        _parent_gone()
    fd = environ.get(LIFELINE_ENV, "")
    if fd.isdigit():
        threading.Thread(target=_watch_lifeline, args=(int(fd),), name="lifeline", daemon=True).start()
    if environ is os.environ:  # this process's own tie: a child it starts must not read it as its own
        for name in (LIFELINE_ENV, PARENT_ENV, PDEATHSIG_ENV):
            os.environ.pop(name, None)
