"""Disk use per image: compressed content and unpacked snapshots, exclusive vs shared.

For every image record:

* **content**: the blobs reachable from the record that the store holds (target, the
  index's manifests present, their configs and layers; see
  :func:`~cargohold.images.content.image_contents`), sized by their files on disk;
* **snapshots**: the chain IDs of its layers (from the configs' ``diff_ids``) that the
  snapshotter has, sized by the snapshotter's usage (only when the store has a snapshotter,
  ``store.snapshots``, or one is passed).

A blob or chain used by more than one image record is **shared** (two records naming the
same target share everything); otherwise it is **exclusive** to its image: removing that
image (and running gc) frees its exclusive bytes.

Totals count every blob once: ``content_bytes`` = the sum of the sizes of every committed
blob file (what ``<root>/content/blobs`` holds), = ``referenced_bytes`` +
``unreferenced_bytes`` (blobs no image record reaches: leased downloads, leftovers gc would
remove; listed in ``unreferenced``). ``snapshot_bytes`` = the usage of every snapshot the
snapshotter has, counted once. ``selected_content_bytes`` / ``selected_snapshot_bytes``: the
rows' images together (every image, or the ones named), each blob and chain once: what
removing all of them would leave to share or free. ``ingest_bytes``: downloads in progress
or interrupted (what ``content/ingest`` holds; a rerun resumes them, ``gc`` removes stale
ones). ``total_bytes`` = content + snapshots + ingests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import CargoholdError
from cargohold.images.content import image_contents, present_configs
from cargohold.maintain.verify import select_images
from cargohold.oci.chainid import layer_chains
from cargohold.store.interfaces import Snapshotter, Store

__all__ = ["DiskUsage", "ImageUsage", "disk_usage"]


@dataclass
class ImageUsage:
    name: str
    digest: str
    platforms: list[str]
    blobs: int
    content_bytes: int
    content_exclusive: int
    content_shared: int
    chains: int
    snapshot_bytes: int
    snapshot_exclusive: int
    snapshot_shared: int

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    @property
    def exclusive_bytes(self) -> int:
        return self.content_exclusive + self.snapshot_exclusive

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "platforms": self.platforms,
            "blobs": self.blobs,
            "content_bytes": self.content_bytes,
            "content_exclusive_bytes": self.content_exclusive,
            "content_shared_bytes": self.content_shared,
            "chains": self.chains,
            "snapshot_bytes": self.snapshot_bytes,
            "snapshot_exclusive_bytes": self.snapshot_exclusive,
            "snapshot_shared_bytes": self.snapshot_shared,
            "total_bytes": self.total_bytes,
            "exclusive_bytes": self.exclusive_bytes,
        }


@dataclass
class DiskUsage:
    images: list[ImageUsage]
    #: Every committed blob file, once.
    content_bytes: int
    #: Blobs reachable from some image record / from more than one.
    referenced_bytes: int
    shared_content_bytes: int
    unreferenced: list[tuple[str, int]] = field(default_factory=list)
    snapshot_bytes: int = 0
    shared_snapshot_bytes: int = 0
    snapshots_available: bool = False
    #: Content / snapshot bytes of the selected images together (shared bytes once).
    selected_content_bytes: int = 0
    selected_snapshot_bytes: int = 0
    #: Bytes written by downloads in progress or interrupted, and how many.
    ingest_bytes: int = 0
    ingests: int = 0

    @property
    def unreferenced_bytes(self) -> int:
        return sum(s for _, s in self.unreferenced)

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes + self.ingest_bytes

    @property
    def selected_total_bytes(self) -> int:
        return self.selected_content_bytes + self.selected_snapshot_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "images": [i.to_json() for i in self.images],
            "selected": {
                "images": len(self.images),
                "content_bytes": self.selected_content_bytes,
                "snapshot_bytes": (self.selected_snapshot_bytes if self.snapshots_available
                                   else None),
                "total_bytes": self.selected_total_bytes,
            },
            "totals": {
                "content_bytes": self.content_bytes,
                "referenced_bytes": self.referenced_bytes,
                "shared_content_bytes": self.shared_content_bytes,
                "unreferenced_bytes": self.unreferenced_bytes,
                "snapshot_bytes": self.snapshot_bytes if self.snapshots_available else None,
                "shared_snapshot_bytes": self.shared_snapshot_bytes,
                "ingest_bytes": self.ingest_bytes,
                "ingests": self.ingests,
                "total_bytes": self.total_bytes,
            },
            "unreferenced": [{"digest": d, "size": s} for d, s in self.unreferenced],
        }


def _image_chains(content: Any, contents: Any) -> list[str]:
    out: list[str] = []
    for m, cfg in present_configs(content, contents):
        for c, _ in layer_chains(cfg, m):
            if str(c) not in out:
                out.append(str(c))
    return out


def disk_usage(
    store: Store, refs: Sequence[str] | None = None, *, snapshots: Snapshotter | None = None
) -> DiskUsage:
    """Disk use of the images (rows: all records, or ``refs``); totals cover the store."""
    if snapshots is None:
        snapshots = store.snapshots
    content = store.content
    files: dict[str, int] = {str(info.digest): info.size for info in content.walk()}
    records = sorted(store.images.list(), key=lambda i: i.name)
    wanted = {i.name for i in select_images(store.images, refs)} if refs else None

    ingests = content.list_statuses()
    snap_sizes: dict[str, int] = {}
    if snapshots is not None:
        for info in snapshots.walk():
            try:
                snap_sizes[info.name] = int(snapshots.usage(info.name).size)
            except CargoholdError:
                continue

    per_image: list[tuple[Any, list[str], list[str], list[str]]] = []
    blob_users: dict[str, int] = {}
    chain_users: dict[str, int] = {}
    for img in records:
        try:
            contents = image_contents(content, img.target)
        except CargoholdError:
            per_image.append((img, [], [], []))
            continue
        blobs = [str(d.digest) for d, present in contents.blobs
                 if present and str(d.digest) in files]
        chains = [c for c in _image_chains(content, contents) if c in snap_sizes]
        for b in blobs:
            blob_users[b] = blob_users.get(b, 0) + 1
        for c in chains:
            chain_users[c] = chain_users.get(c, 0) + 1
        per_image.append((img, contents.platforms, blobs, chains))

    rows: list[ImageUsage] = []
    sel_blobs: set[str] = set()
    sel_chains: set[str] = set()
    for img, platforms, blobs, chains in per_image:
        if wanted is not None and img.name not in wanted:
            continue
        sel_blobs.update(blobs)
        sel_chains.update(chains)
        c_sh = sum(files[b] for b in blobs if blob_users[b] > 1)
        c_all = sum(files[b] for b in blobs)
        s_sh = sum(snap_sizes[c] for c in chains if chain_users[c] > 1)
        s_all = sum(snap_sizes[c] for c in chains)
        rows.append(ImageUsage(
            name=img.name,
            digest=str(img.target.digest),
            platforms=list(platforms),
            blobs=len(blobs),
            content_bytes=c_all,
            content_exclusive=c_all - c_sh,
            content_shared=c_sh,
            chains=len(chains),
            snapshot_bytes=s_all,
            snapshot_exclusive=s_all - s_sh,
            snapshot_shared=s_sh,
        ))
    return DiskUsage(
        images=rows,
        content_bytes=sum(files.values()),
        referenced_bytes=sum(files[b] for b in blob_users),
        shared_content_bytes=sum(files[b] for b, n in blob_users.items() if n > 1),
        unreferenced=sorted((d, s) for d, s in files.items() if d not in blob_users),
        snapshot_bytes=sum(snap_sizes.values()),
        shared_snapshot_bytes=sum(snap_sizes[c] for c, n in chain_users.items() if n > 1),
        snapshots_available=snapshots is not None,
        selected_content_bytes=sum(files[b] for b in sel_blobs),
        selected_snapshot_bytes=sum(snap_sizes[c] for c in sel_chains),
        ingest_bytes=sum(max(0, int(s.offset)) for s in ingests),
        ingests=len(ingests),
    )
