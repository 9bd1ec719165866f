"""Image records in ``metadata.db``: name -> target descriptor, labels, timestamps."""

from __future__ import annotations

import builtins
import json
import sqlite3
from typing import Any

from cargohold.errors import ConflictError, InvalidInputError, NotFoundError
from cargohold.oci.descriptor import Descriptor
from cargohold.store.embedded.metadata import (
    MetadataDB,
    dump_labels,
    load_labels,
    now,
    parse_ts,
    ts,
)
from cargohold.store.interfaces import Image

_COLUMNS = (
    "name, target_media_type, target_digest, target_size, target_annotations, "
    "target_extra, labels, created_at, updated_at"
)


def _target_columns(d: Descriptor) -> tuple[str, str, int, str, str]:
    return (
        d.media_type,
        str(d.digest),
        d.size,
        json.dumps(dict(d.annotations), sort_keys=True),
        json.dumps(d.extra_json(), sort_keys=True),
    )


def _image(row: tuple[Any, ...]) -> Image:
    name, mt, dg, size, ann, extra, labels, created, updated = row
    doc: dict[str, Any] = dict(json.loads(extra or "{}"))
    doc.update(mediaType=mt, digest=dg, size=int(size), annotations=json.loads(ann or "{}"))
    return Image(
        name=name,
        target=Descriptor.from_json(doc, f"image {name!r} target"),
        labels=load_labels(labels),
        created_at=parse_ts(created),
        updated_at=parse_ts(updated),
    )


def _check(image: Image) -> None:
    if not isinstance(image.name, str) or not image.name:
        raise InvalidInputError("an image record needs a non-empty name")


class EmbeddedImageStore:
    """ImageStore over ``metadata.db``. Thread-safe."""

    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    def get(self, name: str) -> Image:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM images WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(f"image {name!r} not found")
        return _image(rows[0])

    def list(self) -> builtins.list[Image]:
        return [_image(r) for r in self._db.query(f"SELECT {_COLUMNS} FROM images ORDER BY name")]

    def create(self, image: Image) -> Image:
        _check(image)
        at = now()
        labels = dump_labels(image.labels)
        with self._db.write("creating an image record") as c:
            try:
                c.execute(
                    f"INSERT INTO images ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (image.name, *_target_columns(image.target), labels, ts(at), ts(at)),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"image {image.name!r} already exists") from None
        return Image(image.name, image.target, dict(image.labels), at, at)

    def update(self, image: Image) -> Image:
        _check(image)
        at = now()
        labels = dump_labels(image.labels)
        with self._db.write("updating an image record") as c:
            row = c.execute(
                "SELECT created_at FROM images WHERE name = ?", (image.name,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"image {image.name!r} not found")
            mt, dg, size, ann, extra = _target_columns(image.target)
            c.execute(
                "UPDATE images SET target_media_type = ?, target_digest = ?, target_size = ?, "
                "target_annotations = ?, target_extra = ?, labels = ?, updated_at = ? "
                "WHERE name = ?",
                (mt, dg, size, ann, extra, labels, ts(at), image.name),
            )
        return Image(image.name, image.target, dict(image.labels), parse_ts(row[0]), at)

    def delete(self, name: str) -> None:
        with self._db.write("deleting an image record") as c:
            if c.execute("DELETE FROM images WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"image {name!r} not found")
