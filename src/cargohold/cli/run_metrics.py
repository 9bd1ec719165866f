"""The run history and ``--metrics-textfile DIR`` of the commands a node runs on a schedule
(bake, warm, evict): each run is recorded under the root and, when asked, node_exporter's
textfile is refreshed after it, whether the run succeeded or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from cargohold.cli.main import App
from cargohold.errors import CargoholdError
from cargohold.store.open import open_store_and_snapshots

textfile_option = click.option(
    "--metrics-textfile", "metrics_dir", type=click.Path(path_type=Path), default=None,
    metavar="DIR",
    help="Refresh DIR/cargohold.prom for node_exporter's textfile collector after the run.")


@dataclass
class RunCounters:
    """What a run adds to the counters kept across runs."""

    demoted_bytes: int = 0
    deleted_bytes: int = 0


def refresh_textfile(app: App, metrics_dir: Path) -> Path:
    """Write ``metrics_dir/cargohold.prom`` from the store and the run history."""
    from cargohold.node.inventory import take_inventory
    from cargohold.node.metrics import load_state, write_textfile

    with open_store_and_snapshots(app.settings) as (store, sn):
        inv = take_inventory(store, sn)
    return write_textfile(metrics_dir, inv, load_state(Path(app.settings.root)))


@contextmanager
def recorded_run(app: App, command: str, metrics_dir: Path | None, *,
                 record: bool = True) -> Iterator[RunCounters]:
    """Run the block as ``command``: record it (start, duration, success, the counters the
    block sets) in ``<root>/node-state.json`` and then refresh the textfile if asked. An
    unwritable textfile directory fails before the block runs; a failed refresh or record
    never hides the block's own error, and without a textfile a failed record is a
    warning."""
    from cargohold.node.metrics import check_textfile_dir, record_run

    if metrics_dir is not None:
        check_textfile_dir(metrics_dir)
    counters = RunCounters()
    started = time.time()
    ok = False
    try:
        yield counters
        ok = True
    finally:
        try:
            root = Path(app.settings.root)
            # A run that failed before it touched anything (a bad spec, a mistyped --root)
            # does not create a root just to record itself; but for containerd, whose root
            # holds only cargohold's own state, a failure is recorded for the textfile.
            if record and (ok or root.is_dir() or (
                    metrics_dir is not None and app.settings.store != "embedded")):
                record_run(root, command, started=started, success=ok,
                           demoted=counters.demoted_bytes, deleted=counters.deleted_bytes)
            if metrics_dir is not None:
                app.out.debug(f"metrics written to {refresh_textfile(app, metrics_dir)}")
        except CargoholdError as e:
            if ok and metrics_dir is not None:
                raise
            app.out.warn(f"run history not recorded: {e.message}")
