"""Unpack while fetching: a content store view that waits for blobs a running fetch brings.

``pull`` starts unpacking an image as soon as the fetch has resolved it, through
:class:`WaitingContent`: reading a blob (``info`` / ``reader``) that is not in the store yet
blocks until the fetch reports that blob finished (or the fetch ends), instead of failing.
A layer is then applied while the next one downloads, as containerd's own pull does.
:class:`FetchBoard` is the fetch's event sink that wakes the waiters (and forwards every
event to the progress display); a waiter proceeds once the fetch has *reported* the blob
committed (its size, digest and metadata row all written), never on the file alone.

Nothing is trusted early: the fetch commits a blob only after checking its size and digest,
and a waiter only reads what is committed. When the fetch ends, every waiter gets the
store's answer as it is then (NotFoundError for a blob the fetch did not bring).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, BinaryIO

from cargohold.errors import CargoholdError, Interrupted, NotFoundError
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.reference import Reference
from cargohold.pull.fetch import FetchEvents, ForwardingEvents
from cargohold.store.interfaces import ContentInfo, ContentStore, ContentWriter, IngestStatus

#: The reference whose image the current thread unpacks (set by the caller; unpack worker
#: threads inherit it): a wait for a blob of an image whose fetch failed ends at once.
current_ref: ContextVar[str | None] = ContextVar("cargohold_current_ref", default=None)


class FetchBoard(ForwardingEvents):
    """Fetch events forwarded to ``inner``; also what has been resolved and finished, for
    the threads waiting on it."""

    def __init__(self, inner: FetchEvents | None = None) -> None:
        super().__init__(inner)
        self._cond = threading.Condition()
        self._resolved: dict[str, Descriptor] = {}
        self._finished = False
        self._present: set[str] = set()  # digests the fetch committed or found committed
        self._failed: set[str] = set()  # refs whose fetch failed

    # -------------------------------------------------------------- the fetch's side

    def resolved(self, ref: Reference, desc: Descriptor) -> None:
        self.inner.resolved(ref, desc)
        with self._cond:
            self._resolved[str(ref)] = desc
            self._cond.notify_all()

    def blob_done(self, desc: Descriptor, state: str, transferred: int) -> None:
        self.inner.blob_done(desc, state, transferred)
        if state in ("done", "exists"):  # reported once the commit is complete
            with self._cond:
                self._present.add(str(desc.digest))
                self._cond.notify_all()

    def image_failed(self, ref: Reference, error: CargoholdError) -> None:
        self.inner.image_failed(ref, error)
        with self._cond:
            self._failed.add(str(ref))
            self._cond.notify_all()

    def finish(self) -> None:
        """The fetch is over (done, failed or interrupted): nothing more will arrive."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    # -------------------------------------------------------------- the waiters' side

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._finished

    def wait_resolved(self, ref: Reference, cancel: threading.Event | None = None) -> Descriptor:
        """The descriptor ``ref`` resolved to; NotFoundError if the fetch ended without
        resolving it (its failure is the fetch's to report)."""
        with self._cond:
            while True:
                desc = self._resolved.get(str(ref))
                if desc is not None:
                    return desc
                if self._finished or str(ref) in self._failed:
                    raise NotFoundError(f"{ref} was not resolved")
                _check(cancel)
                self._cond.wait(0.2)

    def wait_blob(self, digest: Digest, cancel: threading.Event | None = None) -> None:
        """Until the fetch has reported ``digest`` committed (or found it committed), or has
        ended. Waiting for the report, not for the file, matters: a blob becomes readable
        before its commit has finished recording it."""
        ref = current_ref.get()
        with self._cond:
            while str(digest) not in self._present and not self._finished:
                if ref is not None and ref in self._failed:
                    return  # that image's fetch failed: nothing more comes for it
                _check(cancel)
                self._cond.wait(0.2)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Interrupted("interrupted while waiting for the fetch")


class WaitingContent:
    """``content`` where ``info`` and ``reader`` of a blob not there yet wait for ``board``'s
    fetch (see the module docstring); everything else goes straight through."""

    def __init__(self, content: ContentStore, board: FetchBoard,
                 cancel: threading.Event | None = None) -> None:
        self._content = content
        self._board = board
        self._cancel = cancel

    def info(self, digest: Digest) -> ContentInfo:
        self._board.wait_blob(digest, self._cancel)
        return self._content.info(digest)

    def reader(self, digest: Digest) -> AbstractContextManager[BinaryIO]:
        self._board.wait_blob(digest, self._cancel)
        return self._content.reader(digest)

    def update(self, digest: Digest, labels: Mapping[str, str | None]) -> ContentInfo:
        return self._content.update(digest, labels)

    def walk(self) -> Iterator[ContentInfo]:
        return self._content.walk()

    def delete(self, digest: Digest) -> None:
        self._content.delete(digest)

    def writer(self, ref: str, *, total: int = 0, expected: Digest | None = None) -> ContentWriter:
        return self._content.writer(ref, total=total, expected=expected)

    def status(self, ref: str) -> IngestStatus:
        return self._content.status(ref)

    def list_statuses(self) -> list[IngestStatus]:
        return self._content.list_statuses()

    def abort(self, ref: str) -> None:
        self._content.abort(ref)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._content, name)
