"""Writing a blob into containerd's ingest file directly, verified by containerd on commit.

When containerd's content root is on this machine (see
:meth:`~cargohold.store.containerd.content.ContainerdContentStore.local_root`), the bytes of
a large blob need not travel through the gRPC ``Write`` stream: containerd 1.6 spends about
three times the CPU receiving them (HTTP/2 frames, protobuf, one write per message) that it
spends hashing a file. :class:`DirectContentWriter` does what containerd's own local writer
does with the bytes, and leaves every decision to containerd:

1. a ``Write`` stream with a STAT opens (or resumes) the ingest: containerd creates
   ``<root>/ingest/<sha256(ref key)>/{ref,data,...}`` and takes its lock on the ref, which
   this writer **keeps** while it writes, so no other client of containerd (another
   cargohold) writes the same ingest meanwhile; the ``ref`` file must name this ingest
   (``<namespace>/1/<ref>``, containerd's metadata key) and ``data`` must have the size
   containerd reported, else the stream is used as it is (:func:`open_direct` returns None);
2. the bytes are appended to ``data`` from containerd's offset, then ``fsync``-ed;
3. commit ends that stream (containerd releases the lock), opens a new one whose STAT
   resumes the ingest -- containerd re-reads ``data`` and hashes it itself -- and sends a
   COMMIT with the total, the expected digest and the labels: containerd checks size and
   digest against its own hash and refuses a mismatch (the ingest is then aborted).

An interrupted write leaves a prefix of the blob in ``data``: a later writer resumes from
its length (containerd re-hashes it), and bytes that are not a prefix of the blob fail the
digest check at commit. Nothing is ever committed that containerd has not hashed.
``CARGOHOLD_CONTAINERD_DIRECT=0`` keeps every byte on the gRPC stream.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

from cargohold.errors import CargoholdError, ConflictError, IngestLockedError, UnsupportedError
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import ContentInfo

if TYPE_CHECKING:
    from cargohold.store.containerd.content import (
        ContainerdContentStore,
        ContainerdContentWriter,
    )

#: Blobs smaller than this go through the Write stream (the direct path costs a second
#: stream and an fsync of its own; it pays from a few MiB on).
DIRECT_WRITE_MIN = 4 << 20
#: Longest pause while another writer holds the ingest between our two streams.
_LOCKED_RETRY_MAX = 0.5
#: How long commit waits for such a writer before giving up.
_LOCKED_WAIT = 120.0


def ingest_key(namespace: str, ref: str) -> str:
    """The key containerd's metadata store gives the ingest of ``ref`` in ``namespace``
    (``createKey(bucket sequence, namespace, ref)``; an ingest bucket is new when the
    ingest is, so its sequence is 1)."""
    return f"{namespace}/1/{ref}"


def ingest_dir(root: Path, namespace: str, ref: str) -> Path:
    """``<content root>/ingest/<sha256 of the key>`` (containerd's ``ingestRoot``)."""
    key = ingest_key(namespace, ref).encode()
    return root / "ingest" / hashlib.sha256(key).hexdigest()


def open_direct(store: ContainerdContentStore, holder: ContainerdContentWriter,
                total: int) -> DirectContentWriter | None:
    """A direct writer over the ingest ``holder`` opened (its stream keeps the lock), or
    None when the ingest's files cannot be used from here (``holder`` is then used as it
    is). Only for a blob of known size of at least :data:`DIRECT_WRITE_MIN` bytes."""
    if total < DIRECT_WRITE_MIN or holder.offset > total:
        return None
    root = store.local_root()
    if root is None:
        return None
    path = ingest_dir(root, store.client.namespace, holder.ref)
    try:
        if (path / "ref").read_text() != ingest_key(store.client.namespace, holder.ref):
            return None  # not containerd's file for this ingest (another key scheme)
        fd = os.open(path / "data", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != holder.offset:
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return DirectContentWriter(store, holder, fd, path)


class ClosingWriter:
    """``with`` for a content writer: ``close`` on the way out. Leaving on an exception, a
    ``close`` that fails as well calls ``_close_failed`` (which lets go of the ingest) and
    the first exception goes on."""

    def close(self) -> None:
        raise NotImplementedError

    def _close_failed(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            try:
                self.close()
            except Exception:
                self._close_failed()
        else:
            self.close()


class DirectContentWriter(ClosingWriter):
    """A ContentWriter whose bytes go straight into containerd's ingest file (see the
    module docstring). Not thread-safe; ``close`` leaves the ingest for a resume by ref."""

    def __init__(self, store: ContainerdContentStore, holder: ContainerdContentWriter,
                 fd: int, path: Path) -> None:
        self._store = store
        self._holder: ContainerdContentWriter | None = holder
        self._fd = fd
        self._ref = holder.ref
        self._what = f"content writer {holder.ref}"
        self._offset = holder.offset
        self.total = holder.total
        self.started_at: datetime = holder.started_at
        #: The ingest directory (``data`` is written).
        self.path = path

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    def _usable(self) -> int:
        if self._fd < 0:
            raise ConflictError(f"{self._what} is closed")
        return self._fd

    def write(self, data: bytes | memoryview) -> int:
        fd = self._usable()
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        n = len(mv)
        at = self._offset
        while mv:
            k = os.pwrite(fd, mv, at)
            at += k
            self._offset = at
            mv = mv[k:]
        return n

    def flush(self) -> None:
        self._usable()

    def truncate(self, size: int) -> None:
        """Only 0 (start over) or the current offset, as over the Write stream."""
        fd = self._usable()
        if size == self._offset:
            return
        if size != 0:
            raise UnsupportedError(f"{self._what}: containerd ingests truncate only to 0")
        os.ftruncate(fd, 0)
        self._offset = 0

    def _release(self) -> None:
        """fsync and close the file, end our stream (containerd releases the ref)."""
        fd, self._fd = self._fd, -1
        holder, self._holder = self._holder, None
        try:
            if fd >= 0:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            if holder is not None:
                try:
                    holder.close()
                except CargoholdError:
                    holder.abandon()
                    raise

    def _reopen(self) -> ContainerdContentWriter:
        """A new stream on the ingest: containerd re-hashes ``data`` (a resume). Waits while
        another writer took the ref between our streams."""
        from cargohold.store.containerd.content import ContainerdContentWriter

        pause, waited = 0.01, 0.0
        while True:
            try:
                return ContainerdContentWriter(self._store, self._ref, total=self.total)
            except IngestLockedError:
                if waited >= _LOCKED_WAIT:
                    raise
                time.sleep(pause)
                waited += pause
                pause = min(pause * 2, _LOCKED_RETRY_MAX)

    def digest(self) -> Digest:
        """containerd's digest of the bytes in the ingest (it re-hashes the file)."""
        self._usable()
        self._release()
        holder = self._holder = self._reopen()
        self._fd = os.open(self.path / "data", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._offset = holder.offset
        return holder.ingest_digest()

    def commit(
        self, size: int, expected: Digest, labels: Mapping[str, str] | None = None
    ) -> ContentInfo:
        """fsync, then let containerd re-hash the ingest and commit it against ``expected``
        (DigestMismatchError, the ingest aborted, when the bytes are not that blob)."""
        self._usable()
        # A stream containerd lost (it restarted) fails here as over the Write stream: the
        # lock that kept other writers off the file is gone; a rerun resumes the ingest.
        self._release()
        with self._reopen() as w:  # containerd checks size and its own hash of the file
            return w.commit(size, expected, labels)

    def close(self) -> None:
        """fsync and release the ingest; it stays for a resume by ref."""
        if self._fd < 0 and self._holder is None:
            return
        self._release()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)
        # The holder's own __del__ cancels its stream (containerd releases the ref).

    def _close_failed(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.abandon()


__all__ = [
    "DIRECT_WRITE_MIN",
    "ClosingWriter",
    "DirectContentWriter",
    "ingest_dir",
    "ingest_key",
    "open_direct",
]
