"""One exit-code table and the domain errors that map onto it.

Every command shares these codes (see specs/exit-codes.md); scripts and CI
branch on them, so a code's meaning never changes once released.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, shared by every command."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    NO_GPU = 3
    GPU_UNUSABLE = 4
    MODEL_INVALID = 5
    BELOW_THRESHOLD = 6
    CRASHED = 7
    MODEL_NOT_FOUND = 10
    HUB_UNREACHABLE = 11
    HUB_AUTH = 12
    DISK_FULL = 13
    INTERNAL = 70
    TIMEOUT = 124
    INTERRUPTED = 130
    TERMINATED = 143

    @property
    def reason(self) -> str:
        """Stable snake_case name used in JSON reports."""
        return self.name.lower()

    @staticmethod
    def reason_of(code: object, unknown: str) -> str:
        """The reason of a code read from a report (an int, or anything else), `unknown` where it names none."""
        try:
            return ExitCode(int(code)).reason  # type: ignore[call-overload]  # int() of whatever a report holds
        except (TypeError, ValueError):
            return unknown


# Which outcome wins when several checks fail: the most specific diagnosis first.
SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.INTERRUPTED,
    ExitCode.TERMINATED,
    ExitCode.CRASHED,
    ExitCode.TIMEOUT,
    ExitCode.NO_GPU,
    ExitCode.GPU_UNUSABLE,
    ExitCode.HUB_UNREACHABLE,
    ExitCode.HUB_AUTH,
    ExitCode.MODEL_NOT_FOUND,
    ExitCode.DISK_FULL,
    ExitCode.MODEL_INVALID,
    ExitCode.BELOW_THRESHOLD,
    ExitCode.CHECK_FAILED,
    ExitCode.INTERNAL,
    ExitCode.USAGE,
)


def worst(codes: list[ExitCode]) -> ExitCode:
    """The exit code that best describes a run in which all of `codes` happened."""
    failing = [c for c in codes if c != ExitCode.OK]
    if not failing:
        return ExitCode.OK
    return min(failing, key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY))


class KcudaError(Exception):
    """A failure we understand: one line for the user, an exit code, maybe a fix."""

    exit_code: ExitCode = ExitCode.CHECK_FAILED

    def __init__(self, message: str, *, fix: str | None = None, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(KcudaError):
    """Bad option values that click's own validation cannot express."""

    exit_code = ExitCode.USAGE


class ModelInvalidError(KcudaError):
    """The model file is missing, unreadable, not GGUF, truncated or corrupt."""

    exit_code = ExitCode.MODEL_INVALID


class ModelNotFoundError(KcudaError):
    """The Hub has no such repo, file or revision (or it is not in the offline cache)."""

    exit_code = ExitCode.MODEL_NOT_FOUND


class HubUnreachableError(KcudaError):
    exit_code = ExitCode.HUB_UNREACHABLE


class HubAuthError(KcudaError):
    """A gated or private repo: 401 (log in) or 403 (request access)."""

    exit_code = ExitCode.HUB_AUTH


class DiskFullError(KcudaError):
    exit_code = ExitCode.DISK_FULL


class Interrupted(BaseException):  # not swallowed by a broad `except Exception`: the stop must go through
    """Ctrl-C or SIGTERM reached the parent: unwind, stop the worker, still write the reports."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
