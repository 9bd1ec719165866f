"""Reading small image blobs (manifests, indexes, configs) from a content store.

The one place a whole small blob is read from a store's content: present with the
descriptor's size, read with a one-byte overrun so a blob longer than its descriptor shows
(its length then differs from ``desc.size``). A first step of issue 10's "one walk of the
image graph"; the walk itself is still written in each caller.
"""

from __future__ import annotations

from cargohold.errors import CargoholdError, NotFoundError
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import ContentStore


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
