"""Snapshotter over containerd's snapshots service (``containerd.services.snapshots.v1``).

One :class:`ContainerdSnapshotter` serves one snapshotter of containerd (``overlayfs`` by
default; every request names it). Snapshots made while
:data:`~cargohold.store.interfaces.active_lease` is set belong to that lease (resource type
``snapshots/<snapshotter>``).

containerd fixes a snapshot's parent at prepare time, so :attr:`standalone_layers` is False:
prepare each layer on its committed parent, in order. Error vocabulary as mapped here:
``mounts`` of a committed snapshot and ``commit`` of one that is not active are
InvalidInputError (containerd: FAILED_PRECONDITION); removing a snapshot with children is
ConflictError; a taken key or name is AlreadyExistsError; a missing parent NotFoundError,
an uncommitted one InvalidInputError.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cargohold.errors import CargoholdError, ConflictError, InvalidInputError, UnsupportedError
from cargohold.store.containerd.client import ContainerdClient, from_timestamp
from cargohold.store.interfaces import (
    KIND_ACTIVE,
    KIND_COMMITTED,
    KIND_VIEW,
    Mount,
    SnapshotInfo,
    Usage,
)


def mounts_from_pb(pbs: Any) -> list[Mount]:
    return [Mount(type=str(m.type), source=str(m.source), options=tuple(m.options)) for m in pbs]


def mounts_to_pb(client: ContainerdClient, mounts: Sequence[Mount]) -> list[Any]:
    pb = client.api.types_mount
    return [pb.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


class ContainerdSnapshotter:
    """The Snapshotter protocol over one containerd snapshotter in a client's namespace."""

    def __init__(self, client: ContainerdClient, name: str = "overlayfs") -> None:
        self.client = client
        self._name = name
        self._pb: Any = client.api.snapshots
        self._stub: Any = client.snapshots_stub
        self._kinds = {
            self._pb.ACTIVE: KIND_ACTIVE,
            self._pb.VIEW: KIND_VIEW,
            self._pb.COMMITTED: KIND_COMMITTED,
        }

    @property
    def name(self) -> str:
        return self._name

    @property
    def standalone_layers(self) -> bool:
        """containerd cannot give a snapshot another parent at commit."""
        return False

    @property
    def usage_per_layer(self) -> bool:
        """containerd's API: usage excludes the parents, but ``native`` copies them."""
        return self._name != "native"

    @property
    def local_dir(self) -> Path | None:
        """containerd writes the snapshots (its snapshotter checks its own space)."""
        return None

    def _info(self, pb: Any) -> SnapshotInfo:
        return SnapshotInfo(
            kind=self._kinds.get(pb.kind, "unknown"),
            name=str(pb.name),
            parent=str(pb.parent),
            labels=dict(pb.labels),
            created_at=from_timestamp(pb.created_at),
            updated_at=from_timestamp(pb.updated_at),
        )

    def _precondition_is_invalid(self, fn: Any, request: Any, what: str) -> Any:
        try:
            return self.client.call(fn, request, what=what)
        except ConflictError as e:
            if type(e) is ConflictError:  # FAILED_PRECONDITION: wrong kind of snapshot
                raise InvalidInputError(e.message) from None
            raise

    def stat(self, key: str) -> SnapshotInfo:
        resp = self.client.call(
            self._stub.Stat,
            self._pb.StatSnapshotRequest(snapshotter=self._name, key=key),
            what=f"snapshot {key}",
        )
        return self._info(resp.info)

    def update(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        """Set labels; a None (or empty) value removes the label. Other labels are kept."""
        if not labels:
            return self.stat(key)
        info = self._pb.Info(name=key, labels={k: v for k, v in labels.items() if v})
        mask = self.client.api.field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        resp = self.client.call(
            self._stub.Update,
            self._pb.UpdateSnapshotRequest(snapshotter=self._name, info=info, update_mask=mask),
            what=f"update snapshot {key}",
        )
        return self._info(resp.info)

    def usage(self, key: str) -> Usage:
        resp = self.client.call(
            self._stub.Usage,
            self._pb.UsageRequest(snapshotter=self._name, key=key),
            what=f"usage of snapshot {key}",
        )
        return Usage(size=int(resp.size), inodes=int(resp.inodes))

    def mounts(self, key: str) -> builtins.list[Mount]:
        resp = self._precondition_is_invalid(
            self._stub.Mounts,
            self._pb.MountsRequest(snapshotter=self._name, key=key),
            f"mounts of snapshot {key}",
        )
        return mounts_from_pb(resp.mounts)

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        what = f"prepare snapshot {key}" + (f" on {parent}" if parent else "")
        return self._open(self._stub.Prepare, self._pb.PrepareSnapshotRequest,
                          key, parent, labels, what)

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        what = f"view {key}" + (f" of {parent}" if parent else "")
        return self._open(self._stub.View, self._pb.ViewSnapshotRequest, key, parent, labels, what)

    def _open(
        self,
        fn: Any,
        request_type: Any,
        key: str,
        parent: str,
        labels: Mapping[str, str] | None,
        what: str,
    ) -> builtins.list[Mount]:
        """An active snapshot or a view (``fn``: Prepare or View) and its mounts."""
        request = request_type(
            snapshotter=self._name, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_pb(self.client.call(fn, request, what=what).mounts)

    def commit(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        if parent is not None:
            have = self.stat(key).parent
            if parent != have:
                raise UnsupportedError(
                    f"commit {key} as {name}: containerd keeps the parent given to prepare "
                    f"({have or 'none'}), it cannot become {parent or 'none'}",
                    hint="prepare each layer on its committed parent (standalone_layers is "
                    "False for containerd)",
                )
        try:
            self._precondition_is_invalid(
                self._stub.Commit,
                self._pb.CommitSnapshotRequest(
                    snapshotter=self._name, name=name, key=key, labels=dict(labels or {})
                ),
                f"commit snapshot {key} as {name}",
            )
        except CargoholdError as e:
            # containerd 1.6's native snapshotter fails a view's commit with UNKNOWN (it
            # looks for the view's directory, which a view does not have), not with
            # FAILED_PRECONDITION as overlayfs does: the same InvalidInputError for both.
            if type(e) is CargoholdError and self.stat(key).kind != KIND_ACTIVE:
                raise InvalidInputError(
                    f"commit snapshot {key} as {name}: {key} is not active"
                ) from None
            raise

    def remove(self, key: str) -> None:
        self.client.call(
            self._stub.Remove,
            self._pb.RemoveSnapshotRequest(snapshotter=self._name, key=key),
            what=f"remove snapshot {key}",
        )

    def walk(self, *, filters: Sequence[str] = ()) -> Iterator[SnapshotInfo]:
        req = self._pb.ListSnapshotsRequest(snapshotter=self._name, filters=list(filters))
        for resp in self.client.stream(self._stub.List, req, what="list snapshots"):
            for pb in resp.info:
                yield self._info(pb)
