"""Hashing what is already in a file: the prefix of an ingest that is being resumed."""

from __future__ import annotations

import hashlib
import os

__all__ = ["hash_fd"]

_CHUNK = 1 << 20


def hash_fd(fd: int, algorithm: str, length: int) -> hashlib._Hash:
    """Hash the first ``length`` bytes of ``fd`` (positional reads, 1 MiB at a time; a file
    shorter than ``length`` is hashed to its end)."""
    h = hashlib.new(algorithm)
    buf = bytearray(min(_CHUNK, max(length, 1)))
    view = memoryview(buf)
    pos = 0
    while pos < length:
        want = min(len(buf), length - pos)
        n = os.preadv(fd, [view[:want]], pos)
        if n <= 0:
            break
        h.update(view[:n])
        pos += n
    return h
