"""Several processes opening one new store at the same moment all succeed (issue 14).

SQLite answers some opening races (switching a new database to WAL, WAL recovery) with an
immediate SQLITE_BUSY that skips the busy timeout; two ``cargohold pull`` runs started
together on a fresh root failed with "the metadata database stayed busy" before the open
was retried. Real processes (fork), real SQLite files, a barrier so they collide.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from cargohold.store.embedded.metadata import SCHEMA_VERSION, MetadataDB
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter

PROCESSES = 6
ROUNDS = 8


def _open_both(root: str, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    barrier.wait(timeout=60)
    try:
        db = MetadataDB(Path(root) / "metadata.db")
        version = db.schema_version()
        db.close()
        with EmbeddedSnapshotter(Path(root) / "snapshots") as snaps:
            list(snaps.walk())
        out.put(("ok", version))
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_processes_opening_a_new_store_together_all_succeed(tmp_path: Path, round_no: int) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_open_both, args=(str(tmp_path), barrier, out))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [r[1] for r in results if r[0] != "ok"]
    assert errors == []
    assert {r[1] for r in results} == {SCHEMA_VERSION}
