"""Run the model stages in a child process and keep the verdict whatever happens to it.

The child (kcuda_validate.worker) gets its own process group so a hang can be
killed with everything it started. A native crash becomes a `WorkerCrash`
naming the stage, the signal and the last llama.cpp lines; a timeout kills
the group; Ctrl-C or SIGTERM stops the child, frees the GPU, and surfaces as
`interrupted` so the caller can still write its reports.

The child dies with this process however it ends (SIGKILL included): it holds
the read end of a "lifeline" pipe whose write end only this process has, and
watches for its EOF; on Linux it also sets PR_SET_PDEATHSIG (see worker.py).
A SIGINT this process was started ignoring (a background job, `nohup`) stays
ignored during the worker stages; SIGTERM always stops the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kcuda_validate import signals
from kcuda_validate.errors import Interrupted
from kcuda_validate.lifeline import spawn_tied

if TYPE_CHECKING:  # the protocol imports the llm modules: not before the early worker is spawned
    from kcuda_validate.llm.loader import LoadResult
    from kcuda_validate.llm.measures import InferenceResult
    from kcuda_validate.worker_protocol import WorkerError, WorkerEvent, WorkerRequest

log = logging.getLogger(__name__)

__all__ = ["Interrupted", "Worker", "WorkerCrash", "WorkerInterrupt", "WorkerOutcome", "WorkerTimeout"]

HINTS = {
    "SIGSEGV": "A segmentation fault inside llama.cpp or the CUDA driver: update the driver and llama-cpp-python, "
    "and rerun with --n-ctx lower; check `sudo dmesg | grep -i xid` for Xid errors.",
    "SIGABRT": "llama.cpp aborted (GGML_ASSERT or CUDA error; often out of memory): read llama.cpp's last output "
    "(shown with this error, and in the report and the log file), lower --n-ctx or --gpu-layers.",
    "SIGKILL": "The kernel killed the process (out of host memory?): check `sudo dmesg | grep -i oom` for the "
    "OOM killer.",
    "SIGBUS": "A bus error reading the model (file truncated or changed while mapped, or a flaky disk).",
    "SIGILL": "An illegal instruction: llama.cpp was built for a newer CPU; rebuild with "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF".',
}
# A CPU run (--device cpu, or the --compare-cpu run) never touches the GPU: no driver, Xid or offload advice.
CPU_HINTS = HINTS | {
    "SIGSEGV": "A segmentation fault inside llama.cpp: update llama-cpp-python, and rerun with --n-ctx lower.",
    "SIGABRT": "llama.cpp aborted (GGML_ASSERT, or out of host memory): read llama.cpp's last output (shown with "
    "this error, and in the report and the log file), lower --n-ctx.",
}


def crash_hint(sig: str | None, returncode: int, cpu: bool) -> str:
    """The fix for a worker that died by `sig` (None: it exited with `returncode`)."""
    return (CPU_HINTS if cpu else HINTS).get(
        sig or "", f"The worker exited with status {returncode}; see the log file."
    )


@dataclass(frozen=True)
class WorkerCrash:
    stage: str
    signal: str | None
    returncode: int
    log_tail: tuple[str, ...]
    hint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "signal": self.signal,
            "returncode": self.returncode,
            "log_tail": list(self.log_tail),
            "hint": self.hint,
        }


@dataclass(frozen=True)
class WorkerTimeout:
    stage: str
    timeout_s: float


@dataclass(frozen=True)
class WorkerInterrupt:
    stage: str
    signum: int


@dataclass(frozen=True)
class WorkerOutcome:
    """What came back from the child. At most one of error, crash, timeout, interrupted explains a stop."""

    loaded: LoadResult | None = None
    inferred: InferenceResult | None = None
    error: WorkerError | None = None
    crash: WorkerCrash | None = None
    timeout: WorkerTimeout | None = None
    interrupted: WorkerInterrupt | None = None
    stage: str = "start"
    log_tail: tuple[str, ...] = ()


class Worker:
    """One child process running kcuda_validate.worker. Start early, then `run()`."""

    def __init__(self, env: dict[str, str] | None = None, tail: int = 40, pin: str | None = None) -> None:
        """`pin`: the CUDA_VISIBLE_DEVICES the model stages will use ("" = no GPU), known before spawning so
        the child can import llama.cpp at once; None = decided later by the request."""
        self._env = dict(os.environ if env is None else env)
        # On an abort ggml attaches gdb to print a backtrace: seconds of work, and 40+ lines of debugger output
        # that push llama.cpp's own reason (`GGML_ASSERT(...) failed`) out of the tail the crash report keeps.
        # KCUDA_DEBUG=1 keeps the backtrace, for a llama.cpp bug report.
        if self._env.get("KCUDA_DEBUG", "") in ("", "0"):
            self._env.setdefault("GGML_NO_BACKTRACE", "1")
        if pin is not None:
            self._env["CUDA_VISIBLE_DEVICES"] = pin
            self._env["KCUDA_WORKER_PIN"] = "1"
        self._tail: deque[str] = deque(maxlen=tail)
        self.proc: subprocess.Popen[str] | None = None
        self._stderr_thread: threading.Thread | None = None
        self._buf = ""
        self._done = False
        self._lifeline: int | None = None
        self._lifeline_lock = threading.Lock()

    def start(self) -> Worker:
        """Spawn now so the child's imports overlap with the parent's own checks."""
        self.proc, self._lifeline = spawn_tied(
            [sys.executable, "-m", "kcuda_validate.worker"],
            self._env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        child_log = logging.getLogger("kcuda_validate.worker.child")
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self._tail.append(line)
            child_log.debug("%s", line)
        # EOF: the child is gone. Closed here, by its only reader (left open, it is a ResourceWarning at garbage
        # collection, which PYTHONWARNINGS=error prints as a traceback on a passing run).
        with contextlib.suppress(OSError):
            self.proc.stderr.close()

    def send(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            log.debug("worker stdin closed")

    def _events(self, deadline: Callable[[], float | None]) -> Iterator[WorkerEvent]:
        """Yield decoded events until EOF; raise TimeoutError at the deadline (read again after each event:
        every stage gets its own)."""
        from kcuda_validate.worker_protocol import decode_event

        assert self.proc is not None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                while "\n" in self._buf:
                    line, self._buf = self._buf.split("\n", 1)
                    if line.strip():
                        yield decode_event(line)
                signals.check()  # a stop whose raise was lost before this stage (see signals.check)
                until = deadline()
                remaining = None if until is None else until - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                ready = sel.select(timeout=min(remaining, 0.5) if remaining is not None else 0.5)
                if not ready:
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self._buf += chunk.decode("utf-8", errors="replace")
        finally:
            sel.close()

    def _close_lifeline(self) -> None:
        """Only once the child is gone (or must go): the child kills itself at the lifeline's EOF."""
        with self._lifeline_lock:
            fd, self._lifeline = self._lifeline, None
        if fd is not None:
            os.close(fd)

    def kill(self) -> None:
        """Stop the child's whole process group: SIGTERM, then SIGKILL."""
        if self.proc is None:
            return
        if self._done and self.proc.poll() is None:
            return  # it os._exit()s right after "done"; _finish left a reaper for it
        if self.proc.poll() is not None:
            self._close_lifeline()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self._wait_or_kill(3)

    def _reap(self) -> None:
        self._wait_or_kill(10)
        self._close_stdout()

    def _close_stdout(self) -> None:
        """Once every result is read and the child is gone (see _drain_stderr for why)."""
        assert self.proc is not None
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()

    def _wait_or_kill(self, grace: float) -> None:
        """Wait `grace` seconds for the child to end, then SIGKILL its group; the lifeline closes either way."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        finally:
            self._close_lifeline()

    def run(
        self,
        request: WorkerRequest,
        timeout_s: float | None,
        on_text: Callable[[str], None] | None = None,
        on_loaded: Callable[[LoadResult], None] | None = None,
        before_infer: Callable[[], None] | None = None,
        after_infer: Callable[[], None] | None = None,
    ) -> WorkerOutcome:
        """Drive one request; each stage gets `timeout_s` seconds."""
        from kcuda_validate.worker_protocol import (
            GO,
            Done,
            Failed,
            Inferred,
            Loaded,
            StageStarted,
            TextPiece,
            encode_request,
        )

        if self.proc is None:
            self.start()
        assert self.proc is not None
        stage = "start"
        loaded: LoadResult | None = None
        inferred: InferenceResult | None = None
        error: WorkerError | None = None
        timeout: WorkerTimeout | None = None
        interrupted: WorkerInterrupt | None = None
        stage_deadline: list[float | None] = [None]

        def restart_clock() -> None:
            stage_deadline[0] = time.monotonic() + timeout_s if timeout_s else None

        handlers = signals.enter_worker_stage()
        try:
            self.send(encode_request(request))
            restart_clock()
            for ev in self._events(lambda: stage_deadline[0]):
                match ev:
                    case StageStarted():
                        stage = ev.stage
                        restart_clock()
                    case Loaded():
                        loaded = ev.result
                        if on_loaded is not None:
                            on_loaded(ev.result)
                        if request.infer is not None:
                            if before_infer is not None:
                                before_infer()
                            self.send(GO)
                    case TextPiece():
                        if on_text is not None:
                            on_text(ev.text)
                    case Inferred():
                        if after_infer is not None:
                            after_infer()
                        inferred = ev.result
                    case Failed():
                        error = ev.error
                    case Done():
                        self._done = True
                        break
        except TimeoutError:
            timeout = WorkerTimeout(stage, float(timeout_s or 0))
            self.kill()
        except Interrupted as exc:
            interrupted = WorkerInterrupt(stage, exc.signum)
            self.kill()
        except KeyboardInterrupt:
            interrupted = WorkerInterrupt(stage, signal.SIGINT)
            self.kill()
        finally:
            signals.leave_worker_stage(handlers)
        rc = self._finish()
        crash = None
        unfinished = inferred is None if request.infer is not None else loaded is None
        if timeout is None and interrupted is None and error is None and rc != 0 and unfinished:
            sig = signal.Signals(-rc).name if rc < 0 else None
            crash = WorkerCrash(
                stage=stage,
                signal=sig,
                returncode=rc,
                log_tail=tuple(list(self._tail)[-15:]),
                hint=crash_hint(sig, rc, request.cpu_only),
            )
        return WorkerOutcome(loaded, inferred, error, crash, timeout, interrupted, stage, tuple(self._tail))

    def _finish(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        if self._done:
            # Every result is in; the child is tearing down (unmapping the model takes ~0.1 s). Reap it in the
            # background instead of waiting, and make sure it is gone within seconds.
            threading.Thread(target=self._reap, daemon=True).start()
            return 0
        try:
            rc = self.proc.wait(timeout=30)  # the worker os._exit()s right after "done": quick
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode if self.proc.returncode is not None else -9
        self._close_lifeline()
        self._close_stdout()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2)
        return rc
