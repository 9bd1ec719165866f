"""The containerd backend: content, images, leases, snapshots and the applier of one namespace
of a real containerd."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cargohold.labels import LABEL_PURPOSE
from cargohold.store.containerd.client import (
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    ContainerdClient,
    ServerVersion,
)
from cargohold.store.containerd.content import ContainerdContentStore
from cargohold.store.containerd.diff import ContainerdApplier
from cargohold.store.containerd.fastapply import FastApplier
from cargohold.store.containerd.images import ContainerdImageStore
from cargohold.store.containerd.leases import ContainerdLeaseManager
from cargohold.store.containerd.snapshots import ContainerdSnapshotter
from cargohold.store.containerd.staged import SNAPSHOTTER_PLUGIN, StagedSnapshotter

if TYPE_CHECKING:
    from cargohold.settings import Settings
    from cargohold.store.interfaces import (
        Applier,
        ContentStore,
        ContentWriter,
        ImageStore,
        LeaseManager,
        Snapshotter,
        Store,
    )


class ContainerdStore:
    """containerd reached over its gRPC socket, behind cargohold's store interfaces.

    Creating it connects lazily (nothing is sent until the first call; :meth:`version`
    checks the socket). It is a context manager; :meth:`close` closes the channel.
    """

    kind: Literal["containerd"] = "containerd"
    #: Any namespace may hold snapshots.
    has_snapshots = True
    #: containerd collects after deletes and lease removals (see :meth:`collect_garbage`).
    gc_in_background = True

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        snapshotter: str = "overlayfs",
        *,
        timeout: float | None = 300.0,
        reserve_bytes: int = 0,
    ) -> None:
        self.client = ContainerdClient(address, namespace, timeout=timeout)
        self.address = address
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.content = ContainerdContentStore(self.client)
        self.images = ContainerdImageStore(self.client)
        self.leases = ContainerdLeaseManager(self.client)
        self.snapshots: ContainerdSnapshotter | StagedSnapshotter = ContainerdSnapshotter(
            self.client, snapshotter)
        #: containerd's diff service (the fallback for snapshotters cargohold does not know).
        self.diff_applier = ContainerdApplier(self.client, self.content)
        #: cargohold's applier into the snapshots of ``overlayfs`` and ``native`` (see
        #: :mod:`.fastapply`), containerd's diff service for the others.
        self.applier = FastApplier(snapshotter, self.diff_applier, reserve_bytes=reserve_bytes)
        if snapshotter == "overlayfs" and self.applier.direct and os.geteuid() == 0:
            # Layers applied in parallel, committed in order (see .staged).
            self.snapshots = StagedSnapshotter(self.snapshots)

    def snapshotter_named(self, name: str) -> ContainerdSnapshotter:
        """Another of containerd's snapshotters (e.g. ``native``) in the same namespace."""
        return ContainerdSnapshotter(self.client, name)

    def raise_reserve(self, nbytes: int) -> None:
        """Nothing: containerd's snapshotters and diff service keep no reserve (cargohold's
        direct applier keeps the one the store was opened with)."""

    def filesystem_path(self) -> Path | None:
        """The directory of this store's snapshotter, asked through containerd's
        introspection service, when this process can see it; else None."""
        where = self.client.plugin_exports(SNAPSHOTTER_PLUGIN, self.snapshotter).get("root")
        return Path(where) if where and os.path.isdir(where) else None

    @classmethod
    def from_settings(cls, settings: Settings) -> ContainerdStore:
        from cargohold.units import parse_size

        return cls(settings.address, settings.namespace, settings.snapshotter,
                   reserve_bytes=parse_size(settings.reserve) if settings.reserve else 0)

    def collect_garbage(self) -> None:
        """Run containerd's garbage collector now and wait for it (a lease deleted with
        ``sync``). Deleting a blob only drops this namespace's reference; the file goes when
        the collector runs, and until then writing the same digest again would find the
        old file "already present"."""
        lease = self.leases.create(labels={LABEL_PURPOSE: "collect-garbage"})
        self.leases.delete(lease.id, sync=True)

    def version(self) -> ServerVersion:
        return self.client.version()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ContainerdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:

    def _conforms(
        s: ContainerdStore,
    ) -> tuple[ContentStore, ContentWriter, ImageStore, LeaseManager, Snapshotter, Applier]:
        """mypy checks here that the classes satisfy the store protocols."""
        return s.content, s.content.writer("r"), s.images, s.leases, s.snapshots, s.applier

    _store: type[Store] = ContainerdStore  # mypy checks that it is a whole store
