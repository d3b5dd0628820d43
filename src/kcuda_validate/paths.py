"""What a path that is not a regular file is, in words: shared by --model-path and the files the tool writes.

A model is read only from a regular file; a report, a textfile or a ready file is written only as one. Both
refuse the rest at once, naming what the path is, instead of blocking on a FIFO or replacing a device.
"""

from __future__ import annotations

import stat

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
