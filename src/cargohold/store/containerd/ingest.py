"""Writing a blob into containerd's content store through its files, recorded by containerd.

When containerd's content root is on this machine (see
:meth:`~cargohold.store.containerd.content.ContainerdContentStore.local_root`), the bytes of
a large blob need not travel through the gRPC ``Write`` stream: containerd 1.6 spends about
three times the CPU receiving them (HTTP/2 frames, protobuf, one write per message) that it
spends hashing a file, and hashing a file is itself slower there (Go's SHA-256 in Debian's
containerd, ~0.5 GB/s) than Python's (~1.8 GB/s). :class:`DirectContentWriter` does what
containerd's own local writer does with the bytes:

1. a ``Write`` stream with a STAT opens (or resumes) the ingest: containerd creates
   ``<root>/ingest/<sha256(ref key)>/{ref,data,...}`` and takes its lock on the ref, which
   this writer **keeps** while it writes, so no other client of containerd (another
   cargohold) writes the same ingest meanwhile; the ``ref`` file must name this ingest
   (``<namespace>/1/<ref>``, containerd's metadata key) and ``data`` must have the size
   containerd reported, else the stream is used as it is (:func:`open_direct` returns None);
2. the bytes are appended to ``data`` from containerd's offset and hashed as they are
   written (a resumed ingest's prefix is hashed from the file first, as containerd does);
3. commit, when that hash and the size are the expected ones: ``fsync``, a hard link of
   ``data`` at containerd's blob path (``<root>/blobs/<alg>/<hex>``, then ``fsync`` of that
   directory), the stream ended, and a COMMIT over a new stream whose STAT names the
   expected digest: containerd finds the blob in its store and records it in the namespace
   with the labels without reading it again -- its path for content another namespace
   already has ("shared" content, containerd's default policy). The blob is then made
   read-only and the ingest directory, which containerd's commit dropped from its metadata,
   removed. If containerd resumes the ingest instead (an "isolated" policy, or its GC took
   the linked file before the commit), it re-hashes ``data`` and commits it itself; if its
   GC takes the file right after the commit, the ingest's link puts it back.
   When the bytes are **not** the expected ones, the commit is containerd's: it re-hashes
   ``data``, refuses the mismatch and aborts the ingest.

An interrupted write leaves a prefix of the blob in ``data``: a later writer resumes from
its length, and bytes that are not a prefix of the blob fail the digest check at commit.
Nothing is linked into the store that has not been hashed and found to be the expected blob.
``CARGOHOLD_CONTAINERD_DIRECT=0`` keeps every byte on the gRPC stream.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

from cargohold.atomicfile import fsync_dir
from cargohold.errors import CargoholdError, ConflictError, IngestLockedError, UnsupportedError
from cargohold.filehash import hash_fd
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
                total: int, expected: Digest) -> DirectContentWriter | None:
    """A direct writer over the ingest ``holder`` opened (its stream keeps the lock), or
    None when the ingest's files cannot be used from here (``holder`` is then used as it
    is). Only for a blob of known size and digest of at least :data:`DIRECT_WRITE_MIN`
    bytes. A resumed ingest's bytes are hashed here (as containerd does on a resume)."""
    if total < DIRECT_WRITE_MIN or holder.offset >= total:
        return None  # small, or nothing left to write: containerd has it or hashes it once
    root = store.local_root()
    if root is None:
        return None
    path = ingest_dir(root, store.client.namespace, holder.ref)
    try:
        if (path / "ref").read_text() != ingest_key(store.client.namespace, holder.ref):
            return None  # not containerd's file for this ingest (another key scheme)
        fd = os.open(path / "data", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != holder.offset:
            os.close(fd)
            return None
        hasher = hash_fd(fd, expected.algorithm, holder.offset)
    except OSError:
        os.close(fd)
        return None
    return DirectContentWriter(store, holder, fd, path, expected, hasher)


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
                 fd: int, path: Path, expected: Digest, hasher: hashlib._Hash) -> None:
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
        self._expected = expected
        #: The hash of ``data``'s bytes 0..offset.
        self._hasher = hasher

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
        self._hasher.update(mv)
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
        self._hasher = hashlib.new(self._expected.algorithm)

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
        """A new stream on the ingest, naming the expected digest: containerd records a blob
        it has in its store without reading it, else it resumes the ingest (re-hashing
        ``data``). Waits while another writer took the ref between our streams."""
        from cargohold.store.containerd.content import ContainerdContentWriter

        pause, waited = 0.01, 0.0
        while True:
            try:
                return ContainerdContentWriter(self._store, self._ref, total=self.total,
                                               expected=self._expected)  # fmt: skip
            except IngestLockedError:
                if waited >= _LOCKED_WAIT:
                    raise
                time.sleep(pause)
                waited += pause
                pause = min(pause * 2, _LOCKED_RETRY_MAX)

    def digest(self) -> Digest:
        """The digest of the bytes written so far (from 0, a resumed prefix included)."""
        self._usable()
        return Digest(self._expected.algorithm, self._hasher.hexdigest())

    def commit(
        self, size: int, expected: Digest, labels: Mapping[str, str] | None = None
    ) -> ContentInfo:
        """Link the blob into containerd's store and have containerd record it, when the
        bytes hash to ``expected`` (see the module docstring); else containerd re-hashes the
        ingest and refuses it (DigestMismatchError, the ingest aborted)."""
        self._usable()
        ours = size == self._offset and expected == self._expected and self.digest() == expected
        linked = self._link_blob(expected) if ours else None
        # A stream containerd lost (it restarted) fails here as over the Write stream: the
        # lock that kept other writers off the file is gone; a rerun resumes the ingest.
        self._release()
        with self._reopen() as w:  # records the linked blob, or re-hashes and checks data
            info = w.commit(size, expected, labels)
        self._settle(linked)
        return info

    def _link_blob(self, expected: Digest) -> Path | None:
        """fsync ``data`` and hard-link it at containerd's path for ``expected``; the path,
        or None when a file is there already (containerd has the blob: it records that)."""
        root = self.path.parent.parent
        target = root / "blobs" / expected.algorithm / expected.hex
        os.fsync(self._fd)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            os.link(self.path / "data", target)
        except FileExistsError:
            return None
        fsync_dir(target.parent)
        return target

    def _settle(self, target: Path | None) -> None:
        """After containerd recorded the blob: a blob we linked read-only as containerd makes
        its blobs, and back in place if containerd's GC took it meanwhile; the ingest
        directory removed if it is still there (the commit dropped it from containerd's
        metadata, so nothing else will)."""
        data = self.path / "data"
        if target is not None:
            with suppress(FileExistsError, FileNotFoundError):
                if not target.exists():
                    os.link(data, target)
                    fsync_dir(target.parent)
            with suppress(OSError):
                st = os.stat(target)
                os.chmod(target, st.st_mode & 0o777 & ~0o333)
                now = time.time()
                os.utime(target, (now, now))
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

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
