"""The embedded store: content, images and leases under one root directory.

Layout::

    <root>/CACHEDIR.TAG     marks the root as a cache (backup tools skip it)
    <root>/lock             the root lock (see ``lock.RootLock``; not taken here)
    <root>/metadata.db      SQLite (WAL): labels, images, leases, schema_version
    <root>/content/blobs/   committed blobs
    <root>/content/ingest/  resumable ingests

Opening the store does not take the root lock: callers hold a ``RootLock`` around it
(shared for normal commands, exclusive for gc).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

from cargohold.errors import InvalidInputError, NotFoundError, OutOfSpaceError
from cargohold.store.embedded.content import BLOBS, INGEST, EmbeddedContentStore
from cargohold.store.embedded.images import EmbeddedImageStore
from cargohold.store.embedded.leases import EmbeddedLeaseManager
from cargohold.store.embedded.lock import LOCK_FILE
from cargohold.store.embedded.metadata import DB_FILE, MetadataDB, check_not_orphaned

CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_CACHEDIR_TEXT = (
    f"{CACHEDIR_SIGNATURE}\n"
    "# This file is a cache directory tag created by cargohold.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


class EmbeddedStore:
    """The embedded store at ``root``; ``create=False`` refuses to make a new one."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
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

    def close(self) -> None:
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
