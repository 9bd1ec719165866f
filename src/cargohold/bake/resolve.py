"""Resolve a cache spec's entries: manifests and configs only, from the store when it holds
them (verified), else from the registry (see :mod:`cargohold.bake.catalog`)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cargohold.bake.plan import PlanImage, estimate_unpacked
from cargohold.bake.sizes import (
    chain_layer_sizes,
    local_blob,
    local_tar_size,
    snapshotter_of,
    unpack_ratio,
    usage_excludes_parents,
)
from cargohold.bake.spec import CacheSpec, ImageEntry
from cargohold.errors import CargoholdError, Interrupted, UnsupportedError
from cargohold.images.walk import by_platform, image_graph
from cargohold.interrupts import held, shutdown, wait_future
from cargohold.oci.chainid import layer_chains
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest, Verifier
from cargohold.oci.manifest import (
    ImageConfig,
    Index,
    parse_config,
    parse_manifest_or_index,
)
from cargohold.oci.platform import host_platform
from cargohold.oci.reference import Reference
from cargohold.pull.fetch import Registry, child_labels, source_label
from cargohold.singleflight import SingleFlight
from cargohold.store.interfaces import ContentStore, Snapshotter, Store

__all__ = [
    "MAX_CONFIG_SIZE",
    "CatalogImage",
    "Downloaded",
    "Downloads",
    "ResolveEvents",
    "resolve_entry",
    "resolve_spec",
]


#: Largest config blob read (configs are small JSON documents).
MAX_CONFIG_SIZE = 64 << 20






@dataclass(frozen=True)
class CatalogImage:
    """A resolved spec entry: the planner's input plus what was measured."""

    image: PlanImage
    target: Descriptor
    platforms: tuple[str, ...]
    #: Layers whose unpacked size was measured on a snapshot.
    measured_chains: int
    #: Layers sized by their tar size read off a blob in the store (the rest: estimated).
    blob_sized_chains: int = 0
    #: ``(digest, size)`` of its blobs the store holds already, and ``(chain ID, size)`` of
    #: its chains the snapshotter has committed: disk that is used whatever the plan says.
    present_blobs: tuple[tuple[str, int], ...] = ()
    present_chains: tuple[tuple[str, int], ...] = ()



@dataclass(frozen=True)
class Downloaded:
    """A manifest, index or config a resolve downloaded from the registry, with the labels a
    fetch gives it in the store (its gc references and its source)."""

    ref: Reference
    desc: Descriptor
    data: bytes
    labels: Mapping[str, str]


class Downloads:
    """What a bake's resolves downloaded (thread-safe, one download per digest): the fetch
    stores it and continues from it instead of asking the registry again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, Downloaded] = {}
        self._flight = SingleFlight()

    def get(self, digest: str) -> Downloaded | None:
        with self._lock:
            return self._blobs.get(digest)

    def once(self, desc: Descriptor, download: Callable[[], Downloaded]) -> bytes:
        """The blob's bytes: downloaded by the first caller, shared by the others."""
        def work() -> Downloaded:
            got = self.get(str(desc.digest))
            if got is None:
                got = download()
                with self._lock:
                    self._blobs[str(desc.digest)] = got
            return got

        return self._flight.do(str(desc.digest), work).data


class _Resolver:
    def __init__(self, registry: Registry, content: ContentStore | None,
                 downloads: Downloads | None = None) -> None:
        self.registry = registry
        self.content = content
        self.downloads = downloads or Downloads()

    def manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        """A manifest or index: the store's copy, else the registry's (once per bake)."""
        data = local_blob(self.content, desc) if self.content is not None else None
        if data is None:
            data = self.downloads.once(desc, lambda: self._fetch_manifest(ref, desc))
        return data

    def _fetch_manifest(self, ref: Reference, desc: Descriptor) -> Downloaded:
        data = self.registry.fetch_manifest(ref, desc)
        parsed = parse_manifest_or_index(data, desc.media_type)
        children = (parsed.manifests if isinstance(parsed, Index)
                    else [parsed.config, *parsed.layers])
        labels = child_labels(desc, children)
        k, v = source_label(ref)
        labels[k] = v
        return Downloaded(ref, desc, data, labels)

    def config(self, ref: Reference, desc: Descriptor) -> ImageConfig:
        data = local_blob(self.content, desc) if self.content is not None else None
        if data is None:
            if desc.size > MAX_CONFIG_SIZE:
                raise UnsupportedError(f"{ref}: config {desc.digest} is {desc.size} bytes")
            data = self.downloads.once(desc, lambda: self._fetch_config(ref, desc))
        return parse_config(data)

    def _fetch_config(self, ref: Reference, desc: Descriptor) -> Downloaded:
        buf = bytearray()
        verifier = Verifier(desc.digest, desc.size)

        def write(chunk: Any) -> None:
            b = bytes(chunk)
            verifier.update(b)
            buf.extend(b)

        self.registry.download_blob(ref, desc, write)
        verifier.check()
        k, v = source_label(ref)
        return Downloaded(ref, desc, bytes(buf), {k: v})


class ResolveEvents:
    """Progress of :func:`resolve_spec` (the CLI subclasses it). The image callbacks are
    called from worker threads, in the order the entries finish."""

    def resolving(self, total: int) -> None: ...

    def image_resolved(self, image: CatalogImage) -> None: ...

    def image_unresolved(self, ref: Reference, error: CargoholdError) -> None: ...

    def finished(self) -> None:
        """Resolution is over (also when it stopped early on an error)."""


def resolve_entry(
    resolver: _Resolver,
    name: str,
    ref: Reference,
    platforms: Sequence[Platform],
    *,
    critical: bool,
    priority: float,
    mode: str,
    snapshots: Snapshotter | None,
    ratio: float,
    root: Descriptor | None = None,
) -> CatalogImage:
    """Resolve one entry; ``root``: its manifest or index resolved already (by an earlier
    resolve of this bake: the registry is not asked again)."""
    if root is None:
        root = resolver.registry.resolve(ref)
    graph = image_graph(root, lambda d: resolver.manifest(ref, d),
                        select=by_platform(platforms, what=str(ref)), what=str(ref))
    blobs: dict[str, int] = {str(root.digest): root.size}
    manifests = graph.manifests
    if graph.index is not None:
        for d, _ in manifests:
            blobs.setdefault(str(d.digest), d.size)
    chains: dict[str, int] = {}
    present_chains: dict[str, int] = {}
    plats: list[str] = []
    measured = from_blob = 0
    # A full-copy snapshotter keeps every chain as a whole tree: a chain costs the sum of
    # its layers; overlay-like ones keep each layer once.
    cumulative = snapshots is not None and not usage_excludes_parents(snapshots)
    for mdesc, m in manifests:
        blobs.setdefault(str(m.config.digest), m.config.size)
        for layer in m.layers:
            blobs.setdefault(str(layer.digest), layer.size)
        cfg = resolver.config(ref, m.config)
        plats.append(str(mdesc.platform) if mdesc.platform else str(cfg.platform))
        pairs = layer_chains(cfg, m)
        sizes = chain_layer_sizes(snapshots, [c for c, _ in pairs])
        below = 0
        for (c, layer), size in zip(pairs, sizes, strict=True):
            committed = size is not None
            if size is None:
                size = local_tar_size(resolver.content, layer)
                if size is None:
                    size = estimate_unpacked(layer.size, ratio)
                elif str(c) not in chains:
                    from_blob += 1
            elif str(c) not in chains:
                measured += 1
            below += size
            cost = below if cumulative else size
            chains.setdefault(str(c), cost)
            if committed:
                present_chains.setdefault(str(c), cost)
    image = PlanImage(
        name=name,
        critical=critical,
        priority=priority,
        mode_request=mode,  # type: ignore[arg-type]
        blobs=list(blobs.items()),
        chains=list(chains.items()),
    )
    present_blobs = tuple(
        (d, size) for d, size in blobs.items() if _has_blob(resolver.content, d, size)
    )
    return CatalogImage(image, root, tuple(sorted(set(plats))), measured, from_blob,
                        present_blobs, tuple(present_chains.items()))


def _has_blob(content: ContentStore | None, digest: str, size: int) -> bool:
    if content is None:
        return False
    try:
        return content.info(Digest.parse(digest)).size == size
    except CargoholdError:
        return False



def resolve_spec(
    spec: CacheSpec,
    registry: Registry,
    *,
    store: Store | None = None,
    default_platforms: Iterable[Platform] = (),
    ratio: float | None = None,
    snapshots: Snapshotter | None = None,
    failures: list[tuple[ImageEntry, CargoholdError]] | None = None,
    jobs: int = 4,
    events: ResolveEvents | None = None,
    downloads: Downloads | None = None,
    roots: Mapping[str, Descriptor] | None = None,
) -> list[CatalogImage]:
    """Resolve every entry of ``spec`` (see the module docstring). ``store`` (optional)
    supplies manifests and configs it holds and measured unpacked sizes; ``ratio``
    overrides the unpack ratio used for estimates; ``snapshots`` the snapshotter (default
    ``store.snapshots`` when the store has one). ``failures``: when given, an entry that
    cannot be resolved is appended to it with its error and left out (else the error is
    raised). ``jobs``: entries resolved at once; the result keeps the spec's order.
    ``downloads``: where the manifests and configs downloaded from the registry are kept (a
    bake stores them and fetches on from them); ``roots``: entries resolved already, by
    name (not resolved again)."""
    content = store.content if store is not None else None
    if snapshots is None and store is not None:
        snapshots = snapshotter_of(store)
    if ratio is None:
        ratio = unpack_ratio(store, snapshots).value
    defaults = tuple(default_platforms) or (host_platform(),)
    resolver = _Resolver(registry, content, downloads)
    known = roots or {}
    report = events or ResolveEvents()
    entries = list(spec.images)
    report.resolving(len(entries))

    def one(entry: ImageEntry) -> CatalogImage:
        try:
            resolved = resolve_entry(
                resolver,
                str(entry.ref),
                entry.ref,
                spec.platforms_for(entry) or defaults,
                critical=entry.critical,
                priority=entry.priority,
                mode=entry.mode,
                snapshots=snapshots,
                ratio=ratio,
                root=known.get(str(entry.ref)),
            )
        except CargoholdError as e:
            if not isinstance(e, Interrupted):  # stopped by abort(): not the image's failure
                report.image_unresolved(entry.ref, e)
            raise
        report.image_resolved(resolved)
        return resolved

    try:
        return _resolve_all(entries, one, registry, failures, jobs)
    finally:
        report.finished()


def _resolve_all(
    entries: Sequence[ImageEntry],
    one: Callable[[ImageEntry], CatalogImage],
    registry: Registry,
    failures: list[tuple[ImageEntry, CargoholdError]] | None,
    jobs: int,
) -> list[CatalogImage]:
    """``one`` of every entry, ``jobs`` at a time, in the entries' order (see
    :func:`resolve_spec` for ``failures``); no resolve outlives the call."""
    out: list[CatalogImage] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(entries))),
                              thread_name_prefix="resolve")
    try:
        futs: list[Future[CatalogImage]] = []
        for entry in entries:
            with held():  # Ctrl-C / SIGTERM: see cargohold.interrupts
                futs.append(pool.submit(contextvars.copy_context().run, one, entry))
        for entry, fut in zip(entries, futs, strict=True):
            try:
                out.append(wait_future(fut))
            except CargoholdError as e:
                if failures is None:
                    raise
                failures.append((entry, e))
    except BaseException as e:
        pool.shutdown(wait=False, cancel_futures=True)  # the error (or Ctrl-C) first
        if isinstance(e, KeyboardInterrupt | Interrupted):
            # requests in flight end now (their sockets shut down), not at the read timeout
            registry.abort()
        # No resolve outlives this call: the store and the registry client it uses are
        # closed by the caller next (a worker left running under them can crash the
        # interpreter at exit).
        shutdown(pool, registry.abort)
        raise
    pool.shutdown()
    return out
