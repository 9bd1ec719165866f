"""`cargohold gc`: remove what no image record, lease or container references."""

from __future__ import annotations

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import human_bytes
from cargohold.cli.resources import open_store


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_app
def gc(app: App, dry_run: bool) -> None:
    """Garbage-collect unreferenced blobs and stale ingests (takes the root lock exclusively)."""
    from cargohold.store.embedded.gc import collect

    with open_store(app.settings, exclusive=True) as store:
        result = collect(store, dry_run=dry_run)
    if app.out.json_mode:
        app.out.json(result.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    for item in result.removed:
        app.out.data(f"{verb} {item}")
    app.out.info(f"{verb} {len(result.removed)} items, {human_bytes(result.bytes_freed)}")
