"""The console-script entry point: starts the model worker before anything heavy is imported.

`load`, `infer` and `validate-all` spend their first ~0.1 s importing click and the CLI; the worker needs
~0.3 s to import llama.cpp. Guessing the command from argv and starting the worker here lets both happen
at once. The guess is checked later (cli._common.start_worker): a wrong one is simply discarded.
"""

from __future__ import annotations

import sys
from typing import Any

MODEL_COMMANDS = {"load", "infer", "validate-all"}
_early: Any = None


def _guess(argv: list[str]) -> tuple[bool, int | None] | None:
    """(cpu_mode, device index) when argv runs a model command, else None (also with --setup, which may
    replace the llama.cpp build the worker would import)."""
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
    if device.strip().lower() == "cpu":
        return True, None
    return (False, int(device)) if device.strip().isdigit() else None


def take_early_worker(cpu_mode: bool, device: int | None) -> Any:
    """The worker started from argv, if the command's parsed options match the guess it was started for."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    guess, worker = early
    if guess == (cpu_mode, device):
        return worker
    worker.kill()
    return None


def main() -> None:
    global _early
    guess = _guess(sys.argv[1:])
    if guess is not None:
        try:
            from kcuda_validate.gpu.nvml import worker_pin
            from kcuda_validate.isolation import Worker

            _early = (guess, Worker(pin=worker_pin(*guess)).start())
        except Exception:  # noqa: BLE001 - an optimisation only; the command starts its own worker
            _early = None
    try:
        from kcuda_validate.cli import main as cli_main

        cli_main()
    finally:
        if _early is not None:  # the command never took it (usage error, --help...)
            _early[1].kill()
