"""The store's nouns as small interfaces, shaped after containerd's services.

Content, images, leases (this file's first half), snapshots and the applier (second half)
have one implementation each in ``store.embedded`` and in ``store.containerd``; :class:`Store`
(at the end) is a whole store of either kind with the capabilities callers may ask about.
Everything above them (fetch, unpack, bake, gc callers) talks only to these Protocols.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest

#: The lease that new content, ingests and snapshots are attached to (containerd puts it in
#: the request context; so do we). Both backends read it. Threads do not inherit context
#: variables: submit work with ``contextvars.copy_context().run``.
active_lease: ContextVar[str | None] = ContextVar("cargohold_active_lease", default=None)

# ---------------------------------------------------------------- content


@dataclass(frozen=True)
class ContentInfo:
    digest: Digest
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: Digest | None
    started_at: datetime
    updated_at: datetime


@runtime_checkable
class ContentWriter(Protocol):
    """An open ingest. Write bytes, then commit; abort or close leaves a resumable ingest."""

    @property
    def ref(self) -> str: ...

    @property
    def offset(self) -> int:
        """Bytes written so far (where a resumed download continues)."""
        ...

    def write(self, data: bytes | memoryview) -> int: ...

    def truncate(self, size: int) -> None:
        """Drop written data back to ``size`` (only 0 is required to work)."""
        ...

    def digest(self) -> Digest:
        """Digest of what was written so far."""
        ...

    def commit(
        self, size: int, expected: Digest, labels: Mapping[str, str] | None = None
    ) -> ContentInfo:
        """Verify size and digest, fsync, atomically move into the store.

        Raises DigestMismatchError (the ingest is discarded) or ConflictError
        (``AlreadyExists``: the blob was committed by someone else meanwhile; the
        ingest is discarded and the caller may treat it as success).
        """
        ...

    def close(self) -> None:
        """Release the writer without committing; the ingest stays for resume."""
        ...

    def __enter__(self) -> ContentWriter: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class ContentStore(Protocol):
    def info(self, digest: Digest) -> ContentInfo:
        """Raises NotFoundError."""
        ...

    def update(self, digest: Digest, labels: Mapping[str, str | None]) -> ContentInfo:
        """Set labels (a None value removes the label)."""
        ...

    def walk(self) -> Iterator[ContentInfo]: ...

    def delete(self, digest: Digest) -> None: ...

    def reader(self, digest: Digest) -> AbstractContextManager[BinaryIO]:
        """A readable, seekable stream over a committed blob (ReaderAt)."""
        ...

    def writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> ContentWriter:
        """Open (or resume) the ingest named ``ref``. ConflictError if it is held
        by another writer; AlreadyExists-type ConflictError if expected is stored."""
        ...

    def status(self, ref: str) -> IngestStatus:
        """Raises NotFoundError."""
        ...

    def list_statuses(self) -> builtins.list[IngestStatus]: ...

    def abort(self, ref: str) -> None: ...


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@runtime_checkable
class ImageStore(Protocol):
    def get(self, name: str) -> Image:
        """Raises NotFoundError."""
        ...

    def list(self) -> builtins.list[Image]: ...

    def create(self, image: Image) -> Image:
        """Raises ConflictError if the name exists."""
        ...

    def update(self, image: Image) -> Image:
        """Replace target and labels of an existing record; NotFoundError otherwise."""
        ...

    def delete(self, name: str) -> None: ...


# ---------------------------------------------------------------- leases


@dataclass(frozen=True)
class Lease:
    id: str
    created_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaseResource:
    """A resource protected by a lease: type is 'content', 'ingest' or 'snapshots/<name>'."""

    type: str
    id: str


@runtime_checkable
class LeaseManager(Protocol):
    def create(self, *, labels: Mapping[str, str] | None = None, lease_id: str = "") -> Lease: ...

    def delete(self, lease_id: str) -> None: ...

    def list(self) -> builtins.list[Lease]: ...

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None: ...

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None: ...

    def list_resources(self, lease_id: str) -> builtins.list[LeaseResource]: ...


# ---------------------------------------------------------------- snapshots

#: What a snapshot is: "active" (writable, from prepare), "view" (read-only, from view) or
#: "committed" (immutable, from commit; may be a parent).
SnapshotKind = str
KIND_ACTIVE = "active"
KIND_VIEW = "view"
KIND_COMMITTED = "committed"


@dataclass(frozen=True)
class Mount:
    """One mount as plain data (containerd's ``mount.Mount``): ``mount -t type -o options
    source target``. Options starting with ``x-`` are hints for userspace (``mount(8)`` and
    cargohold's mount helper never pass them to the kernel)."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotInfo:
    kind: SnapshotKind
    #: The key (active, view) or name (committed).
    name: str
    #: Name of the committed parent, "" for none.
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Disk use of a snapshot's own directory (its diff for overlay, all of it for a copy)."""

    size: int
    inodes: int


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's snapshots service (keys of active snapshots and views, names of committed
    ones share one namespace per snapshotter)."""

    @property
    def name(self) -> str:
        """The snapshotter's name, as in lease resources ``snapshots/<name>``."""
        ...

    @property
    def standalone_layers(self) -> bool:
        """Whether ``commit(..., parent=P)`` may give a snapshot prepared *without* a parent
        its parent P at commit time.  When true (overlay: a layer's directory does not depend
        on its parents), the layers of one image can be prepared without parents, applied
        concurrently and then committed in chain order; when false, prepare each layer on
        its committed parent, in order."""
        ...

    @property
    def usage_per_layer(self) -> bool:
        """Whether :meth:`usage` of a committed layer counts that layer alone (overlay-like
        snapshotters: the embedded overlay backend, containerd's overlayfs and the others,
        whose API says usage excludes the parents), not the full copy of its stack (the
        embedded ``flat`` backend, containerd's ``native``)."""
        ...

    @property
    def local_dir(self) -> Path | None:
        """The directory holding the snapshots when this process writes them there itself
        (the embedded store), for free-space checks before unpacking; None otherwise."""
        ...

    def stat(self, key: str) -> SnapshotInfo:
        """Raises NotFoundError."""
        ...

    def update(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        """Set labels (a None value removes the label)."""
        ...

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> builtins.list[Mount]:
        """Mounts of an active snapshot or a view. NotFoundError; InvalidInputError if
        committed."""
        ...

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        """A new active (writable) snapshot on the committed ``parent``. AlreadyExistsError
        if ``key`` is taken; NotFoundError / InvalidInputError for a missing or uncommitted
        parent."""
        ...

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        """A new read-only snapshot of the committed ``parent``."""
        ...

    def commit(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        """Turn the active snapshot ``key`` into the immutable committed snapshot ``name``
        (``key`` is gone afterwards).  ``parent`` None keeps the parent given to prepare; a
        different one needs ``standalone_layers`` and a snapshot prepared without a parent
        (UnsupportedError / InvalidInputError otherwise).  AlreadyExistsError if ``name`` is
        taken, InvalidInputError if ``key`` is not active."""
        ...

    def remove(self, key: str) -> None:
        """Remove a snapshot and its files.  ConflictError if it has children."""
        ...

    def walk(self) -> Iterator[SnapshotInfo]: ...


# ---------------------------------------------------------------- diff / apply


@runtime_checkable
class Applier(Protocol):
    """containerd's diff service, applying side."""

    def apply(
        self,
        desc: Descriptor,
        mounts: builtins.list[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> Descriptor:
        """Apply the layer blob ``desc`` (read from ``reader``, compressed as its media type
        and magic bytes say) onto the snapshot ``mounts`` and return the descriptor of the
        uncompressed layer (digest = diff_id, size = tar size).  DigestMismatchError when
        ``diff_id`` is given and differs; UnsafeContentError, OutOfSpaceError,
        InvalidInputError for hostile, too big or broken layers.  On error the caller removes
        the snapshot."""
        ...


# ---------------------------------------------------------------- the whole store

#: The two kinds of store (the ``store`` setting).
StoreKind = Literal["embedded", "containerd"]


class Store(Protocol):
    """A whole store: the embedded one (``store.embedded.EmbeddedStore``) or one namespace of
    a containerd (``store.containerd.ContainerdStore``).  What tells the two apart is asked
    here by name (``kind``, ``gc_in_background``, ...), never by probing attributes."""

    @property
    def kind(self) -> StoreKind: ...

    @property
    def namespace(self) -> str:
        """containerd's namespace; "" for the embedded store (it has none)."""
        ...

    @property
    def content(self) -> ContentStore: ...

    @property
    def images(self) -> ImageStore: ...

    @property
    def leases(self) -> LeaseManager: ...

    @property
    def snapshots(self) -> Snapshotter:
        """The snapshotter unpacks go to (the embedded one is opened, and its directory
        created, on first use: see :attr:`has_snapshots`)."""
        ...

    @property
    def has_snapshots(self) -> bool:
        """Whether the store may hold snapshots: always for containerd; for the embedded
        store, whether its snapshotter was ever opened (nothing was unpacked if not).  Lets a
        read-only caller leave an embedded root as it was."""
        ...

    def snapshotter_named(self, name: str) -> Snapshotter | None:
        """The snapshotter ``name`` of this store (as in lease resources
        ``snapshots/<name>``), or None when the store has none by that name: containerd has
        any of its snapshotters; the embedded store its one snapshotter, once opened."""
        ...

    @property
    def applier(self) -> Applier: ...

    @property
    def gc_in_background(self) -> bool:
        """Whether the garbage collector may run while this process works: containerd's runs
        after deletes and lease removals (what must survive needs a lease or a label); the
        embedded one runs only in ``cargohold gc``, under the exclusive root lock."""
        ...

    def collect_garbage(self) -> None:
        """containerd: run the collector now and wait for it (a deleted blob's file stays
        until it runs).  Embedded: nothing (its deletes take effect at once; its collector
        needs the exclusive root lock: ``store.embedded.gc.collect``)."""
        ...

    def raise_reserve(self, nbytes: int) -> None:
        """Keep at least ``nbytes`` free from now on where the store checks free space while
        writing: the embedded applier and snapshotter (a flat copy); containerd: nothing."""
        ...

    def filesystem_path(self) -> Path | None:
        """A directory on the file system holding the store's data: the embedded root;
        containerd's snapshotter directory (asked through containerd's introspection
        service) when this process can see it, else None."""
        ...

    def close(self) -> None: ...
