"""The walk of an image graph (index -> manifests -> config + layers), and reading small
image blobs (manifests, indexes, configs) from a content store.

The walk is shaped after containerd's ``images.Walk`` and its handlers: :func:`walk` calls a
handler on each descriptor and then on the children it returns, depth first; a handler
raises :class:`SkipDesc` to leave a descriptor's children alone.  :func:`image_graph` is the
walk every caller needs: from a root (an index or a manifest), through the index entries a
selector picks (:func:`by_platform`, :func:`every_manifest`), to the manifests, each read
through a caller's ``fetch`` (the I/O: a content store, a registry, both) and parsed by
:mod:`cargohold.oci.manifest`.  Configs and layers are the manifests' leaves
(:class:`ImageGraph`); callers read, download or hash them as they need.

:func:`read_blob` is the one place a whole small blob is read from a store's content:
present with the descriptor's size, read with a one-byte overrun so a blob longer than its
descriptor shows (its length then differs from ``desc.size``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cargohold.errors import CargoholdError, NotFoundError, UnsupportedError
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import Index, Manifest, parse_manifest_or_index, select_manifests
from cargohold.store.interfaces import ContentStore

__all__ = [
    "ImageGraph",
    "SkipDesc",
    "by_platform",
    "every_manifest",
    "image_graph",
    "read_blob",
    "read_verified_blob",
    "walk",
]

#: A handler: called on a descriptor, returns the children to walk next.
Handler = Callable[[Descriptor], Sequence[Descriptor]]
#: Reads a manifest or an index: its bytes, or None when it is not there (then skipped).
Fetch = Callable[[Descriptor], "bytes | None"]
#: Picks the entries of an index to walk.
Selector = Callable[[Index], Sequence[Descriptor]]


class SkipDesc(Exception):
    """Raised by a handler: do not walk this descriptor's children (containerd's
    ``ErrSkipDesc``)."""


def walk(handler: Handler, descs: Iterable[Descriptor]) -> None:
    """Call ``handler`` on each of ``descs`` and, depth first, on the children it returns
    (containerd's ``images.Walk``)."""
    for desc in descs:
        try:
            children = handler(desc)
        except SkipDesc:
            continue
        if children:
            walk(handler, children)


def every_manifest(index: Index) -> list[Descriptor]:
    """All entries of an index, in its order (those not in the store are skipped by the
    fetch)."""
    return list(index.manifests)


def by_platform(
    platforms: Sequence[Platform], all_platforms: bool = False, *, what: str = ""
) -> Selector:
    """The entries :func:`cargohold.oci.manifest.select_manifests` picks; NotFoundError
    (naming ``what``, the reference) when none fits."""

    def select(index: Index) -> list[Descriptor]:
        selected = select_manifests(index, platforms, all_platforms)
        if not selected:
            wanted = ", ".join(str(p) for p in platforms) or "any"
            have = ", ".join(str(d.platform) for d in index.manifests if d.platform)
            raise NotFoundError(
                f"{what}: no manifest for platform {wanted} (index has: {have or 'none'})"
            )
        return selected

    return select


@dataclass
class ImageGraph:
    """What :func:`image_graph` found below ``root``."""

    root: Descriptor
    #: The root's index (None when the root is a manifest, or could not be read).
    index: Index | None = None
    #: ``(descriptor, manifest)`` of each manifest walked, in walk order (the root itself
    #: for a single-manifest image).
    manifests: list[tuple[Descriptor, Manifest]] = field(default_factory=list)
    #: Manifests and indexes ``fetch`` did not have (the root first if it was missing).
    missing: list[Descriptor] = field(default_factory=list)

    @property
    def configs(self) -> list[Descriptor]:
        return [m.config for _, m in self.manifests]

    @property
    def layers(self) -> list[Descriptor]:
        return [d for _, m in self.manifests for d in m.layers]

    def blobs(self) -> dict[str, Descriptor]:
        """Every blob walked by digest (root, manifests, configs, layers; each once)."""
        out: dict[str, Descriptor] = {str(self.root.digest): self.root}
        for mdesc, _ in self.manifests:
            out.setdefault(str(mdesc.digest), mdesc)
        for _, m in self.manifests:
            for d in (m.config, *m.layers):
                out.setdefault(str(d.digest), d)
        return out


def image_graph(
    root: Descriptor,
    fetch: Fetch,
    *,
    select: Selector = every_manifest,
    nested: str = "error",
    what: str = "",
    on_error: Callable[[Descriptor, CargoholdError], None] | None = None,
    limit: int = 0,
) -> ImageGraph:
    """Walk ``root`` -> the index entries ``select`` picks -> their manifests.

    ``fetch`` reads each manifest or index (None: not there, noted in ``missing`` and
    skipped).  An index below the root is an UnsupportedError (``nested="error"``, the
    message prefixed by ``what``) or left out (``"skip"``).  A blob that does not parse
    raises, or with ``on_error`` is reported there and skipped.  ``limit``: stop after
    that many manifests (0: all; containerd's ``LimitManifests``)."""
    graph = ImageGraph(root)

    def handle(desc: Descriptor) -> Sequence[Descriptor]:
        if limit and len(graph.manifests) >= limit:
            raise SkipDesc
        data = fetch(desc)
        if data is None:
            graph.missing.append(desc)
            raise SkipDesc
        try:
            parsed = parse_manifest_or_index(data, desc.media_type)
        except CargoholdError as e:
            if on_error is None:
                raise
            on_error(desc, e)
            raise SkipDesc from None
        if isinstance(parsed, Manifest):
            graph.manifests.append((desc, parsed))
            return []  # configs and layers: the caller's leaves
        if desc is not root:
            if nested == "skip":
                raise SkipDesc
            prefix = f"{what}: " if what else ""
            raise UnsupportedError(f"{prefix}nested index {desc.digest} is not supported")
        graph.index = parsed
        return select(parsed)

    walk(handle, [root])
    return graph


def read_blob(content: ContentStore, desc: Descriptor) -> bytes | None:
    """The bytes of ``desc`` if the store holds a blob of its digest and size, else None."""
    try:
        info = content.info(desc.digest)
    except NotFoundError:
        return None
    if info.size != desc.size:
        return None
    with content.reader(desc.digest) as r:
        return r.read(desc.size + 1)


def read_verified_blob(content: ContentStore, desc: Descriptor) -> bytes | None:
    """Like :func:`read_blob`, but None also when reading fails or the bytes read are not
    exactly ``desc`` (wrong length or digest): for callers that trust nothing on disk."""
    try:
        data = read_blob(content, desc)
    except (CargoholdError, OSError):
        return None
    if data is None or len(data) != desc.size:
        return None
    if Digest.from_bytes(data, desc.digest.algorithm) != desc.digest:
        return None
    return data
