"""ImageStore over containerd's images service (``containerd.services.images.v1``).

containerd 1.6's image target descriptor has media type, digest, size and annotations only.
A target's ``platform``, ``urls`` and ``artifact_type`` are kept, as compact JSON, in the
image label :data:`cargohold.labels.LABEL_TARGET_EXTRA` (present only when one of them is set) and folded back
into the target on reading; the label itself is never shown in ``Image.labels``. Updates
replace ``target`` and ``labels`` as units (field paths ``target`` and ``labels``);
``created_at``/``updated_at`` are containerd's.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from typing import Any

from cargohold.errors import InvalidInputError, NotFoundError
from cargohold.labels import LABEL_TARGET_EXTRA
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.store.containerd.client import ContainerdClient, from_timestamp
from cargohold.store.interfaces import Image


def _extra_json(t: Descriptor) -> str | None:
    extra = t.extra_json()
    return json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else None


def _parse_extra(raw: str | None) -> tuple[Platform | None, tuple[str, ...], str]:
    if not raw:
        return None, (), ""
    try:
        obj = json.loads(raw)
        plat = obj.get("platform")
        platform = Platform.from_json(plat, LABEL_TARGET_EXTRA) if plat is not None else None
        urls = tuple(str(u) for u in obj.get("urls") or ())
        return platform, urls, str(obj.get("artifactType") or "")
    except (ValueError, TypeError, AttributeError, InvalidInputError):
        return None, (), ""  # written by someone else: ignore rather than fail a listing


class ContainerdImageStore:
    """The ImageStore protocol over a :class:`ContainerdClient`'s namespace."""

    def __init__(self, client: ContainerdClient) -> None:
        self.client = client
        self._pb: Any = client.api.images
        self._stub: Any = client.images_stub

    def _to_pb(self, image: Image) -> Any:
        t = image.target
        target = self.client.api.types_descriptor.Descriptor(
            media_type=t.media_type,
            digest=str(t.digest),
            size=t.size,
            annotations=dict(t.annotations),
        )
        labels = {k: v for k, v in image.labels.items() if k != LABEL_TARGET_EXTRA}
        extra = _extra_json(t)
        if extra is not None:
            labels[LABEL_TARGET_EXTRA] = extra
        return self._pb.Image(name=image.name, labels=labels, target=target)

    @staticmethod
    def _from_pb(pb: Any) -> Image:
        t = pb.target
        labels = dict(pb.labels)
        platform, urls, artifact_type = _parse_extra(labels.pop(LABEL_TARGET_EXTRA, None))
        target = Descriptor(
            media_type=str(t.media_type),
            digest=Digest.parse(t.digest),
            size=int(t.size),
            annotations=dict(t.annotations),
            platform=platform,
            urls=urls,
            artifact_type=artifact_type,
        )
        return Image(
            name=str(pb.name),
            target=target,
            labels=labels,
            created_at=from_timestamp(pb.created_at),
            updated_at=from_timestamp(pb.updated_at),
        )

    def get(self, name: str) -> Image:
        resp = self.client.call(
            self._stub.Get, self._pb.GetImageRequest(name=name), what=f"image {name}"
        )
        if not resp.HasField("image"):
            raise NotFoundError(f"image {name}: not found")
        return self._from_pb(resp.image)

    def list(self, *, filters: Sequence[str] = ()) -> builtins.list[Image]:
        """All images (containerd filter syntax, e.g. ``name~=^docker.io/``)."""
        resp = self.client.call(
            self._stub.List, self._pb.ListImagesRequest(filters=list(filters)), what="list images"
        )
        return [self._from_pb(pb) for pb in resp.images]

    def create(self, image: Image) -> Image:
        """Raises AlreadyExistsError (a ConflictError) if the name exists."""
        resp = self.client.call(
            self._stub.Create,
            self._pb.CreateImageRequest(image=self._to_pb(image)),
            what=f"create image {image.name}",
        )
        return self._from_pb(resp.image)

    def update(self, image: Image) -> Image:
        mask = self.client.api.field_mask_pb2.FieldMask(paths=["target", "labels"])
        resp = self.client.call(
            self._stub.Update,
            self._pb.UpdateImageRequest(image=self._to_pb(image), update_mask=mask),
            what=f"update image {image.name}",
        )
        return self._from_pb(resp.image)

    def delete(self, name: str, *, sync: bool = False) -> None:
        """``sync`` makes containerd run its garbage collection before answering."""
        self.client.call(
            self._stub.Delete,
            self._pb.DeleteImageRequest(name=name, sync=sync),
            what=f"delete image {name}",
        )
