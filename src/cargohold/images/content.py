"""What an image record references in a content store, and whether it is all there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cargohold.errors import CargoholdError, NotFoundError
from cargohold.images.walk import image_graph, read_blob
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import ImageConfig, Manifest, parse_config
from cargohold.store.interfaces import ContentStore

__all__ = ["ImageContents", "check_blob", "image_contents", "present_configs", "read_blob"]

#: Read size when re-hashing a stored blob.
_HASH_CHUNK = 1 << 20


@dataclass
class ImageContents:
    """Blobs reachable from an image target that this store holds (or misses)."""

    blobs: list[tuple[Descriptor, bool]] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    manifests: list[tuple[Descriptor, Manifest]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """At least one platform's manifest is present with its config and every layer."""
        return bool(self.manifests) and not self.problems

    @property
    def present_bytes(self) -> int:
        return sum(d.size for d, present in self.blobs if present)


def image_contents(content: ContentStore, target: Descriptor) -> ImageContents:
    """Walk index -> manifests present -> config + layers; note what is missing.

    An index's manifests that are not in the store are not problems (other platforms are
    usually not fetched); a present manifest's missing config or layer is.
    """
    out = ImageContents()
    seen: set[str] = set()

    def add(desc: Descriptor, present: bool) -> None:
        if str(desc.digest) not in seen:
            seen.add(str(desc.digest))
            out.blobs.append((desc, present))

    def fetch(desc: Descriptor) -> bytes | None:
        data = read_blob(content, desc)
        if desc is target:
            add(target, data is not None)
            if data is None:
                out.problems.append(f"missing {mediatypes.kind(target.media_type)} {target.digest}")
        elif data is not None:
            add(desc, True)  # an index's entries not in the store: platforms not fetched
        return data

    def broken(desc: Descriptor, e: CargoholdError) -> None:
        out.problems.append(f"{desc.digest}: {e}")

    graph = image_graph(target, fetch, nested="skip", on_error=broken)
    for mdesc, m in graph.manifests:
        out.manifests.append((mdesc, m))
        cfg_data = read_blob(content, m.config)
        add(m.config, cfg_data is not None)
        if cfg_data is None:
            out.problems.append(f"missing config {m.config.digest}")
        elif mdesc.platform is not None:
            out.platforms.append(str(mdesc.platform))
        else:
            try:
                cfg = parse_config(cfg_data)
                plat = f"{cfg.os}/{cfg.architecture}" + (f"/{cfg.variant}" if cfg.variant else "")
                out.platforms.append(plat)
            except CargoholdError as e:
                out.problems.append(f"{m.config.digest}: {e}")
        for layer in m.layers:
            present = _present(content, layer)
            add(layer, present)
            if not present and mediatypes.is_distributable(layer.media_type):
                out.problems.append(f"missing layer {layer.digest}")
    out.platforms = sorted(set(out.platforms))
    return out


def _present(content: ContentStore, desc: Descriptor) -> bool:
    try:
        return content.info(desc.digest).size == desc.size
    except NotFoundError:
        return False


def present_configs(
    content: ContentStore,
    contents: ImageContents,
    read: Callable[[ContentStore, Descriptor], bytes | None] = read_blob,
) -> Iterator[tuple[Manifest, ImageConfig]]:
    """Each present manifest of ``contents`` with its parsed config; manifests whose config
    is missing or does not parse are left out. ``read``: how a config blob is read (e.g. a
    reader that also verifies its digest)."""
    for _, m in contents.manifests:
        data = read(content, m.config)
        if data is None:
            continue
        try:
            yield m, parse_config(data)
        except CargoholdError:
            continue


def check_blob(
    content: ContentStore, desc: Descriptor, *, rehash: bool = True
) -> tuple[str, str] | None:
    """Whether the stored blob ``desc`` is intact: None, else ``(kind, message)`` with kind
    ``missing``, ``truncated`` or ``corrupt``. ``rehash`` False: its size only."""
    what = mediatypes.kind(desc.media_type)
    try:
        info = content.info(desc.digest)
    except NotFoundError:
        return "missing", f"{what} {desc.digest} is missing"
    if info.size < desc.size:
        return "truncated", f"{what} {desc.digest} is truncated ({info.size} of {desc.size} bytes)"
    if info.size > desc.size:
        return "corrupt", f"{what} {desc.digest} has {info.size} bytes, expected {desc.size}"
    if not rehash:
        return None
    h = desc.digest.hasher()
    n = 0
    try:
        with content.reader(desc.digest) as r:
            while chunk := r.read(_HASH_CHUNK):
                h.update(chunk)
                n += len(chunk)
    except NotFoundError:
        return "missing", f"{what} {desc.digest} is missing"
    except OSError as e:
        return "corrupt", f"{what} {desc.digest} cannot be read: {e}"
    if n < desc.size:
        return "truncated", f"{what} {desc.digest} is truncated ({n} of {desc.size} bytes)"
    got = Digest(desc.digest.algorithm, h.hexdigest())
    if got != desc.digest:
        return "corrupt", f"{what} {desc.digest} is corrupt: its bytes hash to {got}"
    return None

