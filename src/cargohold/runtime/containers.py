"""Creating a container on the embedded store from an image: the image is unpacked first
when it was only fetched (the lazy unpack a first start pays), then the container is
recorded and its active snapshot ``containers/NAME`` prepared on the image's top layer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from cargohold.errors import AlreadyExistsError, ConflictError, NotFoundError
from cargohold.labels import LABEL_CONTAINER, LABEL_GC_ROOT
from cargohold.oci.descriptor import Platform
from cargohold.pull.pipeline import unpack_lease
from cargohold.pull.records import lookup_name
from cargohold.store.embedded.containers import (
    Container,
    check_name,
    snapshot_key,
)
from cargohold.store.embedded.metadata import now, ts
from cargohold.store.open import LocalStore
from cargohold.unpack.image import Unpacker, UnpackResult
from cargohold.unpack.resolve import ResolvedImage

__all__ = ["Created", "create_container"]


@dataclass
class Created:
    container: Container
    image: ResolvedImage
    unpack: UnpackResult


def create_container(store: LocalStore, ref: str, name: str, platform: Platform | None,
                     unpacker: Callable[[], AbstractContextManager[Unpacker]]) -> Created:
    """Unpack the image ``ref`` names if needed (with the Unpacker ``unpacker()`` opens,
    once the name is known to be free), record container ``name``, prepare its snapshot."""
    check_name(name)
    image_name = lookup_name(store.images, ref)
    image = store.images.get(image_name)
    try:
        store.containers.get(name)
    except NotFoundError:
        pass
    else:
        raise ConflictError(
            f"container {name!r} already exists",
            hint="choose another name, or remove it with `cargohold containers rm`",
        )
    with unpacker() as u, unpack_lease(store):
        resolved = u.resolve(image.target, platform)
        result = u.unpack(image.target, platform)
    sn = store.snapshots
    key = snapshot_key(name)
    rec = store.containers.create(Container(
        name=name,
        image=image_name,
        image_digest=str(image.target.digest),
        snapshotter=sn.name,
        snapshot_key=key,
        platform=result.platform,
    ))
    try:
        sn.prepare(key, result.chain_id,
                   labels={LABEL_GC_ROOT: ts(now()), LABEL_CONTAINER: name})
    except AlreadyExistsError:
        store.containers.delete(name)
        raise ConflictError(
            f"snapshot {key!r} exists without a container record",
            hint=f"remove it with `cargohold containers rm {name}`",
        ) from None
    except BaseException:
        store.containers.delete(name)
        raise
    return Created(rec, resolved, result)
