"""`cargohold gc`: remove what no image record, lease or container references."""

from __future__ import annotations

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.store.open import open_embedded
from cargohold.units import format_size


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_app
def gc(app: App, dry_run: bool) -> None:
    """Garbage-collect unreferenced blobs, snapshots and stale ingests (takes the root lock
    exclusively).

    Snapshots are kept when an image record's config blob names them
    (containerd.io/gc.ref.snapshot.*, written by unpack), when a container uses them, or
    when a live lease holds them; everything else (layers of removed images, half-done
    unpacks) is removed.
    """
    from cargohold.store.embedded.containers import ContainerRoots
    from cargohold.store.embedded.gc import collect

    with open_embedded(app.settings, exclusive=True, must_exist=True,
                       hint="containerd collects its own garbage") as store:
        hook = None
        if store.has_snapshots:  # nothing was ever unpacked otherwise: leave the root as is
            sn = store.snapshots
            hook = ContainerRoots(sn, store.containers, sn.name)
        result = collect(store, dry_run=dry_run, snapshot_hook=hook)
    if app.out.json_mode:
        app.out.json(result.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    for item in result.removed:
        app.out.data(f"{verb} {item}")
    app.out.info(f"{verb} {len(result.removed)} items, {format_size(result.bytes_freed)}")
