"""Applier over containerd's diff service (``containerd.services.diff.v1``, ``Apply``).

containerd applies a layer itself: it reads the blob from *its* content store by digest,
decompresses it (gzip, zstd or none, per media type), unpacks it onto the mounts (which it
mounts) and reports the uncompressed descriptor -- whose digest is the diff_id. The
``reader`` argument of :meth:`ContainerdApplier.apply` is therefore only used when the blob
is not in containerd's content store: it is ingested from the reader first (under the
active lease, if any), then applied.
"""

from __future__ import annotations

import builtins
from typing import Any, BinaryIO

from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
)
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.containerd.client import ContainerdClient
from cargohold.store.containerd.content import CHUNK, ContainerdContentStore
from cargohold.store.containerd.snapshots import mounts_to_pb
from cargohold.store.interfaces import Mount
from cargohold.unpack.decompress import skip_bytes


class ContainerdApplier:
    """The Applier protocol over containerd's diff service (its default differ)."""

    def __init__(self, client: ContainerdClient, content: ContainerdContentStore) -> None:
        self.client = client
        self.content = content
        self._pb: Any = client.api.diff
        self._stub: Any = client.diff_stub

    def _request(self, desc: Descriptor, mounts: builtins.list[Mount]) -> Any:
        d = self.client.api.types_descriptor.Descriptor(
            media_type=desc.media_type,
            digest=str(desc.digest),
            size=desc.size,
            annotations=dict(desc.annotations),
        )
        return self._pb.ApplyRequest(diff=d, mounts=mounts_to_pb(self.client, mounts))

    def _call(self, desc: Descriptor, mounts: builtins.list[Mount]) -> Any:
        what = f"apply layer {desc.digest}"
        try:
            return self.client.call(self._stub.Apply, self._request(desc, mounts), what=what)
        except CargoholdError as e:
            if type(e) is CargoholdError:  # UNKNOWN / INTERNAL: containerd failed on the layer
                raise InvalidInputError(
                    e.message,
                    hint="the layer may be broken, or containerd could not mount the "
                    "snapshot: see containerd's log",
                ) from None
            raise

    def _ingest(self, desc: Descriptor, reader: BinaryIO) -> None:
        try:
            with self.content.writer(
                f"apply-{desc.digest.algorithm}-{desc.digest.hex}",
                total=desc.size,
                expected=desc.digest,
            ) as w:
                skip_bytes(reader, w.offset)  # resumed, or a blob another namespace holds
                while chunk := reader.read(CHUNK):
                    w.write(chunk)
                w.commit(desc.size, desc.digest)
        except AlreadyExistsError:
            pass

    def apply(
        self,
        desc: Descriptor,
        mounts: builtins.list[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> Descriptor:
        try:
            resp = self._call(desc, mounts)
        except NotFoundError:
            try:
                self.content.info(desc.digest)
            except NotFoundError:
                self._ingest(desc, reader)
                resp = self._call(desc, mounts)
            else:
                raise
        a = resp.applied
        applied = Descriptor(
            media_type=str(a.media_type),
            digest=Digest.parse(a.digest),
            size=int(a.size),
            annotations=dict(a.annotations),
        )
        if diff_id is not None and applied.digest != diff_id:
            raise DigestMismatchError(
                f"layer {desc.digest} unpacked to diff_id {applied.digest}, expected {diff_id}"
            )
        return applied
