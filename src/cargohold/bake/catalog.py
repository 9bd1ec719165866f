"""Turn a cache spec into the planner's input: one :class:`~cargohold.bake.plan.PlanImage` per entry.

Only manifests and configs are read (from the store when it holds them, verified, else from
the registry); no layer is downloaded. For every entry of the spec:

* the reference is resolved, its index or manifest read, and for an index the manifests of
  ``spec.platforms_for(entry)`` (default: the caller's platforms, else this host's) chosen
  as ``fetch`` would choose them;
* ``blobs`` = ``(digest, size)`` of the index, the chosen manifests, their configs and
  layers (what a fetch keeps);
* ``chains`` = the chain ID of every layer (from the config's ``diff_ids``) with the unpacked
  size of that layer:

  - **measured** when the chain is unpacked in this store already (the snapshotter's usage
    of the committed snapshot named by the chain ID; for a snapshotter whose snapshots are
    full copies, :func:`usage_excludes_parents` false, the difference to its parent's usage);
  - else, when the layer blob is in the store already, its **tar size** read off the blob
    without inflating it (:func:`local_tar_size`: the gzip trailer's ISIZE, the zstd frame
    header's content size, the size of an uncompressed layer);
  - else **estimated** as ``estimate_unpacked(layer compressed size, ratio)``, where
    ``ratio`` = unpacked / compressed bytes over the layers of this store's images that are
    unpacked, each of at least :data:`RATIO_MIN_LAYER` (1 MB) compressed, clamped to
    :data:`RATIO_RANGE` (1-8x) (:func:`unpack_ratio`), or, when no such layer is unpacked
    (or no snapshotter is available), :data:`~cargohold.bake.plan.DEFAULT_UNPACK_RATIO` (2.5).

Entries are resolved concurrently (``jobs`` at a time; the registry client's per-host limit
still applies), each reported to :class:`ResolveEvents` as it resolves or fails.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from cargohold.bake.plan import (
    DEFAULT_MODEL,
    DEFAULT_UNPACK_RATIO,
    CostModel,
    Plan,
    PlanImage,
    estimate_unpacked,
    plan,
)
from cargohold.bake.spec import CacheSpec, ImageEntry
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    Interrupted,
    UnsupportedError,
)
from cargohold.images.content import image_contents, present_configs
from cargohold.images.walk import by_platform, image_graph, read_verified_blob
from cargohold.interrupts import held, shutdown, wait_until
from cargohold.oci.chainid import chain_ids
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest, Verifier
from cargohold.oci.manifest import (
    ImageConfig,
    Manifest,
    parse_config,
)
from cargohold.oci.platform import host_platform
from cargohold.oci.reference import Reference
from cargohold.store.interfaces import ContentStore, Snapshotter, Store
from cargohold.units import format_size
from cargohold.unpack.decompress import HINT_HEAD, HINT_TAIL, uncompressed_size_hint

__all__ = [
    "RATIO_MIN_LAYER",
    "RATIO_RANGE",
    "CatalogImage",
    "ResolveEvents",
    "UnpackRatio",
    "budget_hint",
    "chain_layer_sizes",
    "layer_chains",
    "plan_catalog",
    "present_footprint",
    "ratio_of",
    "resolve_spec",
    "snapshotter_of",
    "unpack_ratio",
    "usage_excludes_parents",
]

#: Largest config blob read (configs are small JSON documents).
MAX_CONFIG_SIZE = 64 << 20


class RegistryLike(Protocol):
    def resolve(self, ref: Reference) -> Descriptor: ...

    def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes: ...

    def download_blob(self, ref: Reference, desc: Descriptor, write: Any, **kw: Any) -> None: ...


def snapshotter_of(store: Store) -> Snapshotter:
    """The store's snapshotter (the embedded one is opened on first use)."""
    return store.snapshots


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


def layer_chains(config: ImageConfig, manifest: Manifest) -> list[tuple[Digest, Descriptor]]:
    """``(chain ID, layer descriptor)`` of every layer, bottom first (as many as both the
    config's diff_ids and the manifest's layers have)."""
    return list(zip(chain_ids(config.diff_ids), manifest.layers, strict=False))


def usage_excludes_parents(sn: Snapshotter) -> bool:
    """Whether ``sn.usage`` of a committed layer counts that layer alone: overlay-like
    snapshotters (the embedded overlay backend; containerd's overlayfs and the others, whose
    API says usage excludes the parents), not full copies (the embedded ``flat`` backend,
    containerd's ``native``): :attr:`Snapshotter.usage_per_layer`."""
    return sn.usage_per_layer


def chain_layer_sizes(snapshots: Snapshotter | None, chains: Sequence[Digest | str]) -> list[int | None]:
    """The unpacked size of each layer of a chain stack from the snapshotter (None where the
    chain is not unpacked): its usage, or for a full-copy snapshotter
    (:func:`usage_excludes_parents` false) its usage minus its parent's."""
    if snapshots is None:
        return [None] * len(chains)
    per_layer = usage_excludes_parents(snapshots)
    out: list[int | None] = []
    prev: int | None = 0
    for c in chains:
        try:
            size = int(snapshots.usage(str(c)).size)
        except CargoholdError:
            out.append(None)
            prev = None
            continue
        out.append(size if per_layer else (None if prev is None else max(0, size - prev)))
        prev = size
    return out


def local_tar_size(content: ContentStore | None, layer: Descriptor) -> int | None:
    """The layer's tar size read off its blob in the store (the gzip trailer, the zstd frame
    header; see :func:`~cargohold.unpack.decompress.uncompressed_size_hint`), None when the
    blob is not there or does not tell."""
    if content is None:
        return None
    try:
        if content.info(layer.digest).size != layer.size:
            return None
        with content.reader(layer.digest) as r:
            head = r.read(HINT_HEAD)
            if layer.size > HINT_HEAD + HINT_TAIL:
                r.seek(layer.size - HINT_TAIL)
            tail = r.read(HINT_TAIL) if layer.size >= HINT_TAIL else b""
            if layer.size <= HINT_HEAD + HINT_TAIL:
                tail = head[-HINT_TAIL:]
    except (CargoholdError, OSError, ValueError):
        return None
    return uncompressed_size_hint(head, tail, layer.size)


def _local_blob(content: ContentStore, desc: Descriptor) -> bytes | None:
    """The blob from the store if it is there with the right size and digest."""
    return read_verified_blob(content, desc)


#: Layers smaller than this (compressed) are left out of the measured ratio: a tar pads to
#: whole blocks and a file takes whole disk blocks, so 200 B of gzip can take 16 kB unpacked.
RATIO_MIN_LAYER = 1_000_000
#: The measured ratio is clamped to this range (gzip on real layers gives 2-4x, text up to
#: about 8x; below 1x the unpacked layer would be smaller than its compressed blob).
RATIO_RANGE = (1.0, 8.0)


@dataclass(frozen=True)
class UnpackRatio:
    """The unpacked / compressed ratio the catalog estimates unmeasured layers with, and what
    it was measured on: the layers of the store's images that are unpacked, each at least
    :data:`RATIO_MIN_LAYER` compressed, each counted once, weighted by their bytes (total
    unpacked / total compressed), clamped to :data:`RATIO_RANGE`; the default
    (:data:`~cargohold.bake.plan.DEFAULT_UNPACK_RATIO`) when no such layer is unpacked."""

    value: float = DEFAULT_UNPACK_RATIO
    #: The ratio measured before clamping (None: nothing to measure on).
    measured: float | None = None
    compressed_bytes: int = 0
    unpacked_bytes: int = 0
    layers: int = 0
    #: Unpacked layers below :data:`RATIO_MIN_LAYER`, left out.
    small_layers: int = 0

    @property
    def clamped(self) -> bool:
        return self.measured is not None and self.measured != self.value

    def describe(self) -> str:
        """``2.31x compressed (measured on this store: 3 layers, 45.2 MB compressed)``."""
        if self.measured is None:
            why = (f"; {_plural(self.small_layers, 'unpacked layer')} under "
                   f"{format_size(RATIO_MIN_LAYER)} left out" if self.small_layers else "")
            return f"{self.value:.2f}x compressed (default{why})"
        text = (f"{self.value:.2f}x compressed (measured on this store: "
                f"{_plural(self.layers, 'layer')}, {format_size(self.compressed_bytes)} compressed")
        if self.clamped:
            text += (f"; {self.measured:.2f}x clamped to "
                     f"{RATIO_RANGE[0]:g}-{RATIO_RANGE[1]:g}x")
        return text + ")"

    def to_json(self) -> dict[str, Any]:
        return {
            "ratio": self.value,
            "measured": self.measured is not None,
            "measured_ratio": self.measured,
            "clamped": self.clamped,
            "compressed_bytes": self.compressed_bytes,
            "unpacked_bytes": self.unpacked_bytes,
            "layers": self.layers,
            "small_layers": self.small_layers,
            "min_layer_bytes": RATIO_MIN_LAYER,
            "range": list(RATIO_RANGE),
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def ratio_of(layers: Iterable[tuple[int, int]]) -> UnpackRatio:
    """The :class:`UnpackRatio` of ``(compressed, unpacked)`` sizes of distinct unpacked
    layers: those under :data:`RATIO_MIN_LAYER` left out, the rest weighted by their bytes,
    clamped to :data:`RATIO_RANGE`."""
    comp = unp = n = small = 0
    for c, u in layers:
        if c < RATIO_MIN_LAYER:
            small += 1
            continue
        comp += c
        unp += u
        n += 1
    if comp <= 0 or unp <= 0:
        return UnpackRatio(small_layers=small)
    raw = unp / comp
    lo, hi = RATIO_RANGE
    return UnpackRatio(min(hi, max(lo, raw)), raw, comp, unp, n, small)


def unpack_ratio(store: Store | None, snapshots: Snapshotter | None = None) -> UnpackRatio:
    """The ratio measured on the unpacked layers of the store's images (each once; see
    :func:`ratio_of`); the default when there is no store or no snapshotter."""
    if store is None:
        return UnpackRatio()
    if snapshots is None:
        snapshots = snapshotter_of(store)
    if snapshots is None:
        return UnpackRatio()
    content = store.content
    sizes_of: dict[str, tuple[int, int]] = {}
    for img in store.images.list():
        try:
            contents = image_contents(content, img.target)
        except CargoholdError:
            continue
        for m, cfg in present_configs(content, contents, _local_blob):
            pairs = layer_chains(cfg, m)
            sizes = chain_layer_sizes(snapshots, [c for c, _ in pairs])
            for (c, layer), size in zip(pairs, sizes, strict=True):
                if size is not None:
                    sizes_of.setdefault(str(c), (layer.size, size))
    return ratio_of(sizes_of.values())


class _Resolver:
    def __init__(self, registry: RegistryLike, content: ContentStore | None) -> None:
        self.registry = registry
        self.content = content

    def manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        """A manifest or index: the store's copy, else the registry's."""
        data = _local_blob(self.content, desc) if self.content is not None else None
        if data is None:
            data = self.registry.fetch_manifest(ref, desc)
        return data

    def config(self, ref: Reference, desc: Descriptor) -> ImageConfig:
        data = _local_blob(self.content, desc) if self.content is not None else None
        if data is None:
            if desc.size > MAX_CONFIG_SIZE:
                raise UnsupportedError(f"{ref}: config {desc.digest} is {desc.size} bytes")
            buf = bytearray()
            verifier = Verifier(desc.digest, desc.size)

            def write(chunk: Any) -> None:
                b = bytes(chunk)
                verifier.update(b)
                buf.extend(b)

            self.registry.download_blob(ref, desc, write)
            verifier.check()
            data = bytes(buf)
        return parse_config(data)


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
) -> CatalogImage:
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


def present_footprint(catalog: Sequence[CatalogImage]) -> list[PlanImage]:
    """What the store already holds of the catalog's images, one present pseudo-image
    (:attr:`PlanImage.present <cargohold.bake.plan.PlanImage>`) per image holding something,
    named as the image: its blobs and chains are disk in use whatever the plan decides
    (nothing is deleted), so an image sharing them pays nothing more for them, pulling an
    image whose chains are all committed is free, and an infeasible plan names the images
    whose bytes the store holds."""
    out: list[PlanImage] = []
    for c in catalog:
        if c.present_blobs or c.present_chains:
            out.append(PlanImage(name=c.image.name, priority=0.0, mode_request="pull",
                                 blobs=c.present_blobs, chains=c.present_chains, present=True))
    return out


def resolve_spec(
    spec: CacheSpec,
    registry: RegistryLike,
    *,
    store: Store | None = None,
    default_platforms: Iterable[Platform] = (),
    ratio: float | None = None,
    snapshots: Snapshotter | None = None,
    failures: list[tuple[ImageEntry, CargoholdError]] | None = None,
    jobs: int = 4,
    events: ResolveEvents | None = None,
) -> list[CatalogImage]:
    """Resolve every entry of ``spec`` (see the module docstring). ``store`` (optional)
    supplies manifests and configs it holds and measured unpacked sizes; ``ratio``
    overrides the unpack ratio used for estimates; ``snapshots`` the snapshotter (default
    ``store.snapshots`` when the store has one). ``failures``: when given, an entry that
    cannot be resolved is appended to it with its error and left out (else the error is
    raised). ``jobs``: entries resolved at once; the result keeps the spec's order."""
    content = store.content if store is not None else None
    if snapshots is None and store is not None:
        snapshots = snapshotter_of(store)
    if ratio is None:
        ratio = unpack_ratio(store, snapshots).value
    defaults = tuple(default_platforms) or (host_platform(),)
    resolver = _Resolver(registry, content)
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
            )
        except CargoholdError as e:
            if not isinstance(e, Interrupted):  # stopped by abort(): not the image's failure
                report.image_unresolved(entry.ref, e)
            raise
        report.image_resolved(resolved)
        return resolved

    out: list[CatalogImage] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(entries))),
                              thread_name_prefix="resolve")
    try:
        futs: list[Future[CatalogImage]] = []
        for entry in entries:
            with held():  # Ctrl-C / SIGTERM: see cargohold.interrupts
                futs.append(pool.submit(contextvars.copy_context().run, one, entry))
        for entry, fut in zip(entries, futs, strict=True):
            wait_until(fut.done)
            try:
                out.append(fut.result())
            except CargoholdError as e:
                if failures is None:
                    raise
                failures.append((entry, e))
    except BaseException as e:
        pool.shutdown(wait=False, cancel_futures=True)  # the error (or Ctrl-C) first
        abort = getattr(registry, "abort", None)
        if isinstance(e, KeyboardInterrupt | Interrupted) and callable(abort):
            # requests in flight end now (their sockets shut down), not at the read timeout
            abort()
        # No resolve outlives this call: the store and the registry client it uses are
        # closed by the caller next (a worker left running under them can crash the
        # interpreter at exit).
        shutdown(pool, abort if callable(abort) else None)
        raise
    finally:
        report.finished()
    pool.shutdown()
    return out


def _relabel(doc: dict[str, Any], row: dict[str, Any], decision: str, penalty: float,
             reason: str) -> None:
    """Set a plan row to what the store holds of its image (and the plan's penalty with it)."""
    doc["total_penalty"] += float(row["priority"]) * (penalty - float(row["penalty_seconds"]))
    row.update(decision=decision, penalty_seconds=penalty, reason=reason)


def budget_hint(doc: dict[str, Any]) -> str:
    """The hint of an infeasible plan (``plan_catalog``'s document)."""
    if doc.get("present_bytes"):
        return ("raise the budget, drop images from the spec, or free what the store holds of "
                "the images named (`containers rm` their containers, `images rm`, then `gc`)")
    return BudgetError.hint


def plan_catalog(
    catalog: Sequence[CatalogImage],
    budget: int | None,
    *,
    model: CostModel = DEFAULT_MODEL,
    allow_skip: bool = True,
    also_present: Sequence[CatalogImage] = (),
) -> tuple[Plan, dict[str, Any]]:
    """Plan the catalog's images with what the store already holds of them as a fixed cost
    (:func:`present_footprint`). Returns the plan and its JSON document: the images' rows
    (the present pseudo-images left out) with each image's ``platforms``, ``digest``,
    ``measured_chains`` and ``blob_sized_chains``, the totals (which include the present
    bytes), and ``present_bytes``. ``also_present``: other images whose present blobs and
    chains count as fixed too (not planned)."""
    fixed = present_footprint([*catalog, *also_present])
    images = [c.image for c in catalog] + fixed
    result = plan(images, budget, model=model, allow_skip=allow_skip)
    doc = result.to_json()
    rows = doc["images"][:len(catalog)]  # the present pseudo-images come after
    for row, c in zip(rows, catalog, strict=True):
        committed = {ch for ch, _ in c.present_chains}
        held = {d for d, _ in c.present_blobs}
        unpacked = bool(c.image.chains) and all(ch in committed for ch, _ in c.image.chains)
        fetched = bool(c.image.blobs) and all(d in held for d, _ in c.image.blobs)
        decision = row["decision"]
        if unpacked and (decision == "fetch" or fetched) and row["requested"] != "fetch":
            # Its layers are all unpacked already: it is pulled, at no cost.
            if decision != "pull" or row["requested"] == "auto":
                _relabel(doc, row, "pull", 0.0,
                         "pulled already: its layers are unpacked in the store")
        elif fetched and decision == "skip":
            left = sum(size for ch, size in c.image.chains if ch not in committed)
            _relabel(doc, row, "fetch", model.fetch_penalty(left),
                     "fetched already: its blobs are in the store")
        row["platforms"] = list(c.platforms)
        row["digest"] = str(c.target.digest)
        row["measured_chains"] = c.measured_chains
        row["blob_sized_chains"] = c.blob_sized_chains
    doc["images"] = rows
    planned = [i.decision for i in result.images[:len(catalog)]]
    if result.feasible and [r["decision"] for r in rows] != planned:
        # The summary counts what the rows say now ("N pulled, ...; X of Y").
        counts = [sum(1 for r in rows if r["decision"] == d) for d in ("pull", "fetch", "skip")]
        doc["reason"] = "; ".join([
            f"{counts[0]} pulled, {counts[1]} fetched, {counts[2]} skipped",
            *str(doc["reason"]).split("; ", 1)[1:]])
    present_blobs = {d: size for f in fixed for d, size in f.blobs}
    present_chains = {ch: size for f in fixed for ch, size in f.chains}
    doc["present_bytes"] = sum(present_blobs.values()) + sum(present_chains.values())
    doc["model"] = {"unpack_throughput": model.unpack_throughput,
                    "per_image_overhead": model.per_image_overhead}
    return result, doc
