"""How much an image's layers take unpacked: measured on the store's snapshots, read off a
layer blob's trailer, or estimated at the unpack ratio measured on the store (see
:mod:`cargohold.bake.catalog` for how the catalog uses them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cargohold.bake.plan import DEFAULT_UNPACK_RATIO
from cargohold.errors import CargoholdError
from cargohold.images.content import image_contents, present_configs
from cargohold.images.walk import read_verified_blob
from cargohold.oci.chainid import layer_chains
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import ContentStore, Snapshotter, Store
from cargohold.units import format_size
from cargohold.unpack.decompress import HINT_HEAD, HINT_TAIL, uncompressed_size_hint

__all__ = [
    "RATIO_MIN_LAYER",
    "RATIO_RANGE",
    "UnpackRatio",
    "chain_layer_sizes",
    "local_blob",
    "local_tar_size",
    "ratio_of",
    "snapshotter_of",
    "unpack_ratio",
    "usage_excludes_parents",
]


def snapshotter_of(store: Store) -> Snapshotter:
    """The store's snapshotter (the embedded one is opened on first use)."""
    return store.snapshots


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


def local_blob(content: ContentStore, desc: Descriptor) -> bytes | None:
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

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> UnpackRatio:
        """The ratio :meth:`to_json` wrote (KeyError, TypeError, ValueError otherwise)."""
        measured = doc["measured_ratio"]
        return cls(float(doc["ratio"]), None if measured is None else float(measured),
                   int(doc["compressed_bytes"]), int(doc["unpacked_bytes"]), int(doc["layers"]),
                   int(doc["small_layers"]))

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
        for m, cfg in present_configs(content, contents, local_blob):
            pairs = layer_chains(cfg, m)
            sizes = chain_layer_sizes(snapshots, [c for c, _ in pairs])
            for (c, layer), size in zip(pairs, sizes, strict=True):
                if size is not None:
                    sizes_of.setdefault(str(c), (layer.size, size))
    return ratio_of(sizes_of.values())
