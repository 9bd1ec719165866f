"""LeaseManager over containerd's leases service (``containerd.services.leases.v1``).

A lease keeps what is attached to it -- content, ingests, snapshots -- from containerd's
garbage collector until the lease is deleted or its ``containerd.io/gc.expire`` label
passes. Work is attached by making calls while :data:`cargohold.store.interfaces.active_lease`
holds the lease id (the client sends it as the ``containerd-lease`` header) or explicitly
with :meth:`ContainerdLeaseManager.add_resource`.

Resource types are the interface's: ``content``, ``ingest`` and ``snapshots/<snapshotter>``;
containerd calls ingests ``ingests`` and the translation happens here.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cargohold.labels import LABEL_GC_EXPIRE
from cargohold.store.containerd.client import ContainerdClient, from_timestamp
from cargohold.store.interfaces import Lease, LeaseResource

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TO_CONTAINERD = {"ingest": "ingests"}
_FROM_CONTAINERD = {v: k for k, v in _TO_CONTAINERD.items()}


def rfc3339(when: datetime) -> str:
    """The form containerd parses for gc.expire (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lease(pb: Any) -> Lease:
    return Lease(
        id=str(pb.id), created_at=from_timestamp(pb.created_at) or _EPOCH, labels=dict(pb.labels)
    )


class ContainerdLeaseManager:
    """The LeaseManager protocol over a :class:`ContainerdClient`'s namespace."""

    def __init__(self, client: ContainerdClient) -> None:
        self.client = client
        self._pb: Any = client.api.leases
        self._stub: Any = client.leases_stub

    def create(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        lease_id: str = "",
        expire: timedelta | datetime | None = None,
    ) -> Lease:
        """Create a lease (containerd picks a random id if ``lease_id`` is empty).

        ``expire`` (a duration from now or a point in time) sets ``containerd.io/gc.expire``.
        Raises AlreadyExistsError if the id is taken.
        """
        lbls = dict(labels or {})
        if expire is not None:
            when = datetime.now(UTC) + expire if isinstance(expire, timedelta) else expire
            lbls[LABEL_GC_EXPIRE] = rfc3339(when)
        resp = self.client.call(
            self._stub.Create,
            self._pb.CreateRequest(id=lease_id, labels=lbls),
            what=f"create lease {lease_id}".rstrip(),
        )
        return _lease(resp.lease)

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease; ``sync`` waits for the garbage collection it triggers."""
        self.client.call(
            self._stub.Delete,
            self._pb.DeleteRequest(id=lease_id, sync=sync),
            what=f"delete lease {lease_id}",
        )

    def list(self, *, filters: Sequence[str] = ()) -> builtins.list[Lease]:
        resp = self.client.call(
            self._stub.List, self._pb.ListRequest(filters=list(filters)), what="list leases"
        )
        return [_lease(pb) for pb in resp.leases]

    def _resource(self, r: LeaseResource) -> Any:
        return self._pb.Resource(id=r.id, type=_TO_CONTAINERD.get(r.type, r.type))

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        self.client.call(
            self._stub.AddResource,
            self._pb.AddResourceRequest(id=lease_id, resource=self._resource(resource)),
            what=f"lease {lease_id}: add {resource.type} {resource.id}",
        )

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None:
        self.client.call(
            self._stub.DeleteResource,
            self._pb.DeleteResourceRequest(id=lease_id, resource=self._resource(resource)),
            what=f"lease {lease_id}: remove {resource.type} {resource.id}",
        )

    def list_resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        resp = self.client.call(
            self._stub.ListResources,
            self._pb.ListResourcesRequest(id=lease_id),
            what=f"lease {lease_id}: list resources",
        )
        return [
            LeaseResource(type=_FROM_CONTAINERD.get(r.type, r.type), id=str(r.id))
            for r in resp.resources
        ]
