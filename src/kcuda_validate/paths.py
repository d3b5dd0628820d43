"""What a path that is not a regular file is, in words: shared by --model-path and the files the tool writes;
and the folders the tool makes for them, taken back when the file is not made.

A model is read only from a regular file; a report, a textfile or a ready file is written only as one. Both
refuse the rest at once, naming what the path is, instead of blocking on a FIFO or replacing a device.
"""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

# By st_mode; a directory has its own message where it matters.
_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_kind(mode: int) -> str:
    """'a character device' and the like, for an st_mode that is not a regular file's."""
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")


def make_parents(directory: Path) -> list[Path]:
    """`mkdir -p directory`; the directories it created, deepest first, for `remove_empty` when what was to go
    in them failed (a report, a synthetic model): nothing half-made is left, empty folders included."""
    missing: list[Path] = []
    here = directory
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except BaseException:
        remove_empty(missing)
        raise
    return missing


def remove_empty(directories: list[Path]) -> None:
    """rmdir each, deepest first; one that is not empty (someone else's now) or already gone stays as it is."""
    for d in directories:
        with contextlib.suppress(OSError):
            d.rmdir()
