"""Hardware-scenario fixtures for the detect tests (see tests/fakes/hardware.py)."""

from fakes.hardware import scenario

__all__ = ["scenario"]
