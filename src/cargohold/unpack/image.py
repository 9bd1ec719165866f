"""Unpack an image into committed layer snapshots (containerd's unpacker).

:class:`Unpacker` takes an image target (index or manifest) that is in the content store,
chooses the manifest for the wanted platform, reads the config, computes the chain IDs (all
three in :mod:`.resolve`) and makes sure a committed snapshot named by each chain ID exists,
bottom first:

* chains already committed are skipped (found by ``stat`` of the chain ID name);
* with ``snapshotter.standalone_layers`` (overlay) every missing layer is prepared *without*
  a parent and applied concurrently (at most ``jobs`` at once), then committed in chain
  order, each given its parent at commit;
* otherwise (flat copies, containerd) each layer is prepared on its committed parent and
  applied in order;
* a chain wanted by two images unpacked at the same time by one Unpacker is unpacked once
  (:class:`~cargohold.singleflight.SingleFlight` keyed by chain ID); another process
  committing the same chain first is fine too (its snapshot is used, ours removed).

Only when the top chain is committed is the image unpacked; then the labels containerd's
unpacker writes are set: ``containerd.io/uncompressed=<diff_id>`` on every layer blob and
``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>`` on the config blob, so gc
keeps the snapshots of every image a record references.

Failures remove the snapshots the failing call prepared; chains committed before the failure
stay (a rerun reuses them).  A failed call returns only once none of its layer tasks runs
any more (also when Ctrl-C / SIGTERM lands in the middle of submitting them), and
:meth:`Unpacker.close` waits for every running call, so the store is never closed under a
worker.  A cleanup that fails is reported (:meth:`UnpackEvents.cleanup_failed`), never
dropped.  A process killed mid-unpack leaves active ``extract-*``
snapshots: callers unpack under a lease (:func:`cargohold.leasing.leased`), so the next
command or gc finds them through the dead owner's lease and removes them.  After the unpack
the config label protects the committed snapshots.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    Interrupted,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
)
from cargohold.interrupts import call_held, held, shutdown, wait_future, wait_until
from cargohold.labels import (
    LABEL_SNAPSHOT_REF,
    LABEL_UNCOMPRESSED,
    snapshot_gc_label,
)
from cargohold.leasing import EXTRACT_PREFIX
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.singleflight import SingleFlight
from cargohold.store.interfaces import (
    Applier,
    ContentStore,
    Mount,
    Snapshotter,
)
from cargohold.unpack.damaged import stored_blob_check
from cargohold.unpack.layerwriter import ApplyStats
from cargohold.unpack.resolve import ResolvedImage, highest_committed, is_committed, resolve_image

#: Layer outcomes: applied here, already committed, applied by a concurrent call for another
#: image (or committed by another process meanwhile).
STATE_UNPACKED = "unpacked"
STATE_EXISTS = "exists"
STATE_SHARED = "shared"
STATE_FAILED = "failed"

_log = logging.getLogger(__name__)


@runtime_checkable
class StatsApplier(Protocol):
    """An applier that also says what it did (cargohold's own appliers; containerd's diff
    service does not): its stats go into each layer's outcome."""

    def apply_with_stats(self, desc: Descriptor, mounts: Sequence[Mount], *, reader: BinaryIO,
                         diff_id: Digest | None = None) -> tuple[Descriptor, ApplyStats]: ...



# ---------------------------------------------------------------- results and events


@dataclass
class LayerOutcome:
    index: int
    chain_id: str
    layer: Descriptor
    diff_id: Digest
    state: str
    seconds: float = 0.0
    stats: ApplyStats | None = None
    uncompressed: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "chain_id": self.chain_id,
            "digest": str(self.layer.digest),
            "media_type": self.layer.media_type,
            "size": self.layer.size,
            "diff_id": str(self.diff_id),
            "state": self.state,
            "seconds": round(self.seconds, 3),
        }
        if self.state == STATE_UNPACKED:
            out["uncompressed"] = self.uncompressed
        return out


#: ApplyStats fields summed into UnpackResult.phases.
_PHASES = ("seconds_read", "seconds_decompress", "seconds_hash", "seconds_write", "seconds_sync")


@dataclass
class UnpackResult:
    target: Descriptor
    manifest: Descriptor
    config: Descriptor
    platform: str
    snapshotter: str
    chain_id: str
    layers: list[LayerOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chains_total(self) -> int:
        return len(self.layers)

    def _count(self, state: str) -> int:
        return sum(1 for lo in self.layers if lo.state == state)

    @property
    def chains_unpacked(self) -> int:
        """Chains this call applied."""
        return self._count(STATE_UNPACKED)

    @property
    def chains_skipped(self) -> int:
        """Chains already committed when the call started."""
        return self._count(STATE_EXISTS)

    @property
    def chains_shared(self) -> int:
        """Chains another concurrent unpack committed while this one wanted them."""
        return self._count(STATE_SHARED)

    @property
    def already_unpacked(self) -> bool:
        return self.chains_unpacked == 0 and self.chains_shared == 0

    @property
    def bytes_compressed(self) -> int:
        """Compressed bytes of the layers applied by this call."""
        return sum(lo.layer.size for lo in self.layers if lo.state == STATE_UNPACKED)

    @property
    def bytes_uncompressed(self) -> int:
        """Tar bytes of the layers applied by this call."""
        return sum(lo.uncompressed for lo in self.layers if lo.state == STATE_UNPACKED)

    @property
    def phases(self) -> dict[str, float]:
        """Summed per-layer apply phases (seconds; overlapping across concurrent layers)."""
        out = dict.fromkeys(_PHASES, 0.0)
        for lo in self.layers:
            if lo.stats is not None:
                for p in _PHASES:
                    out[p] += float(getattr(lo.stats, p, 0.0))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target.digest),
            "manifest": str(self.manifest.digest),
            "config": str(self.config.digest),
            "platform": self.platform,
            "snapshotter": self.snapshotter,
            "chain_id": self.chain_id,
            "chains_total": self.chains_total,
            "chains_unpacked": self.chains_unpacked,
            "chains_skipped": self.chains_skipped,
            "chains_shared": self.chains_shared,
            "bytes_compressed": self.bytes_compressed,
            "bytes_uncompressed": self.bytes_uncompressed,
            "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "layers": [lo.to_json() for lo in self.layers],
        }


class UnpackEvents:
    """Progress callbacks; the CLI subclasses this. Called from worker threads."""

    def layer_started(self, chain_id: str, layer: Descriptor) -> None: ...

    def layer_progress(self, layer: Descriptor, nbytes: int) -> None:
        """``nbytes`` more of the layer's (compressed) blob were read by its apply."""

    def layer_done(self, outcome: LayerOutcome) -> None: ...

    def image_done(self, result: UnpackResult) -> None: ...

    def cleanup_failed(self, key: str, error: BaseException) -> None:
        """A half-applied snapshot could not be removed (it is left for gc); logged as a
        warning by default (on stderr when logging is not configured)."""
        _log.warning("warning: could not remove the half-applied snapshot %s (%s); "
                     "`cargohold gc` removes it", key, error)


# ---------------------------------------------------------------- the unpacker


class _Reader:
    """A blob reader that stops (Interrupted) once a cancel event is set, and reports the
    bytes read to ``progress``."""

    __slots__ = ("_cancel", "_job_cancel", "_progress", "_raw")

    def __init__(self, raw: BinaryIO, cancel: threading.Event, job_cancel: threading.Event,
                 progress: Callable[[int], None] | None = None):
        self._raw = raw
        self._cancel = cancel
        self._job_cancel = job_cancel
        self._progress = progress

    def _check(self) -> None:
        if self._cancel.is_set() or self._job_cancel.is_set():
            raise Interrupted("unpack interrupted")

    def read(self, size: int = -1, /) -> bytes:
        self._check()
        data = self._raw.read(size)
        if self._progress is not None and data:
            self._progress(len(data))
        return data

    def readinto(self, b: Any, /) -> int:
        self._check()
        n: int = self._raw.readinto(b)  # type: ignore[attr-defined]
        if self._progress is not None and n:
            self._progress(n)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Gate:
    """Counts the tasks running through it; once closed no task starts (Interrupted) and
    :meth:`close` returns when the running ones have finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    @contextmanager
    def enter(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise Interrupted("unpack interrupted")
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def _idle(self) -> bool:
        with self._lock:
            return not self._running

    def close(self, on_interrupt: Callable[[], None]) -> None:
        """Refuse new tasks and wait for the running ones. A KeyboardInterrupt (Ctrl-C,
        SIGTERM) while waiting calls ``on_interrupt`` (to make them stop), keeps waiting,
        and is raised once they have finished."""
        with held(), self._lock:
            self._closed = True
        wait_until(self._idle, on_interrupt)


@dataclass
class _Job:
    img: ResolvedImage
    token: str
    standalone: bool
    cancel: threading.Event = field(default_factory=threading.Event)
    #: The job's layer tasks (pool workers): :meth:`stop` waits for them.
    tasks: _Gate = field(default_factory=_Gate)

    def stop(self, on_interrupt: Callable[[], None]) -> None:
        """Cancel the job and return once none of its tasks runs (none starts afterwards,
        even one queued by a ``submit`` that was interrupted before it returned)."""
        call_held(self.cancel.set)  # Event.set takes a condition (cargohold.interrupts)
        self.tasks.close(on_interrupt)


class Unpacker:
    """Unpacks images of ``content`` into ``snapshotter`` with ``applier``. Thread-safe:
    one instance may unpack several images at once (chains shared between them are unpacked
    once).  ``jobs``: layers applied at once (standalone snapshotters); ``reserve_bytes``:
    free space the snapshot file system must keep (checked before starting, and by the
    applier while writing when it was built with the same reserve)."""

    def __init__(
        self,
        content: ContentStore,
        snapshotter: Snapshotter,
        applier: Applier,
        *,
        jobs: int = 4,
        reserve_bytes: int = 0,
        events: UnpackEvents | None = None,
        cancel: threading.Event | None = None,
        check_blobs: bool = True,
    ) -> None:
        self.content = content
        #: Check every missing layer's blob is there before starting (False when the
        #: content store waits for a running fetch: :mod:`cargohold.pull.blobwait`).
        self.check_blobs = check_blobs
        self.snapshotter = snapshotter
        self.applier = applier
        self.jobs = max(1, jobs)
        self.reserve_bytes = reserve_bytes
        self.events = events or UnpackEvents()
        self.cancel = cancel or threading.Event()
        self._flight = SingleFlight()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        #: Running :meth:`unpack` calls: :meth:`close` waits for them.
        self._calls = _Gate()

    def close(self) -> None:
        """Wait for the running unpacks (later ones are refused: Interrupted), then stop
        the layer workers. The store may be closed afterwards."""
        self._calls.close(self.cancel.set)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            shutdown(pool, self.cancel.set)

    def __enter__(self) -> Unpacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.jobs, thread_name_prefix="unpack"
                )
            return self._pool

    # ------------------------------------------------------------ public

    def resolve(self, image_target: Descriptor, platform: Platform | None = None) -> ResolvedImage:
        return resolve_image(self.content, image_target, platform)

    def unpack(
        self, image_target: Descriptor, platform: Platform | None = None
    ) -> UnpackResult:
        """Make the image's top chain committed (see the module docstring)."""
        with self._calls.enter():
            return self._unpack(image_target, platform)

    def _unpack(self, image_target: Descriptor, platform: Platform | None) -> UnpackResult:
        start = time.monotonic()
        img = self.resolve(image_target, platform)
        sn = self.snapshotter
        result = UnpackResult(
            target=image_target,
            manifest=img.manifest_desc,
            config=img.config_desc,
            platform=str(img.platform),
            snapshotter=sn.name,
            chain_id=img.top_chain,
        )
        n = len(img.chain_ids)
        base = highest_committed(sn, img.chain_ids)
        outcomes: list[LayerOutcome] = [
            LayerOutcome(i, img.chain_ids[i], img.layers[i], img.diff_ids[i], STATE_EXISTS)
            for i in range(base + 1)
        ]
        missing = list(range(base + 1, n))
        if missing:
            if self.check_blobs:
                self._check_blobs(img, missing)
            self._check_space(img, missing)
            job = _Job(img, secrets.token_hex(4), sn.standalone_layers)
            if job.standalone and len(missing) > 1:
                outcomes += self._unpack_concurrently(job, missing)
            else:
                outcomes += [self._ensure_chain(job, i, None) for i in missing]
        if n and not is_committed(sn, img.top_chain):  # pragma: no cover - defensive
            raise CargoholdError(f"unpack of {image_target.digest} did not commit {img.top_chain}")
        self._set_labels(img)
        result.layers = outcomes
        result.seconds = time.monotonic() - start
        self.events.image_done(result)
        return result

    # ------------------------------------------------------------ internals

    def _check_blobs(self, img: ResolvedImage, missing: Sequence[int]) -> None:
        for i in missing:
            layer = img.layers[i]
            try:
                info = self.content.info(layer.digest)
            except NotFoundError:
                info = None
            if info is None or info.size != layer.size:
                raise NotFoundError(
                    f"layer {layer.digest} ({mediatypes.kind(layer.media_type)}) is not in the "
                    "content store",
                    hint="fetch the image again (cargohold fetch REF) before unpacking",
                )

    def _check_space(self, img: ResolvedImage, missing: Sequence[int]) -> None:
        where = self.snapshotter.local_dir
        if where is None:
            return
        try:
            st = os.statvfs(where)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        # The compressed size is a lower bound of what the layers will take unpacked.
        need = sum(img.layers[i].size for i in missing)
        if free - need < self.reserve_bytes:
            raise OutOfSpaceError(
                f"unpacking {len(missing)} layers ({need} bytes compressed, more unpacked) "
                f"would leave less than the reserve of {self.reserve_bytes} bytes free on "
                f"{where} ({free} free)"
            )

    def _unpack_concurrently(self, job: _Job, missing: Sequence[int]) -> list[LayerOutcome]:
        try:
            return self._run_concurrently(job, missing)
        except BaseException as e:
            # Also when Ctrl-C / SIGTERM (KeyboardInterrupt, main thread only) lands while
            # the tasks are being submitted: a task queued (or a worker started) by a submit
            # that never returned is not among our futures, so wait on the job's own count.
            if isinstance(e, KeyboardInterrupt):
                call_held(self.cancel.set)
            job.stop(self.cancel.set)
            raise

    def _layer_task(
        self, job: _Job, i: int, parent: Future[LayerOutcome] | None
    ) -> LayerOutcome:
        with job.tasks.enter():  # Interrupted once the job stopped
            return self._ensure_chain(job, i, parent)

    def _run_concurrently(self, job: _Job, missing: Sequence[int]) -> list[LayerOutcome]:
        pool = self._executor()
        futs: list[Future[LayerOutcome]] = []
        prev: Future[LayerOutcome] | None = None
        # Submitted bottom first: the pool starts tasks in submission order, so a task only
        # ever waits for tasks that are already running (its parent, or the same chain's
        # leader in another image), never for a queued one.
        for i in missing:
            with held():  # submit waits for the thread it starts: not interruptible
                fut = pool.submit(contextvars.copy_context().run, self._layer_task, job, i, prev)
            futs.append(fut)
            prev = fut
        out: list[LayerOutcome] = []
        first: BaseException | None = None
        for fut in futs:
            try:
                out.append(self._wait(fut, job))
            except BaseException as e:
                call_held(job.cancel.set)
                if first is None or (
                    isinstance(first, Interrupted) and not isinstance(e, Interrupted)
                    and not self.cancel.is_set()
                ):
                    first = e
        if first is not None:
            raise first
        return out

    def _wait(self, fut: Future[LayerOutcome], job: _Job) -> LayerOutcome:
        try:
            # Not wait_until(fut.done): an interrupt landing inside the future's condition
            # would leave it held, its worker blocked for good in set_result (a hang).
            return wait_future(fut)
        except KeyboardInterrupt:
            with held():
                self.cancel.set()
                job.cancel.set()
            raise

    def _ensure_chain(
        self, job: _Job, i: int, parent: Future[LayerOutcome] | None
    ) -> LayerOutcome:
        """Make chain ``i`` committed; concurrent callers for the same chain share one run."""
        img = job.img
        chain = img.chain_ids[i]
        ran = False

        def work() -> LayerOutcome:
            nonlocal ran
            ran = True
            return self._apply_chain(job, i, parent)

        try:
            outcome, shared = self._flight.do_shared(chain, work)
        except BaseException:
            if ran or self.cancel.is_set() or job.cancel.is_set():
                raise
            # Another image's attempt at this chain failed (its blob may differ from ours):
            # try once with our own.
            outcome, shared = self._flight.do_shared(chain, work)
        if not shared:
            return outcome
        state = STATE_EXISTS if outcome.state == STATE_EXISTS else STATE_SHARED
        mine = LayerOutcome(i, chain, img.layers[i], img.diff_ids[i], state)
        self.events.layer_done(mine)
        return mine

    def _apply_chain(
        self, job: _Job, i: int, parent: Future[LayerOutcome] | None
    ) -> LayerOutcome:
        img = job.img
        sn = self.snapshotter
        chain = img.chain_ids[i]
        layer = img.layers[i]
        diff_id = img.diff_ids[i]
        if is_committed(sn, chain):
            out = LayerOutcome(i, chain, layer, diff_id, STATE_EXISTS)
            self.events.layer_done(out)
            return out
        if self.cancel.is_set() or job.cancel.is_set():
            raise Interrupted("unpack interrupted")
        parent_name = img.chain_ids[i - 1] if i else ""
        key = f"{EXTRACT_PREFIX}{job.token}-{i}-{chain}"
        t0 = time.monotonic()
        self.events.layer_started(chain, layer)
        state = STATE_UNPACKED
        stats: ApplyStats | None = None
        try:
            # Inside the try: an interrupt right after the row is written still removes it.
            try:
                mounts = sn.prepare(
                    key, "" if job.standalone else parent_name, labels={LABEL_SNAPSHOT_REF: chain}
                )
            except AlreadyExistsError:
                # containerd refuses an extract snapshot whose target chain exists: another
                # unpack (CRI's, `ctr run`'s, another cargohold's) committed it since the
                # check above. Use theirs, as containerd's own unpacker does.
                if not is_committed(sn, chain):
                    raise
                out = LayerOutcome(i, chain, layer, diff_id, STATE_SHARED, time.monotonic() - t0)
                self.events.layer_done(out)
                return out
            with self.content.reader(layer.digest) as raw, stored_blob_check(self.content, layer):
                reader: Any = _Reader(raw, self.cancel, job.cancel,
                                      functools.partial(self.events.layer_progress, layer))
                if isinstance(self.applier, StatsApplier):
                    udesc, stats = self.applier.apply_with_stats(
                        layer, mounts, reader=reader, diff_id=diff_id)
                else:
                    udesc = self.applier.apply(layer, mounts, reader=reader, diff_id=diff_id)
            if udesc.digest != diff_id:
                raise InvalidInputError(
                    f"layer {layer.digest} applied as {udesc.digest}, expected diff_id {diff_id}"
                )
            if parent is not None:
                parent.result()  # the parent is committed (or its error is ours)
            try:
                sn.commit(chain, key, parent=parent_name if job.standalone else None)
            except AlreadyExistsError:
                # Another process committed the same chain meanwhile: use theirs.
                sn.remove(key)
                state = STATE_SHARED
        except BaseException:
            call_held(job.cancel.set)  # the image fails: its other layers stop early
            self._remove_extract(key)  # the original error matters more: it is raised
            failed = LayerOutcome(i, chain, layer, diff_id, STATE_FAILED,
                                  time.monotonic() - t0, stats)
            self.events.layer_done(failed)
            raise
        out = LayerOutcome(
            i, chain, layer, diff_id, state, time.monotonic() - t0, stats,
            uncompressed=udesc.size,
        )
        self.events.layer_done(out)
        return out

    def _remove_extract(self, key: str) -> None:
        try:
            self.snapshotter.remove(key)
        except NotFoundError:
            return  # never prepared (or already gone)
        except Exception as e:
            self.events.cleanup_failed(key, e)

    def _set_labels(self, img: ResolvedImage) -> None:
        """containerd's unpacker labels (only written when they differ)."""
        for layer, diff_id in zip(img.layers, img.diff_ids, strict=True):
            self._label(layer.digest, LABEL_UNCOMPRESSED, str(diff_id))
        if img.chain_ids:
            self._label(
                img.config_desc.digest, snapshot_gc_label(self.snapshotter.name), img.top_chain
            )

    def _label(self, digest: Digest, key: str, value: str) -> None:
        try:
            info = self.content.info(digest)
        except NotFoundError:
            return
        if info.labels.get(key) != value:
            self.content.update(digest, {key: value})


__all__ = [
    "EXTRACT_PREFIX",
    "LayerOutcome",
    "UnpackEvents",
    "UnpackResult",
    "Unpacker",
    "snapshot_gc_label",
]
