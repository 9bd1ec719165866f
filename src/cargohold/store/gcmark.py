"""Garbage-collection marking, pure: the reference graph and containerd's gc label convention.

Nodes are resources (content blobs, snapshots, ingests) and the roots that hold them
(images, leases). :func:`mark` walks from the roots along the edges a ``refs`` callback
gives; everything not marked is garbage. The store-specific part (what exists, what to
delete) lives in ``cargohold.store.embedded.gc``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cargohold.labels import GC_REF_CONTENT, GC_REF_SNAPSHOT, LABEL_GC_ROOT

NodeKind = Literal["content", "snapshot", "image", "lease", "ingest"]


@dataclass(frozen=True, order=True, slots=True)
class Node:
    """One vertex of the gc graph.

    ``id`` is the digest string (content), the image name, the lease id, the ingest ref,
    or the snapshot key; ``snapshotter`` is set for snapshots only.
    """

    kind: NodeKind
    id: str
    snapshotter: str = ""

    @classmethod
    def content(cls, digest: object) -> Node:
        return cls("content", str(digest))

    @classmethod
    def snapshot(cls, snapshotter: str, key: str) -> Node:
        return cls("snapshot", key, snapshotter)

    @classmethod
    def image(cls, name: str) -> Node:
        return cls("image", name)

    @classmethod
    def lease(cls, lease_id: str) -> Node:
        return cls("lease", lease_id)

    @classmethod
    def ingest(cls, ref: str) -> Node:
        return cls("ingest", ref)

    def __str__(self) -> str:
        if self.kind == "snapshot":
            return f"snapshot {self.snapshotter}/{self.id}"
        return f"{self.kind} {self.id}"


def mark(roots: Iterable[Node], refs: Callable[[Node], Iterable[Node]]) -> set[Node]:
    """Every node reachable from ``roots`` (roots included). Iterative and cycle-safe:
    each node's ``refs`` is asked once, however deep or cyclic the graph."""
    marked: set[Node] = set()
    stack: list[Node] = list(roots)
    while stack:
        node = stack.pop()
        if node in marked:
            continue
        marked.add(node)
        stack.extend(r for r in refs(node) if r not in marked)
    return marked


def _is_content_ref(key: str) -> bool:
    if not key.startswith(GC_REF_CONTENT):
        return False
    # The bare label, or a named one: gc.ref.content.<name> (containerd also takes '/').
    return len(key) == len(GC_REF_CONTENT) or key[len(GC_REF_CONTENT)] in "./"


def references_from_labels(labels: Mapping[str, str]) -> list[Node]:
    """The nodes a resource's labels point at, in label-key order.

    ``containerd.io/gc.ref.content[.<anything>] = <digest>`` -> a content node;
    ``containerd.io/gc.ref.snapshot.<snapshotter>[/<anything>] = <key>`` -> a snapshot node.
    Other labels and empty values are ignored. Values are not validated: a reference to
    something that does not exist marks nothing that could be swept.
    """
    out: list[Node] = []
    snap_prefix = GC_REF_SNAPSHOT + "."
    for key in sorted(labels):
        value = labels[key]
        if not value:
            continue
        if _is_content_ref(key):
            out.append(Node("content", value))
        elif key.startswith(snap_prefix):
            snapshotter = key[len(snap_prefix) :].split("/", 1)[0]
            if snapshotter:
                out.append(Node("snapshot", value, snapshotter))
    return out


def is_gc_root(labels: Mapping[str, str]) -> bool:
    """Whether labels make their resource a root (``containerd.io/gc.root``)."""
    return LABEL_GC_ROOT in labels
