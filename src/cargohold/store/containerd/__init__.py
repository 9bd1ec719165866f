"""The containerd backend of cargohold's store interfaces (gRPC to a running containerd).

Importing this package is cheap; the gRPC API is generated (once, cached) when the first
:class:`ContainerdClient` is created -- see :mod:`cargohold.store.containerd.api`.
"""

from cargohold.store.containerd.client import ContainerdClient, ServerVersion, map_rpc_error
from cargohold.store.containerd.content import ContainerdContentStore, ContainerdContentWriter
from cargohold.store.containerd.diff import ContainerdApplier
from cargohold.store.containerd.images import ContainerdImageStore
from cargohold.store.containerd.leases import ContainerdLeaseManager
from cargohold.store.containerd.snapshots import ContainerdSnapshotter
from cargohold.store.containerd.store import ContainerdStore

__all__ = [
    "ContainerdApplier",
    "ContainerdClient",
    "ContainerdContentStore",
    "ContainerdContentWriter",
    "ContainerdImageStore",
    "ContainerdLeaseManager",
    "ContainerdSnapshotter",
    "ContainerdStore",
    "ServerVersion",
    "map_rpc_error",
]
