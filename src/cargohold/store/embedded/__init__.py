"""The embedded store: a containerd-shaped content store, image and lease records in SQLite,
and a garbage collector, all under one root directory (no daemon)."""

from __future__ import annotations

from cargohold.store.embedded.content import EmbeddedContentStore, EmbeddedContentWriter
from cargohold.store.embedded.images import EmbeddedImageStore
from cargohold.store.embedded.leases import EmbeddedLeaseManager
from cargohold.store.embedded.lock import RootLock
from cargohold.store.embedded.store import EmbeddedStore

__all__ = [
    "EmbeddedContentStore",
    "EmbeddedContentWriter",
    "EmbeddedImageStore",
    "EmbeddedLeaseManager",
    "EmbeddedStore",
    "RootLock",
]
