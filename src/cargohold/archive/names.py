"""The names images get when they come from an archive.

In order: ``io.containerd.image.name`` (a full reference), ``org.opencontainers.image.ref.name``
when it is a full reference (it contains ``/``, ``:`` or ``@``), ``RepoTags`` of a
docker-archive. A bare tag in ``org.opencontainers.image.ref.name`` (what ``skopeo copy
oci:DIR:tag`` writes) becomes ``BASE:tag`` with ``--base-name BASE``; an image with no name at
all becomes ``BASE@<digest>``. Without ``--base-name`` such an image is an error naming the
file: nothing is imported under an invented name.  Two images of one import carrying the same
name with different digests is an error too.
"""

from __future__ import annotations

from dataclasses import replace

from cargohold.archive.formats import Archive, ArchiveImage
from cargohold.errors import CargoholdError, InvalidInputError
from cargohold.oci.reference import Reference, parse_reference


def image_refs(
    archive: Archive, img: ArchiveImage, base: Reference | None
) -> list[Reference]:
    """The references ``img`` is imported as (at least one, else InvalidInputError)."""
    where = archive.where
    out: list[Reference] = []
    for n in img.names:
        try:
            ref = parse_reference(n)
        except CargoholdError as e:
            raise InvalidInputError(f"{where}: image {img.root.digest}: bad name {n!r}: "
                                    f"{e.message}") from None
        if ref.digest is not None and ref.digest != img.root.digest:
            raise InvalidInputError(
                f"{where}: image {img.root.digest} is named {n!r}, a different digest"
            )
        if ref not in out:
            out.append(ref)
    if base is not None:
        for t in img.tags:
            ref = replace(base, digest=None).with_tag(t)
            if ref not in out:
                out.append(ref)
        if not out:
            out.append(replace(base, tag=None, digest=img.root.digest))
    if not out:
        what = (f"only the bare tag(s) {', '.join(img.tags)}" if img.tags else "no name")
        raise InvalidInputError(
            f"{where}: image {img.root.digest} has {what}",
            hint="pass --base-name REPO (e.g. --base-name registry.example.com/team/app)",
        )
    return out


def check_unique(named: list[tuple[Reference, Archive, ArchiveImage]]) -> None:
    """InvalidInputError when one name points at different digests."""
    seen: dict[str, tuple[str, str]] = {}
    for ref, archive, img in named:
        key = str(ref)
        digest = str(img.root.digest)
        if key in seen and seen[key][0] != digest:
            raise InvalidInputError(
                f"name {key} points at two different images: {seen[key][0]} ({seen[key][1]}) "
                f"and {digest} ({archive.where})",
                hint="import the archives separately, or fix the duplicate name",
            )
        seen.setdefault(key, (digest, archive.where))
