"""Which manifest of an image to unpack, and whether (and how big) it is unpacked.

:func:`resolve_image` picks the manifest of an image target for a platform among those in the
content store and reads its config and chain IDs (:class:`ResolvedImage`), which
:class:`~cargohold.unpack.image.Unpacker` then unpacks; :func:`resolve_present` lists every
platform that could be.  :func:`is_committed`, :func:`highest_committed`, :func:`is_unpacked`
and :func:`unpacked_size` ask the snapshotter about the chains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cargohold.errors import CargoholdError, NotFoundError, UnsupportedError
from cargohold.images.content import read_blob
from cargohold.images.walk import image_graph
from cargohold.oci import mediatypes
from cargohold.oci.chainid import chain_ids
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import (
    ImageConfig,
    Index,
    Manifest,
    check_config,
    is_attestation,
    parse_config,
)
from cargohold.oci.platform import host_platform, matches, normalize, rank
from cargohold.store.interfaces import KIND_COMMITTED, ContentStore, Image, Snapshotter


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's manifest of an image, with its config and chain IDs."""

    target: Descriptor
    manifest_desc: Descriptor
    manifest: Manifest
    config: ImageConfig
    diff_ids: tuple[Digest, ...]
    chain_ids: tuple[str, ...]

    @property
    def config_desc(self) -> Descriptor:
        return self.manifest.config

    @property
    def layers(self) -> list[Descriptor]:
        return self.manifest.layers

    @property
    def platform(self) -> Platform:
        c = self.config
        return Platform(c.os, c.architecture, c.variant)

    @property
    def top_chain(self) -> str:
        return self.chain_ids[-1] if self.chain_ids else ""


def _must_read(content: ContentStore, desc: Descriptor, what: str) -> bytes:
    data = read_blob(content, desc)
    if data is None:
        raise NotFoundError(
            f"{what} {desc.digest} is not in the content store",
            hint="fetch the image first (cargohold fetch REF), for this platform",
        )
    return data


def _resolve_manifest(
    content: ContentStore, target: Descriptor, mdesc: Descriptor, parsed: Manifest
) -> ResolvedImage:
    cfg = parse_config(_must_read(content, parsed.config, "config"))
    check_config(parsed, cfg)
    for layer in parsed.layers:
        if not mediatypes.is_layer(layer.media_type):
            raise UnsupportedError(
                f"manifest {mdesc.digest}: {layer.media_type} is not a layer media type"
            )
    ids = tuple(cfg.diff_ids)
    return ResolvedImage(
        target=target,
        manifest_desc=mdesc,
        manifest=parsed,
        config=cfg,
        diff_ids=ids,
        chain_ids=tuple(str(c) for c in chain_ids(ids)),
    )


def _candidates(index: Index) -> list[Descriptor]:
    return [
        d
        for d in index.manifests
        if mediatypes.is_manifest(d.media_type) and not is_attestation(d)
    ]


def resolve_image(
    content: ContentStore, target: Descriptor, platform: Platform | None = None
) -> ResolvedImage:
    """The manifest of ``target`` to unpack for ``platform``.

    An index: the best match for ``platform`` (default: this host's) among its manifests
    *present in the store* (containerd's ordering, :func:`cargohold.oci.platform.rank`).
    A single manifest: itself; when ``platform`` is given, its config must match it.
    NotFoundError when nothing fits or a blob is missing.
    """
    want = platform or host_platform()

    def ranked(index: Index) -> list[Descriptor]:
        cands = _candidates(index)
        return [cands[i] for i in rank(want, [d.platform for d in cands])]

    def fetch(d: Descriptor) -> bytes | None:
        if d is target:
            return _must_read(content, target, mediatypes.kind(target.media_type))
        return read_blob(content, d)

    # The best-ranked manifest present in the store (the walk stops at the first).
    graph = image_graph(target, fetch, select=ranked, limit=1)
    if graph.index is None:
        ((_, m),) = graph.manifests
        img = _resolve_manifest(content, target, target, m)
        if platform is not None and not matches(platform, img.platform):
            raise NotFoundError(
                f"image {target.digest} is for {img.platform}, not {normalize(platform)}"
            )
        return img
    if graph.manifests:
        ((mdesc, m),) = graph.manifests
        return _resolve_manifest(content, target, mdesc, m)
    cands = _candidates(graph.index)
    have = ", ".join(str(d.platform) for d in cands if d.platform) or "none"
    fetched = ", ".join(
        str(d.platform) for d in cands if d.platform and read_blob(content, d) is not None
    )
    raise NotFoundError(
        f"index {target.digest}: no manifest for {normalize(want)} in the store "
        f"(index has: {have}; fetched: {fetched or 'none'})",
        hint=f"fetch it with --platform {normalize(want)}, or unpack a fetched platform",
    )


def resolve_present(content: ContentStore, target: Descriptor) -> list[ResolvedImage]:
    """Every platform of ``target`` whose manifest, config and layers are in the store
    (what can be unpacked); broken or incomplete ones are left out."""
    graph = image_graph(target, lambda d: read_blob(content, d), select=_candidates,
                        nested="skip", on_error=lambda d, e: None)  # broken: left out
    out: list[ResolvedImage] = []
    for mdesc, m in graph.manifests:
        try:
            out.append(_resolve_manifest(content, target, mdesc, m))
        except CargoholdError:
            continue
    return out


def _target(image: Image | Descriptor) -> Descriptor:
    return image.target if isinstance(image, Image) else image


def is_committed(snapshotter: Snapshotter, name: str) -> bool:
    """Whether ``name`` (a chain ID) is a committed snapshot."""
    try:
        return snapshotter.stat(name).kind == KIND_COMMITTED
    except NotFoundError:
        return False


def highest_committed(snapshotter: Snapshotter, chain_ids: Sequence[str]) -> int:
    """The index of the highest committed chain (-1: none): everything below it is committed
    too (a parent cannot be removed while it has children)."""
    for i in range(len(chain_ids) - 1, -1, -1):
        if is_committed(snapshotter, chain_ids[i]):
            return i
    return -1


def is_unpacked(
    content: ContentStore,
    snapshotter: Snapshotter,
    image: Image | Descriptor,
    platform: Platform | None = None,
) -> bool:
    """Whether the image's top chain is committed: for ``platform``, or (None) for any
    platform of the image present in the store."""
    target = _target(image)
    if platform is not None:
        try:
            img = resolve_image(content, target, platform)
        except CargoholdError:
            return False
        return bool(img.chain_ids) and is_committed(snapshotter, img.top_chain)
    return any(
        img.chain_ids and is_committed(snapshotter, img.top_chain)
        for img in resolve_present(content, target)
    )


def unpacked_size(
    content: ContentStore,
    snapshotter: Snapshotter,
    image: Image | Descriptor,
    platform: Platform | None = None,
) -> int:
    """Disk use of the image's unpacked snapshots (each chain counted once; for overlay a
    layer's own diff, for flat copies the whole tree); 0 when not unpacked."""
    target = _target(image)
    if platform is not None:
        try:
            imgs = [resolve_image(content, target, platform)]
        except CargoholdError:
            return 0
    else:
        imgs = resolve_present(content, target)
    chains: set[str] = set()
    for img in imgs:
        if img.chain_ids and is_committed(snapshotter, img.top_chain):
            chains.update(img.chain_ids)
    total = 0
    for c in chains:
        try:
            total += snapshotter.usage(c).size
        except NotFoundError:
            continue
    return total
