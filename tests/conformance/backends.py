"""The snapshotter backends of the conformance suite, opened as cargohold opens them.

Four backends, each a ``Snapshotter`` and the ``Applier`` cargohold uses with it:

* ``embedded-overlay``: the embedded store's snapshotter (overlayfs layers) and
  ``EmbeddedApplier``;
* ``embedded-flat``: the embedded store's non-overlay snapshotter (a full copy per
  snapshot, whiteouts applied as deletions) and ``EmbeddedApplier``;
* ``containerd-overlayfs``: ``ContainerdStore(..., "overlayfs")``'s ``snapshots`` (the
  staged wrapper that gives containerd 1.6 standalone layers) and ``applier``;
* ``containerd-native``: ``ContainerdStore(..., "native")``'s ``snapshots`` and ``applier``.

containerd is the private one of ``tests/rig/containerd.py`` (a fresh namespace per opening),
never the system's. All four need root (mounts, overlayfs, containerd's directories): under
``CI=true`` a missing part fails, elsewhere it skips (``tests/rig/needs.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cargohold.store.interfaces import Applier, Snapshotter
from tests.rig.containerd import Containerd
from tests.rig.needs import require_root

SNAPSHOT_BACKENDS = (
    "embedded-overlay",
    "embedded-flat",
    "containerd-overlayfs",
    "containerd-native",
)

#: What each backend's ``usage`` of a committed snapshot counts (the Snapshotter protocol's
#: ``Usage``: "its diff for overlay, all of it for a copy"): True where it is the layer alone,
#: False where a snapshot is a full copy holding its parents' files too.
USAGE_EXCLUDES_PARENTS = {
    "embedded-overlay": True,
    "embedded-flat": False,
    "containerd-overlayfs": True,
    "containerd-native": False,
}


@dataclass
class SnapshotsUnderTest:
    backend: str
    sn: Snapshotter
    applier: Applier

    @property
    def usage_excludes_parents(self) -> bool:
        return USAGE_EXCLUDES_PARENTS[self.backend]


@contextmanager
def open_snapshots(
    backend: str, root: Path, containerd: Callable[[], Containerd]
) -> Iterator[SnapshotsUnderTest]:
    """``backend`` (one of :data:`SNAPSHOT_BACKENDS`); the embedded ones under ``root``;
    ``containerd`` gives the session's private containerd (asked only for its backends)."""
    require_root("snapshot conformance: mounts, overlayfs, containerd")
    kind, name = backend.split("-", 1)
    if kind == "embedded":
        from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
        from cargohold.unpack.applier import EmbeddedApplier

        with EmbeddedSnapshotter(root, backend="overlay" if name == "overlay" else "flat") as sn:
            yield SnapshotsUnderTest(backend, sn, EmbeddedApplier())
        return
    from cargohold.store.containerd import ContainerdStore

    ctrd = containerd()
    with ContainerdStore(ctrd.address, ctrd.unique_namespace("snapconf"), name) as store:
        yield SnapshotsUnderTest(backend, store.snapshots, store.applier)
