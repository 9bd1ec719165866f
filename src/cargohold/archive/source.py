"""Archives as a content source: what fetch, bake and plan ask of a registry, answered from
image archives (``resolve``, ``fetch_manifest``, ``download_blob``).

So an import *is* a fetch from the archive: every blob goes through the store's ingest path
(size and digest verified on commit, atomic, under the fetch's lease) and the records are the
ones fetch writes (CRI's three on containerd, ``--pin``). ``bake --from`` / ``plan --from``
hand the same object to the baker and the catalog in place of the registry client.

Opening an archive (:func:`open_archive`): a directory or a plain tar is read in place; a
gzip / zstd tar is read once as a stream, its blobs *staged* into the content store as they
pass (each verified against the digest its name states, under the caller's lease) or, with
no store (``plan``), only its small members kept.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cargohold.archive.files import (
    CHUNK,
    SMALL,
    DirFiles,
    StreamFiles,
    TarFiles,
    decompressed,
    read_small,
    sniff,
)
from cargohold.archive.formats import Archive, ArchiveImage, read_archive
from cargohold.archive.names import check_unique, image_refs
from cargohold.errors import (
    AlreadyExistsError,
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
)
from cargohold.leasing import attached, leased
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.reference import Reference
from cargohold.store.interfaces import ContentStore, Store
from cargohold.unpack.decompress import skip_bytes

#: Called with the bytes about to be written; raises OutOfSpaceError past the reserve.
SpaceCheck = Callable[[int], None]

_METADATA = ("index.json", "oci-layout", "manifest.json", "repositories")


def space_check(root: Path, reserve: int) -> SpaceCheck:
    """Refuse a write of ``n`` bytes that would leave less than ``reserve`` free on the file
    system of ``root`` (what stops a decompression bomb before the disk fills)."""

    def check(n: int) -> None:
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
        if free - n < reserve:
            raise OutOfSpaceError(
                f"writing {n} bytes would leave {max(0, free - n)} bytes free on {root}, "
                f"less than the reserve of {reserve} bytes"
            )

    return check


def _no_check(n: int) -> None:
    return None


def blob_digest(name: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` member name states, else None."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        try:
            return Digest.parse(f"{parts[1]}:{parts[2]}")
        except InvalidInputError:
            return None
    return None


def _copy(f: IO[bytes], size: int, write: Callable[[bytes], object]) -> None:
    left = size
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise InvalidInputError(f"member ends {left} bytes early (truncated archive)")
        write(chunk)
        left -= len(chunk)


def store_sink(content: ContentStore, check: SpaceCheck) -> Callable[[str, IO[bytes], int], Digest]:
    """Stage a streamed member into the content store: verified against the digest its name
    states (legacy docker files: committed under the digest of their bytes)."""
    from cargohold.pull.fetch import ingest_ref

    def sink(name: str, f: IO[bytes], size: int) -> Digest:
        expected = blob_digest(name)
        check(size)
        ref = (ingest_ref(Descriptor("", expected, size)) if expected is not None
               else f"import-{uuid.uuid4().hex}")
        try:
            w = content.writer(ref, total=size, expected=expected)
        except AlreadyExistsError:
            assert expected is not None
            return expected
        with w:
            w.truncate(0)
            _copy(f, size, w.write)
            got = expected or w.digest()
            try:
                w.commit(size, got)
            except AlreadyExistsError:
                pass
            except DigestMismatchError as e:
                raise DigestMismatchError(f"{name}: {e.message}") from None
        return got

    return sink


def hash_sink(name: str, f: IO[bytes], size: int) -> Digest:
    """Only learn a streamed member's digest (``plan``): from its name, else by hashing."""
    stated = blob_digest(name)
    if stated is not None:
        return stated  # tarfile skips the unread data
    import hashlib

    h = hashlib.sha256()
    _copy(f, size, h.update)
    return Digest("sha256", h.hexdigest())


def _metadata(name: str, size: int) -> bool:
    return size <= SMALL and not name.startswith("blobs/") and (
        name in _METADATA or name.endswith(".json"))


def _route_staging(name: str, size: int) -> str:
    """Metadata in memory; legacy ``<id>/json`` and ``VERSION`` files skipped; the rest
    (blobs, layer tars) staged."""
    if _metadata(name, size):
        return "keep"
    if name.rsplit("/", 1)[-1] in ("json", "VERSION"):
        return "skip"
    return "sink"


def _route_scanning(name: str, size: int) -> str:
    if size <= SMALL and name.startswith("blobs/"):
        return "keep"
    return _route_staging(name, size)


@contextmanager
def open_archive(
    path: Path, *, content: ContentStore | None = None, check: SpaceCheck = _no_check
) -> Iterator[Archive]:
    """Open one archive (directory, tar, tar.gz, tar.zst). With ``content``, a compressed
    tar's blobs are staged into it (the caller holds a lease); without, only read."""
    kind = sniff(path)
    if kind == "dir":
        yield read_archive(DirFiles(path))
        return
    if kind == "tar":
        tf = TarFiles(path)
        try:
            yield read_archive(tf)
        finally:
            tf.close()
        return
    sf = StreamFiles(str(path), reopen=content.reader if content is not None else None)
    with decompressed(path, kind) as stream:
        if content is not None:
            sf.scan(stream, _route_staging, store_sink(content, check))
        else:
            sf.scan(stream, _route_scanning, hash_sink)
    yield read_archive(sf)


@dataclass(frozen=True)
class Named:
    ref: Reference
    archive: Archive
    image: ArchiveImage


class ArchiveSource:
    """Archives answering as a registry. ``fallback``: a registry client for references the
    archives do not hold (``--allow-network``); without one they are NotFoundError.
    ``strict_names``: an image without a usable name is an error (``import``); else it is
    only reachable by digest (``bake --from``)."""

    def __init__(
        self,
        archives: Sequence[Archive],
        *,
        base_name: Reference | None = None,
        check: SpaceCheck = _no_check,
        fallback: Any | None = None,
        strict_names: bool = True,
    ) -> None:
        self.archives = list(archives)
        self.check = check
        self.fallback = fallback
        self.named: list[Named] = []
        for a in self.archives:
            for img in a.images:
                try:
                    refs = image_refs(a, img, base_name)
                except InvalidInputError:
                    if strict_names:
                        raise
                    continue  # reachable by digest only
                self.named += [Named(ref, a, img) for ref in refs]
        check_unique([(n.ref, n.archive, n.image) for n in self.named])
        self._by_name = {str(n.ref): n for n in self.named}
        self._remote: set[str] = set()
        self._lock = threading.Lock()
        self.stack: ExitStack | None = None

    def close(self) -> None:
        """Close the archives (and the fallback registry client)."""
        if self.stack is not None:
            self.stack.close()
            self.stack = None
        close = getattr(self.fallback, "close", None)
        if callable(close):
            close()

    @property
    def where(self) -> str:
        return ", ".join(a.where for a in self.archives)

    def refs(self) -> list[Reference]:
        """Every name of every image, in archive order (what ``import`` records)."""
        return [n.ref for n in self.named]

    # ------------------------------------------------------------ registry protocol

    def abort(self) -> None:
        """Nothing in flight to cut: archives are read in the calling thread."""

    def resolve(self, ref: Reference) -> Descriptor:
        desc = self._find(ref)
        if desc is not None:
            return desc
        if self.fallback is not None:
            with self._lock:
                self._remote.add(str(ref))
            d: Descriptor = self.fallback.resolve(ref)
            return d
        raise NotFoundError(
            f"{ref}: not in the archive(s) {self.where}",
            hint="add the archive that holds it (--from), or pass --allow-network",
        )

    def _find(self, ref: Reference) -> Descriptor | None:
        n = self._by_name.get(str(ref))
        if n is not None:
            return n.image.root
        if ref.digest is None:
            return None
        for a in self.archives:
            for img in a.images:
                if img.root.digest == ref.digest:
                    return img.root
        for a in self.archives:  # a digest inside an index: read its media type
            name = a.blob_file(ref.digest)
            if name is not None and a.files.size(name) <= SMALL:
                return _sniff_manifest(a, name, ref.digest)
        return None

    def _locate(self, digest: Digest) -> Archive | None:
        for a in self.archives:
            if a.has_blob(digest):
                return a
        return None

    def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        a = self._locate(desc.digest)
        if a is None:
            if self._remote_ok(ref):
                data: bytes = self.fallback.fetch_manifest(ref, desc)  # type: ignore[union-attr]
                return data
            raise NotFoundError(f"{self.where}: the archive lacks manifest {desc.digest} of {ref}")
        data = a.built.get(str(desc.digest)) or _read_blob(a, desc)
        got = Digest.from_bytes(data, desc.digest.algorithm)
        if len(data) != desc.size or got != desc.digest:
            raise DigestMismatchError(
                f"{a.where}: manifest {desc.digest} has {len(data)} bytes and digest {got}, "
                f"its descriptor says {desc.size} bytes"
            )
        return data

    def download_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        write: Callable[[Any], object],
        *,
        offset: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        a = self._locate(desc.digest)
        if a is None:
            if self._remote_ok(ref):
                self.fallback.download_blob(  # type: ignore[union-attr]
                    ref, desc, write, offset=offset, on_progress=on_progress)
                return
            raise NotFoundError(
                f"{self.where}: the archive lacks {mediatypes.kind(desc.media_type)} "
                f"{desc.digest} of {ref}",
                hint="the archive is incomplete: export it again",
            )
        built = a.built.get(str(desc.digest))
        if built is not None:
            write(built[offset:])
            return
        name = a.blob_file(desc.digest)
        assert name is not None
        size = a.files.size(name)
        if size != desc.size:
            raise DigestMismatchError(
                f"{a.where}: {name} is {size} bytes, its descriptor says {desc.size}"
            )
        self.check(desc.size - offset)
        with a.files.open(name) as f:
            if offset:
                skip_bytes(f, offset)
            left = desc.size - offset
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise InvalidInputError(f"{a.where}: {name} ends early (truncated archive)")
                write(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
                left -= len(chunk)

    def _remote_ok(self, ref: Reference) -> bool:
        with self._lock:
            return self.fallback is not None and str(ref) in self._remote


def _read_blob(a: Archive, desc: Descriptor) -> bytes:
    name = a.blob_file(desc.digest)
    assert name is not None
    return read_small(a.files, name)


def _sniff_manifest(a: Archive, name: str, digest: Digest) -> Descriptor | None:
    import json

    data = read_small(a.files, name)
    try:
        mt = json.loads(data).get("mediaType")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    if isinstance(mt, str) and (mediatypes.is_manifest(mt) or mediatypes.is_index(mt)):
        return Descriptor(mt, digest, len(data))
    return None


def open_source(
    paths: Sequence[Path],
    *,
    store: Store | None = None,
    check: SpaceCheck = _no_check,
    base_name: Reference | None = None,
    fallback: Any | None = None,
    strict_names: bool = True,
) -> ArchiveSource:
    """Open several archives as one source; ``close()`` it. With ``store`` (content +
    leases), compressed tars are staged into its content store under a lease of their own,
    which ``close()`` removes (by then the records reference what was imported)."""
    stack = ExitStack()
    try:
        content = None
        lease: str | None = None
        if store is not None and any(p.is_file() and sniff(p) in ("gzip", "zstd")
                                     for p in paths):
            content = store.content
            lease = stack.enter_context(_staging_lease(store))
        with attached(lease) if lease is not None else nullcontext():
            archives = [
                stack.enter_context(open_archive(p, content=content, check=check))
                for p in paths
            ]
        source = ArchiveSource(archives, base_name=base_name, check=check, fallback=fallback,
                               strict_names=strict_names)
    except BaseException:
        stack.close()
        raise
    source.stack = stack
    return source


def _staging_lease(store: Store) -> AbstractContextManager[str]:
    """The staging lease: cargohold's own (owner-labelled, released however the import
    ends, a killed import's released by the next command)."""
    return leased(store, "import", attach=False)
