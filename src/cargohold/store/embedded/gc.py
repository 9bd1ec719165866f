"""Garbage collection of the embedded store: mark from images and leases, sweep the rest.

Roots: every image record (its target, plus gc.ref labels on the record), every lease that
has not expired and whose owner process is alive (its resources), content labelled ``containerd.io/gc.root``, and whatever
a snapshot sweeper names. Edges: content labels ``containerd.io/gc.ref.content*`` and
``containerd.io/gc.ref.snapshot.*`` (an index points at its manifests, a manifest at its
config and layers), lease resources, and the snapshot sweeper's own edges.

Swept: unreferenced blobs (file first, then its row, so a crash leaves at worst a row
without a file, dropped by the next gc), content rows without a file, ingests that no live
lease holds and no live writer has locked, expired leases and those of dead processes, and
whatever the snapshot sweeper removes (sizes are the bytes on disk, also of active snapshots). Everything runs under the exclusive root lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cargohold.leasing import owner_dead
from cargohold.store.embedded.leases import lease_expired
from cargohold.store.embedded.lock import RootLock
from cargohold.store.embedded.metadata import now as _now
from cargohold.store.embedded.store import EmbeddedStore
from cargohold.store.gcmark import Node, is_gc_root, mark, references_from_labels
from cargohold.store.interfaces import Image, LeaseResource


@dataclass(frozen=True)
class Removed:
    """One thing gc removed (or would remove): kind is content, ingest, lease or snapshot."""

    kind: str
    id: str
    size: int = 0

    def __str__(self) -> str:
        return f"{self.kind} {self.id}" + (f" ({self.size} bytes)" if self.size else "")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "size": self.size}


@dataclass
class GCResult:
    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    marked: int = 0
    stale_rows: int = 0
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        return sum(r.size for r in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": [r.to_json() for r in self.removed],
            "bytes_freed": self.bytes_freed,
            "marked": self.marked,
            "stale_rows": self.stale_rows,
            "seconds": round(self.seconds, 3),
        }


class SnapshotSweeper(Protocol):
    """The extension point for snapshots (added with the snapshotter).

    gc asks it for extra roots and for the edges out of snapshot nodes while marking,
    then lets it remove every snapshot not in the marked set.
    """

    def roots(self) -> Iterable[Node]:
        """Snapshot (or content) nodes that are roots on their own, e.g. gc.root-labelled."""
        ...

    def references(self, node: Node) -> Iterable[Node]:
        """Edges out of a snapshot node: its parent, and its gc.ref labels."""
        ...

    def sweep(self, marked: Set[Node], *, dry_run: bool) -> list[Removed]:
        """Remove (or with dry_run, list) snapshots not in ``marked``."""
        ...


def resource_node(res: LeaseResource) -> Node | None:
    """The gc node a lease resource protects."""
    if res.type == "content":
        return Node.content(res.id)
    if res.type == "ingest":
        return Node.ingest(res.id)
    if res.type.startswith("snapshots/"):
        return Node.snapshot(res.type.removeprefix("snapshots/"), res.id)
    return None


def collect(
    store: EmbeddedStore,
    *,
    dry_run: bool = False,
    snapshot_hook: SnapshotSweeper | None = None,
    now: datetime | None = None,
    wait: bool = False,
) -> GCResult:
    """Mark and sweep under the exclusive root lock (re-entrant if this thread holds it).

    ``wait=False``: ConflictError at once if other commands are using the store.
    ``now``: the time leases' expiry is compared with (tests).
    """
    start = time.monotonic()
    result = GCResult(dry_run=dry_run)
    at = now or _now()
    with RootLock(store.root, exclusive=True, wait=wait):
        images: dict[str, Image] = {i.name: i for i in store.images.list()}
        leases = store.leases.list()
        # A lease whose owner process is dead (kill -9) protects nothing, as an expired one.
        live = {lease.id for lease in leases
                if not lease_expired(lease, at) and not owner_dead(lease.labels)}
        resources = store.leases.all_resources()
        content_labels = store.content.labels_by_digest()

        roots: list[Node] = [Node.image(n) for n in images]
        roots += [Node.lease(lid) for lid in live]
        roots += [Node.content(d) for d, lb in content_labels.items() if is_gc_root(lb)]
        if snapshot_hook is not None:
            roots += list(snapshot_hook.roots())

        def refs(node: Node) -> Iterable[Node]:
            if node.kind == "content":
                return references_from_labels(content_labels.get(node.id, {}))
            if node.kind == "image":
                img = images[node.id]
                return [Node.content(img.target.digest), *references_from_labels(img.labels)]
            if node.kind == "lease":
                nodes = (resource_node(r) for r in resources.get(node.id, []))
                return [n for n in nodes if n is not None]
            if node.kind == "snapshot" and snapshot_hook is not None:
                return snapshot_hook.references(node)
            return ()

        marked = mark(roots, refs)
        result.marked = len(marked)

        # Content: file first, then row.
        for digest, st in list(store.content.iter_blob_files()):
            if Node.content(digest) in marked:
                continue
            size = st.st_size if st.st_nlink == 1 else 0
            if not dry_run:
                existed, size = store.content.remove_blob(digest)
                if not existed:
                    continue
            result.removed.append(Removed("content", str(digest), size))
        if not dry_run:
            result.stale_rows = store.content.remove_rows_without_files()

        # Ingests: not held by a live lease, not locked by a live writer.
        for entry in store.content.ingests():
            if entry.ref is not None and Node.ingest(entry.ref) in marked:
                continue
            if store.content.remove_ingest_if_idle(entry, dry_run=dry_run):
                result.removed.append(Removed("ingest", entry.ref or entry.key, entry.size))

        if snapshot_hook is not None:
            result.removed += snapshot_hook.sweep(marked, dry_run=dry_run)

        # Expired leases and those of dead processes last: until now they were not roots.
        for lease in leases:
            if lease.id in live:
                continue
            if not dry_run:
                store.leases.delete(lease.id)
            result.removed.append(Removed("lease", lease.id))
    result.seconds = time.monotonic() - start
    return result


__all__ = ["GCResult", "Removed", "SnapshotSweeper", "collect", "resource_node"]
