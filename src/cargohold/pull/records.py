"""Image records as commands name them: the record a user's text means (:func:`lookup_name`)
and which records a fetch writes for the store kind (:func:`record_policy`)."""

from __future__ import annotations

from cargohold.errors import NotFoundError
from cargohold.oci.reference import parse_reference
from cargohold.pull.fetch import RecordPolicy, image_name
from cargohold.store.interfaces import ImageStore

__all__ = ["lookup_name", "record_policy"]


def lookup_name(images: ImageStore, text: str) -> str:
    """An image record name from what the user typed (normalised ref, or the exact name)."""
    try:
        images.get(text)
        return text
    except NotFoundError:
        pass
    name = image_name(parse_reference(text))
    images.get(name)  # NotFoundError naming the normalised ref
    return name


def record_policy(store_kind: str, cri: bool | None = None, pin: bool = False) -> RecordPolicy:
    """CRI records default on for containerd (kubelet's view), off for the embedded store."""
    if cri is None:
        cri = store_kind == "containerd"
    return RecordPolicy(cri=cri or pin, pin=pin)
