"""Hardware-scenario fixtures for the setup tests (see tests/fakes/hardware.py)."""

from fakes.hardware import scenario

__all__ = ["scenario"]
