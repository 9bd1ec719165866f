"""Fetch: bring an image's compressed content into a store and register its record.

The first half of the seed's trade, what ``ctr content fetch`` does: resolve the reference,
walk index -> manifests (selected platforms) -> config + layers, download every missing blob
into the content store (verified, resumable, each blob once even when images share it), then
write the image record, only once every blob of the image is present and verified.

All of it happens under a lease (:func:`cargohold.leasing.leased`), so a concurrent ``gc``
never collects half-fetched content; the lease goes when the fetch ends, however it ends (a
killed fetch's is released by the next command), and a rerun resumes from the ingests. Two
processes fetching the same blob do not fail on each other: the second waits for the first's
ingest (as containerd's clients do on a locked ref) and then finds the blob committed.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    ConflictError,
    IngestLockedError,
    Interrupted,
    NotFoundError,
    OutOfSpaceError,
)
from cargohold.images.walk import by_platform, image_graph, read_blob
from cargohold.interrupts import held, shutdown, wait_future
from cargohold.labels import (
    GC_REF_CONTENT,
    LABEL_CRI_MANAGED,
    LABEL_CRI_PINNED,
    LABEL_DISTRIBUTION_SOURCE,
    MANAGED,
    PINNED,
)
from cargohold.leasing import leased
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.manifest import (
    Index,
    check_config,
    parse_config,
    parse_manifest_or_index,
)
from cargohold.oci.reference import Reference
from cargohold.singleflight import SingleFlight
from cargohold.store.interfaces import (
    ContentWriter,
    Image,
    Store,
)

#: Longest pause between two attempts to open an ingest another writer holds.
LOCKED_RETRY_MAX = 1.0


class Registry(Protocol):
    """What fetch needs of a registry client (``cargohold.registry.client.RegistryClient``)."""

    def resolve(self, ref: Reference) -> Descriptor: ...

    def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes: ...

    def download_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        write: Callable[[Any], object],
        *,
        offset: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> None: ...

    def abort(self) -> None:
        """End requests in flight now (from any thread); a no-op for local sources."""
        ...


class FetchEvents:
    """Progress callbacks; the CLI subclasses this. Called from worker threads."""

    def resolved(self, ref: Reference, desc: Descriptor) -> None: ...

    def blob_started(self, ref: Reference, desc: Descriptor, offset: int) -> None: ...

    def blob_progress(self, desc: Descriptor, nbytes: int) -> None: ...

    def blob_waiting(self, desc: Descriptor) -> None:
        """Another writer (another cargohold) holds the blob's ingest: waiting for it."""

    def blob_done(self, desc: Descriptor, state: str, transferred: int) -> None:
        """state: 'done' (downloaded), 'exists' (already in the store), 'failed'."""

    def image_done(self, result: FetchResult) -> None: ...

    def image_failed(self, ref: Reference, error: CargoholdError) -> None: ...



class ForwardingEvents(FetchEvents):
    """Passes every event on to ``inner``: subclasses override only what they add, so a new
    event is never dropped on the way (bake once lost ``blob_waiting`` in a hand-written
    forwarder)."""

    def __init__(self, inner: FetchEvents | None = None) -> None:
        self.inner = inner or FetchEvents()

    def resolved(self, ref: Reference, desc: Descriptor) -> None:
        self.inner.resolved(ref, desc)

    def blob_started(self, ref: Reference, desc: Descriptor, offset: int) -> None:
        self.inner.blob_started(ref, desc, offset)

    def blob_progress(self, desc: Descriptor, nbytes: int) -> None:
        self.inner.blob_progress(desc, nbytes)

    def blob_waiting(self, desc: Descriptor) -> None:
        self.inner.blob_waiting(desc)

    def blob_done(self, desc: Descriptor, state: str, transferred: int) -> None:
        self.inner.blob_done(desc, state, transferred)

    def image_done(self, result: FetchResult) -> None:
        self.inner.image_done(result)

    def image_failed(self, ref: Reference, error: CargoholdError) -> None:
        self.inner.image_failed(ref, error)


class CommittedBlobs(ForwardingEvents):
    """Passes every event on to ``inner`` and notes the digests of the blobs this fetch
    downloaded and committed (``blob_done`` state ``done``): the store verified their bytes
    against their digest on commit, so a verify right after need not read them again."""

    def __init__(self, inner: FetchEvents) -> None:
        super().__init__(inner)
        self.digests: set[str] = set()

    def blob_done(self, desc: Descriptor, state: str, transferred: int) -> None:
        if state == "done":
            self.digests.add(str(desc.digest))
        super().blob_done(desc, state, transferred)


@dataclass
class FetchResult:
    ref: Reference
    name: str
    target: Descriptor
    platforms: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0
    seconds: float = 0.0
    record: str = "created"  # created | updated | unchanged

    @property
    def transferred_nothing(self) -> bool:
        return self.bytes_transferred == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "name": self.name,
            "digest": str(self.target.digest),
            "media_type": self.target.media_type,
            "platforms": self.platforms,
            "blobs": self.blobs,
            "bytes_total": self.bytes_total,
            "bytes_transferred": self.bytes_transferred,
            "seconds": round(self.seconds, 3),
            "record": self.record,
        }


@dataclass
class FetchFailure:
    ref: Reference | str
    error: CargoholdError

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "error": self.error.kind,
            "message": self.error.message,
            "exit_code": self.error.exit_code,
        }


def image_name(ref: Reference) -> str:
    """The image record's name: the normalised reference as given (tag and/or digest)."""
    return str(ref)


def source_label(ref: Reference) -> tuple[str, str]:
    return f"{LABEL_DISTRIBUTION_SOURCE}.{ref.domain}", ref.path


def child_labels(desc: Descriptor, children: Sequence[Descriptor]) -> dict[str, str]:
    """containerd's gc.ref.content labels of an index or manifest blob."""
    labels: dict[str, str] = {}
    if mediatypes.is_index(desc.media_type):
        for i, c in enumerate(children):
            labels[f"{GC_REF_CONTENT}.m.{i}"] = str(c.digest)
    elif mediatypes.is_manifest(desc.media_type):
        layer_i = 0
        for c in children:
            if mediatypes.is_config(c.media_type) or c.media_type == mediatypes.OCI_EMPTY:
                labels[f"{GC_REF_CONTENT}.config"] = str(c.digest)
            else:
                labels[f"{GC_REF_CONTENT}.l.{layer_i}"] = str(c.digest)
                layer_i += 1
    return labels


@dataclass(frozen=True)
class RecordPolicy:
    """Which image records a fetch writes.

    ``cri``: also the records CRI writes on pull (``repo@digest`` and ``sha256:<config>``,
    all labelled ``io.cri-containerd.image=managed``) so kubelet finds the image by tag and
    by digest and never pulls it again; ``pin`` adds ``io.cri-containerd.pinned=pinned``
    (kubelet's image GC leaves pinned images alone).
    """

    cri: bool = False
    pin: bool = False

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.cri:
            out[LABEL_CRI_MANAGED] = MANAGED
        if self.pin:
            out[LABEL_CRI_PINNED] = PINNED
        return out


def record_names(ref: Reference, root: Descriptor, config: Descriptor | None,
                 policy: RecordPolicy) -> list[str]:
    """The names of the image records for ``ref`` (the first one is the main record)."""
    names = [image_name(ref)]
    if policy.cri:
        by_digest = f"{ref.name}@{root.digest}"
        if by_digest not in names:
            names.append(by_digest)
        if config is not None:
            names.append(str(config.digest))
    return names


class Fetcher:
    """Fetches images into a store. Thread-safe; one instance per command run."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        jobs: int = 4,
        events: FetchEvents | None = None,
        cancel: threading.Event | None = None,
        records: RecordPolicy | None = None,
    ) -> None:
        self.records = records or RecordPolicy()
        self.store = store
        self.registry = registry
        self.jobs = max(1, jobs)
        self.events = events or FetchEvents()
        self.cancel = cancel or threading.Event()
        self._flight = SingleFlight()
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="fetch")
        self._transferred_lock = threading.Lock()

    def close(self) -> None:
        shutdown(self._pool, self.abort)

    def abort(self) -> None:
        """Stop now (from any thread): no new blob starts, downloads in flight end at once
        (the registry client shuts their sockets down); ingests stay for a resume."""
        self.cancel.set()
        self.registry.abort()

    # ------------------------------------------------------------ public

    def fetch_all(
        self,
        refs: Sequence[Reference],
        *,
        platforms: Sequence[Platform],
        all_platforms: bool = False,
        roots: Sequence[Descriptor] | None = None,
    ) -> list[FetchResult | FetchFailure]:
        """Fetch several images concurrently; failures are reported, successes kept.
        ``roots``: the descriptor each ref resolved to already (a bake's plan): the fetch
        continues from it instead of resolving the ref again."""
        with leased(self.store, "fetch") as lease_id:
            try:
                results = self._fetch_images(refs, platforms, all_platforms, roots)
            except OutOfSpaceError:
                self._drop_ingests(lease_id)
                raise
            if any(isinstance(r, FetchFailure) and isinstance(r.error, OutOfSpaceError)
                   for r in results):
                self._drop_ingests(lease_id)
            return results

    def _fetch_images(
        self, refs: Sequence[Reference], platforms: Sequence[Platform], all_platforms: bool,
        roots: Sequence[Descriptor] | None = None,
    ) -> list[FetchResult | FetchFailure]:
        images_pool = ThreadPoolExecutor(
            max_workers=min(len(refs), self.jobs) or 1, thread_name_prefix="image"
        )
        try:
            futs: list[Future[FetchResult | FetchFailure]] = []
            for i, ref in enumerate(refs):
                with held():  # submit waits for the thread it starts: not interruptible
                    futs.append(images_pool.submit(
                        contextvars.copy_context().run, self._fetch_one_safe, ref, platforms,
                        all_platforms, roots[i] if roots is not None else None,
                    ))
            return [self._wait(f) for f in futs]
        except BaseException:
            self.abort()  # the running images stop now
            raise
        finally:
            shutdown(images_pool, self.abort)

    def fetch(
        self, ref: Reference, *, platforms: Sequence[Platform], all_platforms: bool = False
    ) -> FetchResult:
        (res,) = self.fetch_all([ref], platforms=platforms, all_platforms=all_platforms)
        if isinstance(res, FetchFailure):
            raise res.error
        return res

    # ------------------------------------------------------------ internals

    def _drop_ingests(self, lease_id: str) -> None:
        """Out of space: remove the partial downloads of this fetch (a full disk stops the
        whole node, not just this job); blobs already committed stay."""
        try:
            refs = [r.id for r in self.store.leases.list_resources(lease_id)
                    if r.type == "ingest"]
        except CargoholdError:
            return
        for ref in refs:
            with suppress(CargoholdError):  # held by another writer, or gone
                self.store.content.abort(ref)

    def _writer(self, desc: Descriptor) -> ContentWriter | None:
        """Open the blob's ingest; None if the blob is committed. While another writer (this
        or another process) holds the ingest, wait for it, as containerd's clients do on a
        locked ref: it either commits the blob (None then) or gives the ingest up."""
        pause = 0.01
        while True:
            try:
                return self.store.content.writer(
                    ingest_ref(desc), total=desc.size, expected=desc.digest
                )
            except AlreadyExistsError:
                return None
            except IngestLockedError:
                if pause == 0.01:
                    self.events.blob_waiting(desc)
                if self.cancel.wait(pause):
                    raise Interrupted("fetch interrupted") from None
                pause = min(pause * 2, LOCKED_RETRY_MAX)

    def _wait(self, fut: Future[FetchResult | FetchFailure]) -> FetchResult | FetchFailure:
        try:
            return wait_future(fut)  # Ctrl-C / SIGTERM: see cargohold.interrupts
        except KeyboardInterrupt:
            self.abort()
            raise

    def _fetch_one_safe(
        self, ref: Reference, platforms: Sequence[Platform], all_platforms: bool,
        root: Descriptor | None = None,
    ) -> FetchResult | FetchFailure:
        try:
            return self._fetch_one(ref, platforms, all_platforms, root)
        except CargoholdError as e:
            self.events.image_failed(ref, e)
            return FetchFailure(ref, e)

    def _fetch_one(
        self, ref: Reference, platforms: Sequence[Platform], all_platforms: bool,
        known: Descriptor | None = None,
    ) -> FetchResult:
        start = time.monotonic()
        if known is not None and ref.digest is not None and known.digest != ref.digest:
            raise ConflictError(f"{ref}: given as resolved to {known.digest}")
        root = known if known is not None else self.registry.resolve(ref)
        self.events.resolved(ref, root)
        transferred = [0]

        def count(n: int) -> None:
            with self._transferred_lock:
                transferred[0] += n

        chosen_platforms: list[str] = []

        # Walk manifests (small; sequential per image, each fetched once).
        graph = image_graph(
            root,
            lambda d: self._manifest_blob(ref, d, count),
            select=by_platform(platforms, all_platforms, what=str(ref)),
            what=str(ref),
        )
        manifests = graph.manifests
        if graph.index is not None:
            chosen_platforms += [str(d.platform) for d, _ in manifests if d.platform]

        # Config blobs first (small, and needed to validate the layer count), then layers.
        config_futs = [
            self._pool.submit(
                contextvars.copy_context().run, self._ensure_blob, ref, m.config, count
            )
            for _, m in manifests
        ]
        for f in config_futs:
            f.result()
        for mdesc, m in manifests:
            with self.store.content.reader(m.config.digest) as r:
                data = r.read(m.config.size + 1)
            cfg = parse_config(data)
            check_config(m, cfg)
            if not mdesc.platform:
                chosen_platforms.append(
                    str(Platform(cfg.os, cfg.architecture, cfg.variant))
                )
        blobs = graph.blobs()

        layer_descs = [
            d for _, m in manifests for d in m.layers if mediatypes.is_distributable(d.media_type)
        ]
        layer_futs = [
            self._pool.submit(contextvars.copy_context().run, self._ensure_blob, ref, d, count)
            for d in layer_descs
        ]
        self._gather(layer_futs)

        # Every blob is present and verified: only now write the image record(s). The config
        # record (CRI's image ID) is the one of the first selected platform.
        config = manifests[0][1].config if manifests else None
        labels = self.records.labels()
        names = record_names(ref, root, config, self.records)
        record = self._write_record(names[0], root, labels)
        for extra in names[1:]:
            self._write_record(extra, root, labels)
        result = FetchResult(
            ref=ref,
            name=image_name(ref),
            target=root,
            platforms=sorted(set(chosen_platforms)),
            blobs=len(blobs),
            bytes_total=sum(d.size for d in blobs.values()),
            bytes_transferred=transferred[0],
            seconds=time.monotonic() - start,
            record=record,
        )
        self.events.image_done(result)
        return result

    def _gather(self, futs: Iterable[Future[None]]) -> None:
        """Wait for all; raise the first error after the others finished (keeping them)."""
        first: BaseException | None = None
        for f in futs:
            try:
                f.result()
            except BaseException as e:
                if first is None:
                    first = e
                self.cancel.set() if isinstance(e, KeyboardInterrupt | Interrupted) else None
        if first is not None:
            raise first

    def _manifest_blob(
        self, ref: Reference, desc: Descriptor, count: Callable[[int], None]
    ) -> bytes:
        """Get a manifest or index (from the store, else the registry), store it labelled."""
        mediatypes.refuse_unsupported_manifest(desc.media_type, f"{ref} ({desc.digest})")
        data = self._read_local(desc)
        state = "exists"
        if data is None:
            data = self.registry.fetch_manifest(ref, desc)
        parsed = parse_manifest_or_index(data, desc.media_type)
        children = parsed.manifests if isinstance(parsed, Index) else [parsed.config, *parsed.layers]
        labels = child_labels(desc, children)
        k, v = source_label(ref)
        labels[k] = v
        if self._read_local(desc) is None:
            self.events.blob_started(ref, desc, 0)
            self._commit_bytes(desc, data, labels)
            count(len(data))
            state = "done"
        else:
            self.store.content.update(desc.digest, dict(labels))
        self.events.blob_done(desc, state, len(data) if state == "done" else 0)
        return data

    def _read_local(self, desc: Descriptor) -> bytes | None:
        return read_blob(self.store.content, desc)

    def _commit_bytes(self, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        w = self._writer(desc)
        try:
            if w is None:
                raise AlreadyExistsError(f"content {desc.digest} already exists")
            with w:
                w.truncate(0)
                w.write(data)
                w.commit(desc.size, desc.digest, labels)
        except AlreadyExistsError:
            self.store.content.update(desc.digest, dict(labels))

    def _ensure_blob(self, ref: Reference, desc: Descriptor, count: Callable[[int], None]) -> None:
        """Make one blob present and verified; concurrent callers share one download."""
        k, v = source_label(ref)
        key = str(desc.digest)

        def work() -> int:
            try:
                info = self.store.content.info(desc.digest)
            except NotFoundError:
                pass
            else:
                if info.size == desc.size:
                    if info.labels.get(k) != v:
                        self.store.content.update(desc.digest, {k: v})
                    self.events.blob_done(desc, "exists", 0)
                    return 0
            return self._download(ref, desc, {k: v})

        n, shared = self._flight.do_shared(key, work)
        if not shared:
            count(n)
        # A waiter that did not download still needs its own source label.
        try:
            info = self.store.content.info(desc.digest)
            if info.labels.get(k) != v:
                self.store.content.update(desc.digest, {k: v})
        except NotFoundError:
            pass

    def _download(self, ref: Reference, desc: Descriptor, labels: dict[str, str]) -> int:
        if self.cancel.is_set():
            raise Interrupted("fetch interrupted")
        w = self._writer(desc)
        if w is None:
            self.events.blob_done(desc, "exists", 0)
            return 0
        with w:
            offset = w.offset
            if offset > desc.size:
                w.truncate(0)
                offset = 0
            start_offset = offset
            self.events.blob_started(ref, desc, offset)
            cancel = self.cancel
            write = w.write
            progress = self.events.blob_progress

            def sink(chunk: Any) -> None:
                if cancel.is_set():
                    raise Interrupted("fetch interrupted")
                write(chunk)
                progress(desc, len(chunk))

            if offset < desc.size:
                try:
                    self.registry.download_blob(ref, desc, sink, offset=offset)
                except BaseException:
                    self.events.blob_done(desc, "failed", w.offset - start_offset)
                    raise
            try:
                w.commit(desc.size, desc.digest, labels)
            except AlreadyExistsError:
                pass
            except CargoholdError:
                self.events.blob_done(desc, "failed", desc.size - start_offset)
                raise
        transferred = desc.size - start_offset
        self.events.blob_done(desc, "done", transferred)
        return transferred

    def _write_record(self, name: str, root: Descriptor, labels: dict[str, str]) -> str:
        images = self.store.images
        try:
            existing = images.get(name)
        except NotFoundError:
            try:
                images.create(Image(name=name, target=root, labels=dict(labels)))
                return "created"
            except ConflictError:
                existing = images.get(name)
        merged = {**existing.labels, **labels}
        if existing.target == root and merged == dict(existing.labels):
            return "unchanged"
        images.update(Image(name=name, target=root, labels=merged))
        return "updated" if existing.target != root else "unchanged"


def ingest_ref(desc: Descriptor) -> str:
    """The ingest name of a blob download (one per digest, so a rerun resumes it)."""
    return f"fetch-{desc.digest.algorithm}-{desc.digest.hex}"
