"""The rotating log file, configured once by the entry point.

Several runs may write at once (a setup script and a user, parallel CI jobs),
so rotation happens under an advisory file lock and a handle re-opens the
file when another process has rotated it away.

Every record goes through `safetext.safe` (undecodable bytes from argv or paths spelled out, credentials
masked), so no argument can make logging fail or leak a secret. A log that cannot be written (a directory
the user cannot write to, a full disk) never stops the run: one warning line on stderr says so, once per
process, and the run continues unlogged.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from kcuda_validate.cache_dir import home_dir, xdg_dir
from kcuda_validate.safetext import printable, safe, spelled_out

LOG_FILE_NAME = "kcuda-validate.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 5

_log_path: Path | None = None
_warned = False


def default_log_dir() -> Path | None:
    """Per-user state directory: $KCUDA_LOG_DIR, else $XDG_STATE_HOME (when absolute, as the XDG spec asks),
    else ~/.local/state; None when there is no home to put it in."""
    explicit = os.environ.get("KCUDA_LOG_DIR")
    if explicit:
        try:
            return Path(explicit).expanduser()
        except RuntimeError:  # `~` with no home: the literal path, as the shell would leave it
            return Path(explicit)
    state = xdg_dir("XDG_STATE_HOME")
    if state is None:
        home = home_dir()
        if home is None:
            return None
        state = home / ".local" / "state"
    return state / "kcuda-validate"


def _warn_once(what: str, err: BaseException | None) -> None:
    """The one stderr line about a log that cannot be written (later failures stay quiet)."""
    global _warned
    if _warned:
        return
    _warned = True
    reason = ""
    if isinstance(err, OSError):
        reason = f" ({err.strerror or err})"
    elif err is not None:
        reason = f" ({type(err).__name__}: {err})"
    try:
        sys.stderr.write(
            safe(f"Warning: {what}{reason}; this run continues without a log (set KCUDA_LOG_DIR to change where)")
            + "\n"
        )
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no usable stderr either: nothing more to be done
        pass


class SafeFormatter(logging.Formatter):
    """The house format, with the whole record (message, arguments, traceback) passed through `safe`, and the
    message on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a newline or an ESC in a path cannot forge a record or drive a `tail -f`.
        # The traceback that format() appends after it keeps its lines.
        return spelled_out(printable(super().formatMessage(record)))

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


class LockedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that is safe when several processes share one file."""

    def __init__(self, filename: Path, max_bytes: int, backup_count: int) -> None:
        # errors=backslashreplace: a backstop should a formatter other than SafeFormatter be set.
        super().__init__(
            filename,
            maxBytes=max_bytes,
            backupCount=backup_count,
            encoding="utf-8",
            delay=True,
            errors="backslashreplace",
        )
        self._lock_path = str(filename) + ".lock"
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._broken:
            return
        try:
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._reopen_if_rotated()
                    super().emit(record)
                    if self.stream is not None:
                        self.stream.flush()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """A file that cannot be written: instead of logging's traceback per record, one warning line, then this
        handler is off. Anything else (a bad format string: a bug) keeps logging's own report."""
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        global _log_path
        self._broken = True
        if _log_path is not None and str(_log_path) == self.baseFilename:
            _log_path = None  # error messages stop pointing at a log that no longer records the run
        _warn_once(f"cannot write the log file {self.baseFilename}", err)

    def _reopen_if_rotated(self) -> None:
        if self.stream is None:
            return
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self.stream.fileno())
        if on_disk is None or (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            self.stream.close()
            self.stream = self._open()


def setup_logging(level: str | None = None) -> Path | None:
    """Attach the rotating file handler to the package logger; return the file, or None if unwritable.

    Called once per run: a log that cannot be written is then reported once (again) for this run."""
    global _log_path, _warned
    _warned = False
    level_name = (level or os.environ.get("KCUDA_LOG_LEVEL") or "INFO").strip().upper()
    numeric = int(level_name) if level_name.isascii() and level_name.isdigit() else logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
        # Said, not silently ignored: a typo (`KCUDA_LOG_LEVEL=verbose`) otherwise looks like a log with no detail.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.write(
                safe(
                    f"Warning: KCUDA_LOG_LEVEL={level_name!r} is not a log level; logging at INFO "
                    "(use DEBUG, INFO, WARNING, ERROR or CRITICAL)"
                )
                + "\n"
            )
    logger = logging.getLogger("kcuda_validate")
    logger.setLevel(numeric)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, LockedRotatingFileHandler):
            logger.removeHandler(handler)
            handler.close()
    directory = default_log_dir()
    if directory is None:
        _log_path = None
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        _warn_once("cannot write the log: HOME is not set and this user has no home directory", None)
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOG_FILE_NAME
        handler = LockedRotatingFileHandler(path, MAX_BYTES, BACKUP_COUNT)
        # Fail now, not at the first record, if the directory is not writable.
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as err:
        _log_path = None
        # A NullHandler keeps logging's last-resort handler from printing warnings raw on stderr.
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        _warn_once(f"cannot write the log in {directory}", err)
        return None
    for stale in [h for h in logger.handlers if isinstance(h, logging.NullHandler)]:
        logger.removeHandler(stale)
    handler.setFormatter(SafeFormatter())
    logger.addHandler(handler)
    _log_path = path
    return path


def log_path() -> Path | None:
    """The log file of this run, for error messages."""
    return _log_path
