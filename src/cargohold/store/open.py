"""Opening the store the settings name: the embedded one (:class:`LocalStore`, under its root
lock) or a containerd namespace (:func:`open_store`), for commands and library callers alike."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold.errors import (
    CargoholdError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
    UnsupportedError,
)
from cargohold.settings import Settings
from cargohold.store.embedded.lock import RootLock
from cargohold.store.embedded.metadata import DB_FILE
from cargohold.store.embedded.store import EmbeddedStore
from cargohold.units import parse_size

if TYPE_CHECKING:
    from cargohold.store.containerd.store import ContainerdStore
    from cargohold.store.interfaces import Snapshotter


class LocalStore(EmbeddedStore):
    """The embedded store as commands open it (the name stays for its importers; everything
    it once added, the lazily opened snapshotter, applier and container records, is
    :class:`EmbeddedStore`'s now)."""

    def __init__(self, root: Path | str, *, reserve_bytes: int = 0) -> None:
        super().__init__(root, reserve_bytes=reserve_bytes)

    def __enter__(self) -> LocalStore:
        return self


def reserve_bytes(s: Settings) -> int:
    try:
        return parse_size(s.reserve)
    except InvalidInputError as e:
        raise InvalidInputError(f"setting reserve: {e.message}") from None


def _root_of(s: Settings) -> tuple[Path, str]:
    """The store root and where it was set (for messages)."""
    where = {"flag": "--root", "env": "CARGOHOLD_ROOT", "default": "the default root"}
    src = s.source_of("root")
    return Path(s.root), where.get(src, f"root in {src}")


def root_error(e: OSError, root: Path, where: str) -> CargoholdError:
    """An OS error on the store root as an error of the tree, naming the root and its source."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        return OutOfSpaceError(f"store root {root} ({where}): {reason}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InvalidInputError(f"store root {root} ({where}): {reason}",
                                 hint="choose a --root this user may write, or run as root")
    return InvalidInputError(f"store root {root} ({where}) cannot be used: {reason}",
                             hint="--root names a directory: the store, created if missing")


def embedded_store_exists(s: Settings) -> bool:
    """Whether the configured root holds an embedded store; InvalidInputError when the root
    is not a directory, StoreDamagedError when its database is lost while data remains."""
    root, where = _root_of(s)
    try:
        st = root.stat()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise root_error(e, root, where) from e
    if not stat.S_ISDIR(st.st_mode):
        raise root_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), root, where)
    from cargohold.store.embedded.content import BLOBS
    from cargohold.store.embedded.metadata import check_not_orphaned

    check_not_orphaned(root / DB_FILE, [(root / "content" / BLOBS, 2), (root / "snapshots", 1)])
    return (root / DB_FILE).exists()


@contextmanager
def open_store(
    s: Settings, *, exclusive: bool = False, must_exist: bool = False
) -> Iterator[LocalStore | ContainerdStore]:
    """Open the configured store: the embedded one under the root lock (shared, or
    exclusive for gc), or containerd's namespace ``s.namespace`` at ``s.address``.
    ``must_exist`` (read-only commands): a missing embedded store is a NotFoundError naming
    the root, not a new empty store.

    Both have ``.content``, ``.images``, ``.leases``, ``.snapshots`` and ``.applier``.
    Leases of cargohold processes that died (kill -9) are released first, with the
    half-applied snapshots they held (:func:`cargohold.leasing.reap_dead_leases`)."""
    from cargohold.leasing import reap_dead_leases

    if s.store == "containerd":
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore.from_settings(s) as cstore:
            reap_dead_leases(cstore)
            yield cstore
        return
    if s.store != "embedded":
        raise InvalidInputError(f"unknown store {s.store!r}; use embedded or containerd")
    with open_embedded(s, exclusive=exclusive, must_exist=must_exist) as store:
        yield store


@contextmanager
def open_store_and_snapshots(
    s: Settings,
) -> Iterator[tuple[LocalStore | ContainerdStore, Snapshotter | None]]:
    """An existing store (``must_exist``; containerd is asked for its version, so an
    unreachable daemon fails here) and its snapshotter: containerd's, or the embedded one
    if anything was ever unpacked (None otherwise: nothing is created)."""
    with open_store(s, must_exist=True) as store:
        if isinstance(store, LocalStore):
            yield store, (store.snapshots if store.has_snapshots else None)
        else:
            store.version()
            yield store, store.snapshots


@contextmanager
def open_embedded(
    s: Settings,
    *,
    exclusive: bool = False,
    must_exist: bool = False,
    hint: str = "use --store embedded (containerd keeps its own containers: use ctr)",
) -> Iterator[LocalStore]:
    """The embedded store only (UnsupportedError with ``hint`` for ``--store containerd``):
    for what has no containerd counterpart here (container records, gc). Leases of dead
    cargohold processes are released first (but for gc: ``exclusive``)."""
    from cargohold.leasing import reap_dead_leases

    if s.store != "embedded":
        raise UnsupportedError(
            f"this command works on the embedded store only, not on {s.store!r}", hint=hint
        )
    reserve = reserve_bytes(s)
    root, where = _root_of(s)
    if not embedded_store_exists(s):
        if must_exist:
            raise NotFoundError(
                f"no cargohold store at {root} ({where}): "
                + ("the directory does not exist" if not root.exists() else f"no {DB_FILE}"),
                hint="check the root (--root, CARGOHOLD_ROOT); fetch, pull or bake create a store",
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise root_error(e, root, where) from e
    with ExitStack() as stack:
        try:
            stack.enter_context(RootLock(root, exclusive=exclusive, wait=not exclusive))
            store = stack.enter_context(LocalStore(root, reserve_bytes=reserve))
        except OSError as e:  # e.g. the lock file is not ours to open
            raise root_error(e, root, where) from e
        if not exclusive:  # gc removes (and reports) what dead processes left itself
            reap_dead_leases(store)
        yield store

