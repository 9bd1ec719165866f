"""Telling a layer blob damaged in the store from a layer broken at its source.

A layer blob was verified (size and digest) when it was committed, so when its compressed
bytes no longer decompress while it is unpacked, either the file changed on disk since (an
integrity error: ``verify --repair`` fetches it again) or the image's layer was broken when
it was pushed (its digest matches: fetching again cannot help). :func:`stored_blob_check`
re-hashes the blob to say which.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cargohold.errors import DigestMismatchError, InvalidInputError
from cargohold.images.content import check_blob
from cargohold.oci.descriptor import Descriptor
from cargohold.store.interfaces import ContentStore
from cargohold.unpack.decompress import CorruptLayerError

REPAIR_HINT = ("run `cargohold verify --repair` to delete the damaged blob and fetch it "
               "again, then rerun this command")


@contextmanager
def stored_blob_check(content: ContentStore, desc: Descriptor) -> Iterator[None]:
    """Around unpacking the stored blob ``desc``: a corrupt or truncated stream becomes a
    :class:`DigestMismatchError` (exit 6, hint: ``verify --repair``) when the blob no longer
    hashes to its digest, and stays an input error naming the layer when it does."""
    try:
        yield
    except CorruptLayerError as e:
        bad = check_blob(content, desc)
        if bad is not None:
            raise DigestMismatchError(
                f"layer {desc.digest} is damaged in the store ({bad[1]}): {e.message}",
                hint=REPAIR_HINT,
            ) from None
        raise InvalidInputError(
            f"layer {desc.digest} is broken at its source (its digest matches): {e.message}",
            hint="the image was pushed with a broken layer: push it again, then fetch it",
        ) from None
