"""What the entry point and the CLI share, in a module that imports nothing heavy (the entry point runs it
before click is imported): the one `--device N|cpu` parser, and the pre-started worker handed to the command
through click's context object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Device = int | Literal["cpu"]
EARLY_WORKER = "early_worker"  # the EarlyWorker's key in the click context object


def parse_device(value: str) -> Device | None:
    """An NVML GPU index or "cpu" (any case, surrounding spaces ignored); None when it is neither."""
    text = value.strip().lower()
    if text == "cpu":
        return "cpu"
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class EarlyWorker:
    """A worker the entry point started from argv, for the (cpu_mode, device index) its guess read there."""

    guess: tuple[bool, int | None]
    worker: Any  # isolation.Worker, not imported here: this module must stay light
