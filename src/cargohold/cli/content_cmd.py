"""`cargohold content ls | rm` and `cargohold gc`."""

from __future__ import annotations

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.oci.digest import Digest
from cargohold.store.open import open_store
from cargohold.units import format_size


@cli.group()
def content() -> None:
    """List and remove blobs in the content store."""


@content.command("ls")
@pass_app
def content_ls(app: App) -> None:
    """List committed blobs with size and labels."""
    with open_store(app.settings, must_exist=True) as store:
        infos = sorted(store.content.walk(), key=lambda i: str(i.digest))
        ingests = store.content.list_statuses()
    if app.out.json_mode:
        app.out.json({
            "blobs": [{"digest": str(i.digest), "size": i.size, "created_at": str(i.created_at),
                       "labels": dict(i.labels)} for i in infos],
            "ingests": [{"ref": s.ref, "offset": s.offset, "total": s.total,
                         "expected": str(s.expected) if s.expected else None} for s in ingests],
        })
        return
    app.out.table(
        ["DIGEST", "SIZE", "LABELS"],
        [(str(i.digest), format_size(i.size),
          ",".join(f"{k}={v}" for k, v in sorted(i.labels.items()))) for i in infos],
    )
    for s in ingests:
        app.out.info(f"ingest {s.ref}: {format_size(s.offset)} of {format_size(s.total)}")


@content.command("rm")
@click.argument("digests", nargs=-1, required=True)
@pass_app
def content_rm(app: App, digests: tuple[str, ...]) -> None:
    """Delete blobs by digest (images that need them become incomplete)."""
    parsed = [Digest.parse(d) for d in digests]
    with open_store(app.settings, must_exist=True) as store:
        for d in parsed:
            store.content.delete(d)
            app.out.data(str(d))
