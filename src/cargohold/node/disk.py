"""The file system a store lives on: where it is, how full it is, and free-space targets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold.errors import InvalidInputError

if TYPE_CHECKING:
    from cargohold.store.interfaces import Store

__all__ = ["FsSpace", "free_target", "fs_space", "parse_keep_free", "store_fs_not_found",
           "store_path"]


@dataclass(frozen=True)
class FsSpace:
    path: str
    total: int
    free: int


def fs_space(path: str | Path) -> FsSpace:
    """Size and space available to unprivileged users (what kubelet's eviction sees) of the
    file system holding ``path``."""
    st = os.statvfs(path)
    return FsSpace(str(path), st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def store_path(store: Store, root: Path) -> Path | None:
    """A directory on the store's file system: the embedded root, or the directory of
    containerd's snapshotter (asked through containerd's introspection service) when this
    process can see it, else None (:meth:`Store.filesystem_path`)."""
    if store.kind == "embedded":
        return root
    return store.filesystem_path()


def store_fs_not_found(hint: str) -> InvalidInputError:
    """The error of ``--keep-free`` (evict, warm) when :func:`store_path` finds no file system
    for the store: containerd did not name its snapshotter's root, or that is no directory on
    this machine. Invalid input (exit 2) for every command; ``hint`` is the command's way out."""
    return InvalidInputError(
        "--keep-free needs the store's file system, which cannot be found here (containerd "
        "did not name its snapshotter's root, or it is not a directory on this machine)",
        hint=hint)


def parse_keep_free(text: str) -> tuple[int | None, float | None]:
    """``SIZE`` (bytes, units as in specs) or ``PCT%`` (0 < PCT < 100) of the file system:
    (bytes, None) or (None, percent); InvalidInputError otherwise."""
    from cargohold.units import parse_size

    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise InvalidInputError(f"--keep-free {text!r}: not a percentage") from None
        if not 0 < pct < 100:
            raise InvalidInputError(f"--keep-free {text!r}: a percentage must be above 0 and "
                                    "below 100")
        return None, pct
    n = parse_size(t)
    if n <= 0:
        raise InvalidInputError(f"--keep-free {text!r}: must be more than 0 bytes")
    return n, None


def free_target(space: FsSpace, keep_free: tuple[int | None, float | None]) -> int:
    """The free bytes ``keep_free`` asks for on ``space``'s file system."""
    size, pct = keep_free
    if size is not None:
        return size
    assert pct is not None
    return int(space.total * pct / 100)
