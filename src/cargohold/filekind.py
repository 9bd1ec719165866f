"""A file's type in words, for messages (``not a socket (a regular file)``)."""

from __future__ import annotations

import stat

_KINDS = (
    (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)  # fmt: skip


def file_kind(mode: int) -> str:
    """``st_mode``'s file type in words: "a regular file", "a directory", ..."""
    return next((k for test, k in _KINDS if test(mode)), "a special file")
