"""The child process that loads the model and runs inference.

llama.cpp and the CUDA driver can kill a process (SIGSEGV, SIGABRT, OOM
abort). Running them here lets the parent keep the verdict and write the
reports whatever happens. Protocol: one JSON request on stdin; JSON-lines
events on the original stdout; llama.cpp's log lines on stderr, whose tail
the parent keeps for crash reports.

`KCUDA_TEST_FAULT` (tests only, documented in specs/cli.md) injects a fault:
"segv:load", "abort:infer", "hang:load"...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kcuda_validate.errors import KcudaError


def _emit(out: TextIO, event: str, **payload: Any) -> None:
    out.write(json.dumps({"event": event, **payload}) + "\n")
    out.flush()


def _fault(stage: str) -> None:
    """Test-only fault injection at a stage boundary."""
    spec = os.environ.get("KCUDA_TEST_FAULT", "")
    if not spec:
        return
    kind, _, where = spec.partition(":")
    if where != stage:
        return
    sys.stderr.write(f"llama.cpp: injected fault {kind} at {stage}\n")
    sys.stderr.flush()
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "exit":
        os._exit(3)


def run(request: dict[str, Any], events: TextIO) -> int:
    from kcuda_validate.llm.inference import Inferencer, InferOptions
    from kcuda_validate.llm.llamalog import LlamaLogCapture, LogLine
    from kcuda_validate.llm.loader import LoadOptions, ModelLoader

    def echo(line: LogLine) -> None:
        if line.level >= 2:
            sys.stderr.write(line.text + "\n")

    capture = LlamaLogCapture()
    capture.echo = echo
    load_opts = LoadOptions(**request["load"])
    _emit(events, "stage", stage="load")
    _fault("load")
    loader = ModelLoader(load_opts, capture=capture)
    model = loader.load(Path(request["model_path"]), request.get("n_layer"))
    _emit(events, "loaded", result=model.result.to_json(), log=[[ln.level, ln.text] for ln in capture.lines])
    infer = request.get("infer")
    if infer is None:
        model.close()
        _emit(events, "done")
        return 0
    # Wait for the parent to start its telemetry sampler (and read NVML after the load) before measuring.
    go = sys.stdin.readline()
    if not go.strip():
        model.close()
        return 0
    _emit(events, "stage", stage="infer")
    _fault("infer")
    opts = InferOptions(**infer)
    inferencer = Inferencer(model)
    result = inferencer.run(opts, on_text=lambda t: _emit(events, "text", text=t))
    _emit(events, "inferred", result=result.to_json())
    model.close()
    _emit(events, "done")
    return 0


def _preload() -> None:
    """Import llama_cpp's heavy pure-Python dependencies while the parent is still detecting.

    llama_cpp itself waits for the request: CUDA_VISIBLE_DEVICES must be set before CUDA starts.
    """
    import importlib

    for name in ("numpy", "jinja2", "typing_extensions"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def main() -> int:
    # Keep the event channel private: native code that printf()s must not corrupt it.
    events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent stopped before the model stages
    request = json.loads(line)
    if request.get("cuda_visible_devices") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = request["cuda_visible_devices"]
    try:
        return run(request, events)
    except KcudaError as exc:
        _emit(events, "error", message=exc.message, fix=exc.fix, exit_code=int(exc.exit_code), kind=type(exc).__name__)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the parent turns this into a failed check with the log path
        import traceback

        traceback.print_exc()
        _emit(events, "error", message=f"{type(exc).__name__}: {exc}", fix=None, exit_code=70, kind="internal")
        return 0


if __name__ == "__main__":
    sys.exit(main())
