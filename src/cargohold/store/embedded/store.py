"""The embedded store: content, images, leases, snapshots and container records under one
root directory.

Layout::

    <root>/CACHEDIR.TAG     marks the root as a cache (backup tools skip it)
    <root>/lock             the root lock (see ``lock.RootLock``; not taken here)
    <root>/metadata.db      SQLite (WAL): labels, images, leases, schema_version
    <root>/content/blobs/   committed blobs
    <root>/content/ingest/  resumable ingests
    <root>/snapshots/       the snapshotter (``embedded.snapshots``), made on first use

Opening the store does not take the root lock: callers hold a ``RootLock`` around it
(shared for normal commands, exclusive for gc).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from cargohold.errors import InvalidInputError, NotFoundError, OutOfSpaceError
from cargohold.store.embedded.content import BLOBS, INGEST, EmbeddedContentStore
from cargohold.store.embedded.images import EmbeddedImageStore
from cargohold.store.embedded.leases import EmbeddedLeaseManager
from cargohold.store.embedded.lock import LOCK_FILE
from cargohold.store.embedded.metadata import DB_FILE, MetadataDB, check_not_orphaned

if TYPE_CHECKING:
    from cargohold.store.embedded.containers import EmbeddedContainerStore
    from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
    from cargohold.store.interfaces import Store
    from cargohold.unpack.applier import EmbeddedApplier

CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_CACHEDIR_TEXT = (
    f"{CACHEDIR_SIGNATURE}\n"
    "# This file is a cache directory tag created by cargohold.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


class EmbeddedStore:
    """The embedded store at ``root``; ``create=False`` refuses to make a new one.

    Content, images and leases open with it; the snapshotter (``<root>/snapshots``: overlay
    as root with overlayfs, else flat), the applier and the container records each open on
    first use (so commands that never touch snapshots leave the root as it was).
    ``reserve_bytes``: free space the snapshotter and the applier keep."""

    kind: Literal["embedded"] = "embedded"
    #: containerd's namespaces have no counterpart here.
    namespace = ""
    #: Its collector runs only in ``cargohold gc``, under the exclusive root lock.
    gc_in_background = False

    def __init__(self, root: Path | str, *, create: bool = True, reserve_bytes: int = 0) -> None:
        self.root = Path(root)
        self.reserve_bytes = reserve_bytes
        self._lazy_lock = threading.Lock()
        self._snapshots: EmbeddedSnapshotter | None = None
        self._applier: EmbeddedApplier | None = None
        self._containers: EmbeddedContainerStore | None = None
        db_path = self.root / DB_FILE
        # A lost database is an error, never a new store ("snapshots": the snapshotter's).
        check_not_orphaned(db_path, [(self.root / "content" / BLOBS, 2),
                                     (self.root / "snapshots", 1)])
        if not create and not db_path.exists():
            raise NotFoundError(
                f"no cargohold store at {self.root} (no {DB_FILE})",
                hint="check --root (or CARGOHOLD_ROOT); fetch, pull or bake create a store",
            )
        try:
            self._make_layout()
        except OSError as e:
            cls = OutOfSpaceError if e.errno == errno.ENOSPC else InvalidInputError
            raise cls(f"cannot create the store layout at {self.root}: {e.strerror or e}") from e
        self._db = MetadataDB(db_path)
        self.leases = EmbeddedLeaseManager(self._db)
        self.images = EmbeddedImageStore(self._db)
        self.content = EmbeddedContentStore(self.root / "content", self._db, self.leases)

    def _make_layout(self) -> None:
        for d in (self.root / "content" / BLOBS, self.root / "content" / INGEST):
            d.mkdir(parents=True, exist_ok=True)
        tag = self.root / CACHEDIR_TAG
        if not tag.exists():
            tmp = self.root / f".{CACHEDIR_TAG}.{os.getpid()}"
            tmp.write_text(_CACHEDIR_TEXT, encoding="ascii")
            os.replace(tmp, tag)
        lock = self.root / LOCK_FILE
        if not lock.exists():
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))

    @property
    def db(self) -> MetadataDB:
        return self._db

    @property
    def snapshots(self) -> EmbeddedSnapshotter:
        with self._lazy_lock:
            if self._snapshots is None:
                from cargohold.store.embedded.snapshots import EmbeddedSnapshotter

                self._snapshots = EmbeddedSnapshotter(
                    self.root, leases=self.leases, reserve_bytes=self.reserve_bytes
                )
            return self._snapshots

    @property
    def has_snapshots(self) -> bool:
        """Whether a snapshotter was ever opened under this root (nothing unpacked if not)."""
        from cargohold.store.embedded.snapshots import DB_FILE, SNAPSHOTS_DIR

        return self._snapshots is not None or (self.root / SNAPSHOTS_DIR / DB_FILE).exists()

    def snapshotter_named(self, name: str) -> EmbeddedSnapshotter | None:
        """The snapshotter if it was ever opened and is called ``name``, else None."""
        if not self.has_snapshots:
            return None
        sn = self.snapshots
        return sn if sn.name == name else None

    @property
    def applier(self) -> EmbeddedApplier:
        with self._lazy_lock:
            if self._applier is None:
                from cargohold.unpack.applier import EmbeddedApplier

                self._applier = EmbeddedApplier(reserve_bytes=self.reserve_bytes)
            return self._applier

    @property
    def containers(self) -> EmbeddedContainerStore:
        with self._lazy_lock:
            if self._containers is None:
                from cargohold.store.embedded.containers import EmbeddedContainerStore

                self._containers = EmbeddedContainerStore(self.db)
            return self._containers

    def collect_garbage(self) -> None:
        """Nothing: deletes take effect at once; the collector (``embedded.gc.collect``)
        needs the exclusive root lock, which the store does not hold."""

    def raise_reserve(self, nbytes: int) -> None:
        self.reserve_bytes = max(self.reserve_bytes, nbytes)
        for part in (self.applier, self.snapshots):
            part.reserve_bytes = max(part.reserve_bytes, nbytes)

    def filesystem_path(self) -> Path:
        return self.root

    def close(self) -> None:
        with self._lazy_lock:
            sn, self._snapshots = self._snapshots, None
        if sn is not None:
            sn.close()
        self._db.close()

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if TYPE_CHECKING:
    _conforms: type[Store] = EmbeddedStore  # mypy checks that it is a whole store
