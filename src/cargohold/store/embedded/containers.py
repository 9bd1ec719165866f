"""Container records of the embedded store (containerd's containers service, minimal).

A container is a name, the image it was created from, and the active snapshot holding its
writable root file system (key ``containers/<name>``, on top of the image's top chain).
Records live in the store's ``metadata.db`` in a table of their own (``containers``,
created on first use).  The container snapshot carries ``containerd.io/gc.root`` (gc keeps
it, and through its parent the image's layers) and ``io.cargohold.container=<name>``;
:class:`ContainerRoots` also makes every recorded container's snapshot a gc root.

Creation order: the record first (claims the name), then the snapshot; removal: the
snapshot first, then the record.  So a crash leaves at worst a record without a snapshot
(``containers rm`` removes it), never an unrecorded snapshot that gc must keep.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cargohold.errors import ConflictError, InvalidInputError, NotFoundError
from cargohold.store.embedded.metadata import (
    MetadataDB,
    dump_labels,
    load_labels,
    now,
    parse_ts,
    ts,
)

if TYPE_CHECKING:
    from cargohold.store.embedded.gc import Removed, SnapshotSweeper
    from cargohold.store.gcmark import Node

SNAPSHOT_PREFIX = "containers/"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_SCHEMA = """CREATE TABLE IF NOT EXISTS containers (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    image_digest TEXT NOT NULL,
    platform TEXT NOT NULL DEFAULT '',
    snapshotter TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
)"""


def check_name(name: str) -> str:
    """A container name: letters, digits, ``_ . -``; 1-128 characters, not starting with
    a punctuation mark (usable as a runc container ID and a snapshot key)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInputError(
            f"invalid container name {name!r}: use 1-128 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def snapshot_key(name: str) -> str:
    return SNAPSHOT_PREFIX + check_name(name)


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    image_digest: str
    snapshotter: str
    snapshot_key: str
    platform: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "image_digest": self.image_digest,
            "platform": self.platform,
            "snapshotter": self.snapshotter,
            "snapshot_key": self.snapshot_key,
            "labels": dict(self.labels),
            "created_at": ts(self.created_at) if self.created_at else None,
        }


_COLS = "name, image, image_digest, platform, snapshotter, snapshot_key, labels, created_at"


def _row(r: Any) -> Container:
    return Container(
        name=r[0],
        image=r[1],
        image_digest=r[2],
        platform=r[3],
        snapshotter=r[4],
        snapshot_key=r[5],
        labels=load_labels(r[6]),
        created_at=parse_ts(r[7]),
    )


class EmbeddedContainerStore:
    """Container records in the store's database."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db
        if not db.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'containers'"):
            with db.write("creating the containers table") as c:
                c.execute(_SCHEMA)

    def create(self, container: Container) -> Container:
        """Record ``container`` (created_at set now); ConflictError if the name is taken."""
        check_name(container.name)
        created = container.created_at or now()
        with self.db.write(f"creating container {container.name}") as c:
            if c.execute(
                "SELECT 1 FROM containers WHERE name = ?", (container.name,)
            ).fetchone():
                raise ConflictError(
                    f"container {container.name!r} already exists",
                    hint="choose another name, or remove it with `cargohold containers rm`",
                )
            c.execute(
                f"INSERT INTO containers ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    container.name,
                    container.image,
                    container.image_digest,
                    container.platform,
                    container.snapshotter,
                    container.snapshot_key,
                    dump_labels(container.labels),
                    ts(created),
                ),
            )
        return self.get(container.name)

    def get(self, name: str) -> Container:
        rows = self.db.query(f"SELECT {_COLS} FROM containers WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(
                f"container {name!r} does not exist",
                hint="`cargohold containers ls` lists the containers",
            )
        return _row(rows[0])

    def list(self) -> builtins.list[Container]:
        return [_row(r) for r in self.db.query(f"SELECT {_COLS} FROM containers ORDER BY name")]

    def delete(self, name: str) -> None:
        """Remove the record; NotFoundError if there is none."""
        with self.db.write(f"removing container {name}") as c:
            cur = c.execute("DELETE FROM containers WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFoundError(f"container {name!r} does not exist")


class ContainerRoots:
    """A gc snapshot hook: ``inner``'s, plus every recorded container's snapshot as a root
    (the record keeps its snapshot as a containerd container record does)."""

    def __init__(self, inner: SnapshotSweeper, containers: EmbeddedContainerStore,
                 snapshotter_name: str) -> None:
        self.inner = inner
        self.containers = containers
        self.snapshotter_name = snapshotter_name

    def roots(self) -> Iterable[Node]:
        from cargohold.store.gcmark import Node

        yield from self.inner.roots()
        for c in self.containers.list():
            if c.snapshotter == self.snapshotter_name:
                yield Node.snapshot(c.snapshotter, c.snapshot_key)

    def references(self, node: Node) -> Iterable[Node]:
        return self.inner.references(node)

    def sweep(self, marked: Set[Node], *, dry_run: bool) -> builtins.list[Removed]:
        return self.inner.sweep(marked, dry_run=dry_run)


__all__ = [
    "SNAPSHOT_PREFIX",
    "Container",
    "ContainerRoots",
    "EmbeddedContainerStore",
    "check_name",
    "snapshot_key",
]
