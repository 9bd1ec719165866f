"""Pull: fetch images and unpack them, overlapped as containerd's own pull does.

The fetch runs in a thread of its own (:class:`~cargohold.pull.fetch.Fetcher`); each image
is unpacked as soon as the fetch has resolved it, and each of its layers as soon as its blob
is in, through :class:`~cargohold.pull.blobwait.WaitingContent` (a content view that waits
for the fetch's commit reports on a :class:`~cargohold.pull.blobwait.FetchBoard`). Up to
``jobs`` images unpack at once, under one lease (:func:`unpack_lease`).

Stopping: a KeyboardInterrupt in the calling thread (Ctrl-C / SIGTERM in the CLI, see
:mod:`cargohold.interrupts`; every wait here polls) or :meth:`PullPipeline.abort` from any
thread stops the fetch (downloads in flight end at once) and the unpacks (each removes its
half-applied snapshot). The call returns only once every thread it started has ended, so
the store may be closed right after; then it raises the interrupt
(:class:`~cargohold.errors.Interrupted` for an abort).

No click and no output here: progress goes to the fetch and unpack event sinks given, and
the outcome comes back as a :class:`PullResult`.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cargohold.errors import CargoholdError, Interrupted
from cargohold.interrupts import held, shutdown, wait_future, wait_until
from cargohold.leasing import leased
from cargohold.oci.descriptor import Platform
from cargohold.oci.reference import Reference
from cargohold.pull.blobwait import FetchBoard, WaitingContent, current_ref
from cargohold.pull.fetch import (
    Fetcher,
    FetchEvents,
    FetchFailure,
    FetchResult,
    RecordPolicy,
    Registry,
)
from cargohold.settings import Settings
from cargohold.store.interfaces import Applier, ContentStore, Snapshotter, Store
from cargohold.store.open import reserve_bytes
from cargohold.unpack.image import Unpacker, UnpackEvents, UnpackResult

__all__ = [
    "PullPipeline",
    "PullResult",
    "PullStore",
    "PulledImage",
    "UnpackStore",
    "pull_images",
    "store_unpacker",
    "unpack_lease",
]


class UnpackStore(Protocol):
    """What an unpack needs of a store (LocalStore and ContainerdStore both have it)."""

    @property
    def content(self) -> ContentStore: ...

    @property
    def snapshots(self) -> Snapshotter: ...

    @property
    def applier(self) -> Applier: ...


#: What a pull needs of a store: all of it (content, images, leases, snapshots, applier).
PullStore = Store


@contextmanager
def unpack_lease(store: Store) -> Iterator[None]:
    """Unpack under a lease, as containerd's unpacker does: a garbage collector cannot take
    snapshots half-way, and the ``extract-*`` snapshots of a killed unpack are found (its
    lease's owner is dead) and removed by the next command. The lease goes afterwards: the
    config label keeps the committed snapshots."""
    with leased(store, "unpack"):
        yield


def store_unpacker(store: UnpackStore, settings: Settings, *, jobs: int | None = None,
                   events: UnpackEvents | None = None) -> Unpacker:
    """An :class:`Unpacker` into ``store`` with the settings' jobs and reserve."""
    return Unpacker(
        store.content,
        store.snapshots,
        store.applier,
        jobs=jobs or settings.jobs,
        reserve_bytes=reserve_bytes(settings),
        events=events,
    )


@dataclass
class PulledImage:
    """An image fetched and unpacked (once per platform unpacked)."""

    fetch: FetchResult
    unpacks: list[UnpackResult]

    @property
    def name(self) -> str:
        return self.fetch.name

    def to_json(self) -> dict[str, Any]:
        return {**self.fetch.to_json(), "unpack": [u.to_json() for u in self.unpacks]}


@dataclass
class PullResult:
    #: The images fetched and unpacked, in the order given.
    images: list[PulledImage]
    #: Every image fetched, also those whose unpack failed.
    fetched: list[FetchResult]
    #: The images that failed: for their fetch's error if it failed, else their unpack's.
    failures: list[FetchFailure]
    #: How many images were asked for.
    total: int
    seconds: float

    @property
    def bytes_transferred(self) -> int:
        return sum(r.bytes_transferred for r in self.fetched)


class _FetchThread:
    """``fetcher.fetch_all`` in a thread of its own; the board learns when it is over."""

    def __init__(self, fetcher: Fetcher, board: FetchBoard, refs: Sequence[Reference],
                 platforms: Sequence[Platform]) -> None:
        self.results: list[FetchResult | FetchFailure] = []
        self._crash: list[BaseException] = []
        self._fetcher = fetcher
        self._board = board
        self._refs = refs
        self._platforms = platforms
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._run,), name="pull-fetch", daemon=True)

    def _run(self) -> None:
        try:
            self.results.extend(self._fetcher.fetch_all(self._refs, platforms=self._platforms))
        except BaseException as e:  # re-raised in the caller's thread after the join
            self._crash.append(e)
        finally:
            self._board.finish()

    def start(self) -> None:
        with held():  # Thread.start waits for the thread: not interruptible
            self._thread.start()

    def ended(self) -> bool:
        return not self._thread.is_alive()

    def reraise(self) -> None:
        if self._crash:
            raise self._crash[0]


Unpacked = dict[str, list[UnpackResult]]
UnpackErrors = dict[str, CargoholdError]


class PullPipeline:
    """Fetch images and unpack them, overlapped (see the module docstring). One
    :meth:`run` per instance; :meth:`abort` may be called from any thread."""

    def __init__(
        self,
        store: PullStore,
        registry: Registry,
        *,
        jobs: int = 4,
        reserve_bytes: int = 0,
        records: RecordPolicy | None = None,
        fetch_events: FetchEvents | None = None,
        unpack_events: UnpackEvents | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.jobs = max(1, jobs)
        self.reserve_bytes = reserve_bytes
        self.records = records
        self.fetch_events = fetch_events
        self.unpack_events = unpack_events
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._fetcher: Fetcher | None = None
        self._aborted = False

    def abort(self) -> None:
        """Stop the pull (from any thread): :meth:`run` cleans up, then raises Interrupted."""
        with self._lock:
            self._aborted = True
            fetcher = self._fetcher
        self._cancel.set()
        if fetcher is not None:
            fetcher.abort()

    @property
    def aborted(self) -> bool:
        with self._lock:
            return self._aborted

    def run(self, refs: Sequence[Reference], *, platforms: Sequence[Platform],
            unpack_platforms: Sequence[Platform | None] = (None,)) -> PullResult:
        """Fetch ``refs`` (``platforms`` of an index) and unpack each for every one of
        ``unpack_platforms`` (None: the host's for an index, a single manifest's own)."""
        start = time.monotonic()
        board = FetchBoard(self.fetch_events)
        fetcher = Fetcher(self.store, self.registry, jobs=self.jobs, events=board,
                          records=self.records, cancel=self._cancel)
        with self._lock:
            self._fetcher = fetcher
        if self.aborted:
            fetcher.abort()
        fetch = _FetchThread(fetcher, board, refs, platforms)
        try:
            unpacked, errors = self._overlapped(fetch, fetcher, board, refs, unpack_platforms)
        finally:
            fetcher.close()
        fetch.reraise()
        if self.aborted:
            raise Interrupted("pull interrupted")
        return _outcome(fetch.results, unpacked, errors, len(refs), time.monotonic() - start)

    def _overlapped(self, fetch: _FetchThread, fetcher: Fetcher, board: FetchBoard,
                    refs: Sequence[Reference], unpack_platforms: Sequence[Platform | None]
                    ) -> tuple[Unpacked, UnpackErrors]:
        """Start the fetch, unpack as it goes, wait for both. No thread outlives this call."""
        try:
            fetch.start()
            content = WaitingContent(self.store.content, board, self._cancel)
            with (
                Unpacker(content, self.store.snapshots, self.store.applier, jobs=self.jobs,
                         reserve_bytes=self.reserve_bytes, events=self.unpack_events,
                         cancel=self._cancel, check_blobs=False) as unpacker,
                unpack_lease(self.store),
            ):
                done = self._unpack_all(unpacker, fetcher, board, refs, unpack_platforms)
                wait_until(fetch.ended, fetcher.abort)
                return done
        except BaseException:
            fetcher.abort()  # the fetch and the unpacks stop and clean up
            wait_until(fetch.ended, fetcher.abort)
            raise

    def _unpack_all(self, unpacker: Unpacker, fetcher: Fetcher, board: FetchBoard,
                    refs: Sequence[Reference], unpack_platforms: Sequence[Platform | None]
                    ) -> tuple[Unpacked, UnpackErrors]:
        """Each image unpacked in a pool worker once the fetch has resolved it."""

        def one(ref: Reference) -> list[UnpackResult]:
            current_ref.set(str(ref))  # this worker's own context (copied at submit)
            target = board.wait_resolved(ref, self._cancel)
            return [unpacker.unpack(target, p) for p in unpack_platforms]

        unpacked: Unpacked = {}
        errors: UnpackErrors = {}
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(refs), self.jobs)),
                                  thread_name_prefix="pull")
        try:
            futs = []
            for ref in refs:
                with held():
                    futs.append((ref, pool.submit(contextvars.copy_context().run, one, ref)))
            for ref, fut in futs:
                try:
                    unpacked[str(ref)] = wait_future(fut)
                except CargoholdError as e:
                    errors[str(ref)] = e
        except BaseException:
            fetcher.abort()  # now, before the pool waits for its workers
            raise
        finally:
            shutdown(pool, fetcher.abort)
        return unpacked, errors


def _outcome(fetched: list[FetchResult | FetchFailure], unpacked: Unpacked,
             errors: UnpackErrors, total: int, seconds: float) -> PullResult:
    ok = [r for r in fetched if isinstance(r, FetchResult)]
    failures = [r for r in fetched if isinstance(r, FetchFailure)]
    fetch_failed = {str(f.ref) for f in failures}
    # An image whose fetch failed fails for that reason; the others for their unpack's.
    failures += [FetchFailure(name, e) for name, e in errors.items() if name not in fetch_failed]
    images = [PulledImage(r, unpacked[str(r.ref)]) for r in ok if str(r.ref) in unpacked]
    return PullResult(images=images, fetched=ok, failures=failures, total=total,
                      seconds=seconds)


def pull_images(
    store: PullStore,
    registry: Registry,
    refs: Sequence[Reference],
    *,
    platforms: Sequence[Platform],
    unpack_platforms: Sequence[Platform | None] = (None,),
    jobs: int = 4,
    reserve_bytes: int = 0,
    records: RecordPolicy | None = None,
    fetch_events: FetchEvents | None = None,
    unpack_events: UnpackEvents | None = None,
) -> PullResult:
    """Fetch and unpack ``refs`` into ``store`` (see :class:`PullPipeline`)."""
    return PullPipeline(
        store, registry, jobs=jobs, reserve_bytes=reserve_bytes, records=records,
        fetch_events=fetch_events, unpack_events=unpack_events,
    ).run(refs, platforms=platforms, unpack_platforms=unpack_platforms)
