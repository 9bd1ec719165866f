"""The ``store`` fixture of the conformance suite: one run per backend.

Tests in this package talk to a store only through the Protocols of
``cargohold.store.interfaces`` (plus an optional ``gc`` hook), so the same tests run against
every backend: the embedded store and a real containerd (started by the session fixture in
``tests/rig/containerd.py``, one fresh namespace per test). Tests use unique names and random
content, so a shared backend is fine.

The ``snap`` fixture does the same for the ``Snapshotter`` and ``Applier`` Protocols over four
backends: the embedded store's overlay and flat snapshotters, containerd's overlayfs and
native snapshotters (tests/conformance/backends.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.store.interfaces import ContentStore, ImageStore, LeaseManager
from tests.conformance.backends import SNAPSHOT_BACKENDS, SnapshotsUnderTest, open_snapshots


@dataclass
class StoreUnderTest:
    backend: str
    content: ContentStore
    images: ImageStore
    leases: LeaseManager
    #: Run a full, synchronous garbage collection; None if the backend cannot be asked to.
    gc: Callable[[], None] | None = None


def _embedded(tmp_path: Path) -> Iterator[StoreUnderTest]:
    from cargohold.store.embedded import EmbeddedStore
    from cargohold.store.embedded.gc import collect

    with EmbeddedStore(tmp_path / "embedded-store") as s:

        def gc() -> None:
            collect(s)

        yield StoreUnderTest("embedded", s.content, s.images, s.leases, gc)


def _containerd(request: pytest.FixtureRequest) -> Iterator[StoreUnderTest]:
    from datetime import timedelta

    from cargohold.store.containerd import ContainerdStore

    ctrd = request.getfixturevalue("containerd")
    with ContainerdStore(ctrd.address, ctrd.unique_namespace("conf")) as s:

        def gc() -> None:
            # containerd collects when a lease is deleted synchronously.
            lease = s.leases.create(expire=timedelta(hours=1))
            s.leases.delete(lease.id, sync=True)

        yield StoreUnderTest("containerd", s.content, s.images, s.leases, gc)


BACKENDS = ("containerd", "embedded")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    if request.param == "embedded":
        yield from _embedded(tmp_path)
    else:
        yield from _containerd(request)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A name no other test (or earlier run on a shared backend) uses."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(params=SNAPSHOT_BACKENDS)
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotsUnderTest]:
    """One snapshotter backend and its applier (tests/conformance/backends.py)."""
    with open_snapshots(request.param, tmp_path / "snapshots",
                        lambda: request.getfixturevalue("containerd")) as s:
        yield s
