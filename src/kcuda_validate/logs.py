"""The rotating log file, configured once by the entry point.

Several runs may write at once (a setup script and a user, parallel CI jobs),
so rotation happens under an advisory file lock and a handle re-opens the
file when another process has rotated it away.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
from pathlib import Path

LOG_FILE_NAME = "kcuda-validate.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 5

_log_path: Path | None = None


def default_log_dir() -> Path:
    """Per-user state directory: $KCUDA_LOG_DIR, else $XDG_STATE_HOME, else ~/.local/state."""
    explicit = os.environ.get("KCUDA_LOG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kcuda-validate"


class LockedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that is safe when several processes share one file."""

    def __init__(self, filename: Path, max_bytes: int, backup_count: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True)
        self._lock_path = str(filename) + ".lock"

    def emit(self, record: logging.LogRecord) -> None:
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
    """Attach the rotating file handler to the package logger; return the file, or None if unwritable."""
    global _log_path
    level_name = (level or os.environ.get("KCUDA_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logger = logging.getLogger("kcuda_validate")
    logger.setLevel(numeric)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, LockedRotatingFileHandler):
            logger.removeHandler(handler)
            handler.close()
    directory = default_log_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOG_FILE_NAME
        handler = LockedRotatingFileHandler(path, MAX_BYTES, BACKUP_COUNT)
        # Fail now, not at the first record, if the directory is not writable.
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError:
        _log_path = None
        return None
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    logger.addHandler(handler)
    _log_path = path
    return path


def log_path() -> Path | None:
    """The log file of this run, for error messages."""
    return _log_path
