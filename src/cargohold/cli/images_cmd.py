"""`cargohold images ls | inspect | rm | tag`."""

from __future__ import annotations

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.errors import NotFoundError
from cargohold.images.content import image_contents
from cargohold.oci.reference import parse_reference
from cargohold.pull.fetch import image_name
from cargohold.pull.records import lookup_name
from cargohold.store.interfaces import Image
from cargohold.store.open import LocalStore, open_store
from cargohold.units import format_size


@cli.group()
def images() -> None:
    """List, inspect, remove and tag image records."""


@images.command("ls")
@pass_app
def images_ls(app: App) -> None:
    """List image records with their size in the store and whether they are unpacked.

    UNPACKED: the top layer snapshot of a platform of the image is committed; UNPACKED-SIZE:
    disk use of its layer snapshots (each shared layer counted in every image using it).
    """
    from cargohold.unpack.resolve import is_unpacked, unpacked_size

    with open_store(app.settings, must_exist=True) as store:
        check = not isinstance(store, LocalStore) or store.has_snapshots
        rows = []
        for img in sorted(store.images.list(), key=lambda i: i.name):
            c = image_contents(store.content, img.target)
            unpacked = check and is_unpacked(store.content, store.snapshots, img)
            size = unpacked_size(store.content, store.snapshots, img) if unpacked else 0
            rows.append((img, c, unpacked, size))
    if app.out.json_mode:
        app.out.json({"images": [
            {"name": img.name, "digest": str(img.target.digest), "media_type": img.target.media_type,
             "size": c.present_bytes, "complete": c.complete, "platforms": c.platforms,
             "labels": dict(img.labels), "unpacked": unpacked, "unpacked_size": usize}
            for img, c, unpacked, usize in rows
        ]})
        return
    app.out.table(
        ["REF", "DIGEST", "SIZE", "PLATFORMS", "COMPLETE", "UNPACKED", "UNPACKED-SIZE"],
        [(img.name, img.target.digest.short, format_size(c.present_bytes),
          ",".join(c.platforms), "yes" if c.complete else "no", "yes" if unpacked else "no",
          format_size(usize) if unpacked else "-")
         for img, c, unpacked, usize in rows],
    )


@images.command("inspect")
@click.argument("ref")
@pass_app
def images_inspect(app: App, ref: str) -> None:
    """Show an image record and the blobs it references."""
    with open_store(app.settings, must_exist=True) as store:
        name = lookup_name(store.images, ref)
        img = store.images.get(name)
        c = image_contents(store.content, img.target)
    doc = {
        "name": img.name,
        "target": img.target.to_json(),
        "labels": dict(img.labels),
        "created_at": str(img.created_at),
        "updated_at": str(img.updated_at),
        "platforms": c.platforms,
        "complete": c.complete,
        "blobs": [
            {"digest": str(d.digest), "media_type": d.media_type, "size": d.size, "present": p}
            for d, p in c.blobs
        ],
    }
    app.out.json(doc)


@images.command("rm")
@click.argument("refs", nargs=-1, required=True)
@pass_app
def images_rm(app: App, refs: tuple[str, ...]) -> None:
    """Remove image records (content goes at the next `cargohold gc`)."""
    with open_store(app.settings, must_exist=True) as store:
        for r in refs:
            name = lookup_name(store.images, r)
            store.images.delete(name)
            app.out.data(name)


@images.command("tag")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@pass_app
def images_tag(app: App, source: str, targets: tuple[str, ...]) -> None:
    """Create new records pointing at SOURCE's target."""
    with open_store(app.settings, must_exist=True) as store:
        img = store.images.get(lookup_name(store.images, source))
        for t in targets:
            name = image_name(parse_reference(t))
            try:
                old = store.images.get(name)
                store.images.update(Image(name=name, target=img.target, labels=dict(old.labels)))
            except NotFoundError:
                store.images.create(Image(name=name, target=img.target, labels=dict(img.labels)))
            app.out.data(name)
