"""The console-script entry point: starts the model worker before anything heavy is imported.

`load`, `infer` and `validate-all` spend their first ~0.1 s importing click and the CLI; the worker needs
~0.3 s to import llama.cpp. Guessing the command from argv and starting the worker here lets both happen
at once. The worker is handed to the command through click's context object (`EarlyWorker`); the command
checks the guess (cli._common.start_worker) and discards a wrong one.

A Ctrl-C before the CLI's error boundary installs its handlers (the first ~0.1 s: imports) is caught here and
said the way the boundary says it, not as a traceback; so this module imports nothing at module level that
could be interrupted first, beyond `sys`.
"""

from __future__ import annotations

import sys

MODEL_COMMANDS = {"load", "infer", "validate-all"}


def _guess(argv: list[str]) -> tuple[bool, int | None] | None:
    """(cpu_mode, device index) when argv runs a model command, else None (also with --setup, which may
    replace the llama.cpp build the worker would import)."""
    from kcuda_validate.prestart import parse_device

    if any(a in ("-h", "--help", "--version", "--all-devices", "--setup") for a in argv):
        return None
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in MODEL_COMMANDS:
        return None
    device: str | None = None
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    if device is None:
        return False, None
    parsed = parse_device(device)
    if parsed is None:
        return None
    return (True, None) if parsed == "cpu" else (False, parsed)


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:  # only before the boundary: it answers a later Ctrl-C itself (exit 130)
        import signal  # not at module level: it builds enums, a window for Ctrl-C of its own

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("Error: interrupted\n")
        sys.stderr.flush()
        sys.exit(130)


def _main() -> None:
    from kcuda_validate.prestart import EARLY_WORKER, EarlyWorker

    obj: dict[str, object] = {}
    guess = _guess(sys.argv[1:])
    if guess is not None:
        try:
            from kcuda_validate.gpu.nvml import worker_pin
            from kcuda_validate.isolation import Worker

            obj[EARLY_WORKER] = EarlyWorker(guess, Worker(pin=worker_pin(*guess)).start())
        except Exception:  # noqa: BLE001 - an optimisation only; the command starts its own worker
            obj.pop(EARLY_WORKER, None)
    try:
        from kcuda_validate.cli import main as cli_main

        cli_main(obj)
    finally:
        early = obj.pop(EARLY_WORKER, None)
        if isinstance(early, EarlyWorker):  # the command never took it (usage error, --help...)
            early.worker.kill()
