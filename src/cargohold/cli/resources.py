"""Opening what commands work on (the store, the registry client) from resolved settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold.errors import InvalidInputError, UnsupportedError
from cargohold.settings import Settings
from cargohold.spec import parse_size
from cargohold.store.embedded.lock import RootLock
from cargohold.store.embedded.store import EmbeddedStore

if TYPE_CHECKING:
    from cargohold.store.containerd.store import ContainerdStore
    from cargohold.store.embedded.containers import EmbeddedContainerStore
    from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
    from cargohold.unpack.applier import EmbeddedApplier


class LocalStore(EmbeddedStore):
    """The embedded store plus its snapshotter (``<root>/snapshots``: overlay as root with
    overlayfs, else flat), applier and container records, each opened on first use (so
    commands that never touch snapshots leave the root as it was)."""

    def __init__(self, root: Path | str, *, reserve_bytes: int = 0) -> None:
        super().__init__(root)
        self.reserve_bytes = reserve_bytes
        self._lazy_lock = threading.Lock()
        self._snapshots: EmbeddedSnapshotter | None = None
        self._applier: EmbeddedApplier | None = None
        self._containers: EmbeddedContainerStore | None = None

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

    def __enter__(self) -> LocalStore:
        return self

    def close(self) -> None:
        with self._lazy_lock:
            sn, self._snapshots = self._snapshots, None
        if sn is not None:
            sn.close()
        super().close()


def reserve_bytes(s: Settings) -> int:
    try:
        return parse_size(s.reserve)
    except InvalidInputError as e:
        raise InvalidInputError(f"setting reserve: {e.message}") from None


@contextmanager
def open_store(
    s: Settings, *, exclusive: bool = False
) -> Iterator[LocalStore | ContainerdStore]:
    """Open the configured store: the embedded one under the root lock (shared, or
    exclusive for gc), or containerd's namespace ``s.namespace`` at ``s.address``.

    Both have ``.content``, ``.images``, ``.leases``, ``.snapshots`` and ``.applier``."""
    if s.store == "containerd":
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore.from_settings(s) as cstore:
            yield cstore
        return
    if s.store != "embedded":
        raise InvalidInputError(f"unknown store {s.store!r}; use embedded or containerd")
    with open_embedded(s, exclusive=exclusive) as store:
        yield store


@contextmanager
def open_embedded(
    s: Settings,
    *,
    exclusive: bool = False,
    hint: str = "use --store embedded (containerd keeps its own containers: use ctr)",
) -> Iterator[LocalStore]:
    """The embedded store only (UnsupportedError with ``hint`` for ``--store containerd``):
    for what has no containerd counterpart here (container records, gc)."""
    if s.store != "embedded":
        raise UnsupportedError(
            f"this command works on the embedded store only, not on {s.store!r}", hint=hint
        )
    reserve = reserve_bytes(s)
    root = Path(s.root)
    root.mkdir(parents=True, exist_ok=True)
    with (
        RootLock(root, exclusive=exclusive, wait=not exclusive),
        LocalStore(root, reserve_bytes=reserve) as store,
    ):
        yield store


def registry_client(s: Settings):  # type: ignore[no-untyped-def]
    from cargohold.registry.client import RegistryClient

    return RegistryClient(
        hosts_dir=s.hosts_dir,
        authfile=s.authfile or None,
        plain_http=True if s.plain_http else None,
        insecure=s.insecure_skip_verify,
        retries=s.retries,
        backoff=s.backoff,
    )
