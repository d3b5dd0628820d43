"""The child process that loads the model and runs inference.

llama.cpp and the CUDA driver can kill a process (SIGSEGV, SIGABRT, OOM
abort). Running them here lets the parent keep the verdict and write the
reports whatever happens. Protocol (worker_protocol.py): one JSON request on
stdin; JSON-lines events on the original stdout; llama.cpp's log lines on
stderr, whose tail the parent keeps for crash reports.

The worker dies with its parent, in any stage (kcuda_validate.lifeline): a watchdog thread kills the worker's
process group at the EOF of a pipe only the parent holds, however the parent ends, SIGKILL included. The thread
runs while llama.cpp computes (ctypes releases the GIL). On Linux, PR_SET_PDEATHSIG adds a kernel-side SIGKILL.

`KCUDA_TEST_FAULT` (tests only, documented in specs/cli.md) injects a fault:
"segv:load", "abort:infer", "hang:load"... "mark:infer" only signals KCUDA_TEST_FAULT_READY and goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from kcuda_validate.errors import ExitCode, KcudaError
from kcuda_validate.lifeline import die_with_parent
from kcuda_validate.worker_protocol import (
    GO,
    Done,
    ErrorKind,
    Failed,
    Inferred,
    Loaded,
    StageStarted,
    TextPiece,
    WorkerError,
    WorkerEvent,
    WorkerRequest,
    decode_request,
    encode_event,
)


def _emit(out: TextIO, event: WorkerEvent) -> None:
    out.write(encode_event(event) + "\n")
    out.flush()


def _fault(stage: str) -> None:
    """Test-only fault injection at a stage boundary."""
    spec = os.environ.get("KCUDA_TEST_FAULT", "")
    if not spec:
        return
    kind, _, where = spec.partition(":")
    if where != stage:
        return
    if kind == "mark":
        if ready := os.environ.get("KCUDA_TEST_FAULT_READY"):
            Path(ready).touch()
        return
    sys.stderr.write(f"llama.cpp: injected fault {kind} at {stage}\n")
    sys.stderr.flush()
    ready = os.environ.get("KCUDA_TEST_FAULT_READY")
    if ready:  # lets a test signal the worker once it is really at the fault, however loaded the machine is
        Path(ready).touch()
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "exit":
        os._exit(3)


def run(request: WorkerRequest, events: TextIO) -> int:
    from kcuda_validate.llm.inference import Inferencer
    from kcuda_validate.llm.llamalog import LlamaLogCapture, LogLine
    from kcuda_validate.llm.loader import ModelLoader

    def echo(line: LogLine) -> None:
        if line.level >= 2:
            sys.stderr.write(line.text + "\n")

    capture = LlamaLogCapture()
    capture.echo = echo
    _emit(events, StageStarted("load"))
    _fault("load")
    model = ModelLoader(request.load, capture=capture).load(request.model_path)
    # The log goes to the parent whole: it judges the offload from it (and from its own VRAM readings).
    _emit(events, Loaded(model.result))
    if request.infer is None:
        _emit(events, Done())
        return 0
    # Wait for the parent to start its telemetry sampler (and read NVML after the load) before measuring.
    go = sys.stdin.readline()
    if go.strip() != GO:
        model.close()
        return 0
    _emit(events, StageStarted("infer"))
    _fault("infer")
    result = Inferencer(model).run(request.infer, on_text=lambda t: _emit(events, TextPiece(t)))
    _emit(events, Inferred(result))
    _emit(events, Done())
    return 0


def _preload() -> None:
    """Import llama_cpp while the parent is still detecting and reading the model header.

    The parent starts this process with CUDA_VISIBLE_DEVICES already pinned to the GPU it chose, so
    importing now cannot pick the wrong device. Without a pin (KCUDA_WORKER_PIN unset) only the
    pure-Python dependencies are imported and llama_cpp waits for the request.

    numpy is never imported ahead of llama_cpp: with numpy 2.5's wheel loaded first, a CUDA build of
    llama.cpp segfaulted in the CUDA runtime's start-up at the first model load (seen on an H100 box).
    """
    import importlib

    names = ["jinja2", "typing_extensions"]
    if os.environ.get("KCUDA_WORKER_PIN") == "1":
        names = ["llama_cpp", *names, "kcuda_validate.llm.loader", "kcuda_validate.llm.inference"]
    for name in names:
        with contextlib.suppress(ImportError, OSError):
            importlib.import_module(name)


def main() -> int:
    die_with_parent()
    # The parent stops this process with SIGTERM to its group, then SIGKILL: do not inherit a SIG_IGN for it
    # (from a parent started under `nohup`-like wrappers). SIGINT is left as inherited: this process is in its
    # own session, and the parent decides what an interrupt means.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Keep the event channel private: native code that printf()s must not corrupt it.
    events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent stopped before the model stages
    request = decode_request(line)
    wanted = request.cuda_visible_devices
    if wanted is not None and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
        if "llama_cpp" in sys.modules:
            message = (
                f"worker was started for CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} "
                f"but the request needs {wanted!r}"
            )
            _emit(events, Failed(WorkerError(ErrorKind.INTERNAL, message)))
            return 0
        os.environ["CUDA_VISIBLE_DEVICES"] = wanted
    try:
        return run(request, events)
    except KcudaError as exc:
        _emit(events, Failed(WorkerError.from_exception(exc)))
        return 0
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the parent turns this into a failed check with the log path
        import traceback

        traceback.print_exc()
        _emit(events, Failed(WorkerError.from_exception(exc)))
        return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter teardown and llama.cpp's frees (~0.2 s): the parent already has every result, and the
    # OS and the CUDA driver reclaim host memory and the GPU context at exit.
    sys.stderr.flush()
    os._exit(code)
