"""Push an image (or index) to a registry: blobs in parallel, then manifests, then the root.

Generic over where the content lives: anything with a root descriptor, its blobs in push
order (children before parents) and a way to open a blob will do — a freshly built image,
a store's content when mirroring or exporting.
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import BinaryIO, Protocol

from cargohold.errors import DigestMismatchError, InvalidInputError
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import MAX_MANIFEST_SIZE
from cargohold.oci.reference import Reference
from cargohold.registry.client import DEFAULT_CHUNK_SIZE, RegistryClient


class PushableImage(Protocol):
    """What :func:`push_image` needs of an image."""

    @property
    def root(self) -> Descriptor: ...

    def blobs_in_push_order(self) -> list[Descriptor]: ...

    def open(self, digest: Digest) -> BinaryIO: ...


def _is_manifest_like(media_type: str) -> bool:
    return mt.is_index(media_type) or mt.is_manifest(media_type) or media_type in mt.SCHEMA1


def _read_manifest(image: PushableImage, desc: Descriptor) -> bytes:
    with image.open(desc.digest) as f:
        data = f.read(MAX_MANIFEST_SIZE + 1)
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidInputError(
            f"manifest {desc.digest}: larger than the {MAX_MANIFEST_SIZE} byte limit"
        )
    got = Digest.from_bytes(data, desc.digest.algorithm)
    if got != desc.digest:
        raise DigestMismatchError(f"manifest {desc.digest}: the local content has digest {got}")
    return data


def push_image(
    client: RegistryClient,
    ref: Reference,
    image: PushableImage,
    *,
    chunked: bool = False,
    jobs: int = 4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Descriptor:
    """Push ``image`` to ``ref``'s repository; the root goes by ``ref``'s tag (else by
    digest). Returns the root's descriptor as pushed.

    Blobs that are not manifests (layers, configs, anything else) are uploaded by ``jobs``
    threads (existing ones are skipped); then manifests by digest, in the given order;
    then the root. If ``ref`` has a digest, it must be the root's.
    """
    root = image.root
    if ref.digest is not None and ref.digest != root.digest:
        raise InvalidInputError(f"{ref}: the image's digest is {root.digest}")
    blobs = image.blobs_in_push_order()
    plain = [d for d in blobs if not _is_manifest_like(d.media_type) and d.digest != root.digest]
    manifests = [d for d in blobs if _is_manifest_like(d.media_type) and d.digest != root.digest]

    def push_one(desc: Descriptor) -> bool:
        return client.push_blob(
            ref, desc, lambda: image.open(desc.digest), chunked=chunked, chunk_size=chunk_size
        )

    if plain:
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(plain)))) as pool:
            futures = [pool.submit(push_one, d) for d in plain]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                failed.result()  # raises the first failure
            for f in futures:
                f.result()

    for desc in manifests:
        data = _read_manifest(image, desc)
        client.push_manifest(ref, desc.media_type, data, tag=None)

    data = _read_manifest(image, root)
    pushed = client.push_manifest(ref, root.media_type, data, tag=ref.tag)
    if pushed.digest != root.digest:
        raise DigestMismatchError(f"{ref}: pushed as {pushed.digest}, expected {root.digest}")
    return Descriptor(root.media_type, root.digest, len(data), dict(root.annotations), root.platform)
