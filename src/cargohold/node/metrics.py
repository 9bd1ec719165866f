"""Prometheus metrics for node_exporter's textfile collector, and the run history behind them.

``<root>/node-state.json`` keeps what must survive between runs (counters of bytes demoted
and deleted, the last run of each command); :func:`write_textfile` renders it with the
store's current inventory into ``DIR/cargohold.prom`` (prometheus-client writes a temp file in
the same directory and renames it, so the collector never reads half a file).

Low cardinality: no per-image series; labels are ``tier``, ``kind``, ``action``, ``command``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.errors import CargoholdError, InvalidInputError, OutOfSpaceError
from cargohold.node.inventory import TIERS, Inventory

__all__ = ["TEXTFILE_NAME", "NodeState", "check_textfile_dir", "record_run", "write_textfile"]

STATE_FILE = "node-state.json"
TEXTFILE_NAME = "cargohold.prom"


@dataclass
class NodeState:
    demoted_bytes: int = 0
    deleted_bytes: int = 0
    #: command -> {"timestamp": unix seconds, "duration": seconds, "success": bool}
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"demoted_bytes": self.demoted_bytes, "deleted_bytes": self.deleted_bytes,
                "runs": self.runs}

    @classmethod
    def from_json(cls, doc: Any) -> NodeState:
        if not isinstance(doc, dict):
            return cls()
        runs = doc.get("runs") if isinstance(doc.get("runs"), dict) else {}
        return cls(int(doc.get("demoted_bytes", 0) or 0), int(doc.get("deleted_bytes", 0) or 0),
                   {str(k): v for k, v in (runs or {}).items() if isinstance(v, dict)})


@contextlib.contextmanager
def _locked_state(root: Path) -> Iterator[tuple[NodeState, Path]]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / STATE_FILE
    fd = os.open(root / f".{STATE_FILE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            state = NodeState.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            state = NodeState()
        yield state, path
    finally:
        os.close(fd)


def load_state(root: Path) -> NodeState:
    try:
        return NodeState.from_json(json.loads((root / STATE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return NodeState()


def record_run(root: Path, command: str, *, started: float, success: bool,
               demoted: int = 0, deleted: int = 0) -> NodeState:
    """Add a finished run of ``command`` (and the bytes it demoted / deleted) to the state."""
    try:
        with _locked_state(root) as (state, path):
            state.demoted_bytes += demoted
            state.deleted_bytes += deleted
            state.runs[command] = {"timestamp": started, "duration": time.time() - started,
                                   "success": success}
            tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state.to_json(), f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return state
    except OSError as e:
        raise _write_error(root / STATE_FILE, e) from None


def check_textfile_dir(directory: Path) -> None:
    """InvalidInputError unless ``directory`` exists and a file can be made in it (tried:
    permission bits do not show a read-only mount, /proc or /sys)."""
    if not directory.is_dir():
        raise InvalidInputError(f"textfile directory {directory} does not exist (or is not a "
                                "directory)", hint="create it, or point --textfile at the "
                                "directory node_exporter's --collector.textfile.directory names")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cargohold-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _write_error(directory, e) from None


def _write_error(path: Path, e: OSError) -> CargoholdError:
    if e.errno == errno.ENOSPC:
        return OutOfSpaceError(f"cannot write {path}: no space left on the device")
    return InvalidInputError(f"cannot write {path}: {e.strerror or e}",
                             hint="point it at a writable directory (root on a node)")


def parse_exposition(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a text exposition (comments left out): the metrics
    for ``--json``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def write_textfile(directory: Path, inv: Inventory | None, state: NodeState) -> Path:
    """Render the metrics into ``directory/cargohold.prom`` atomically; returns the path."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        disable_created_metrics,
        write_to_textfile,
    )

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

    check_textfile_dir(directory)
    reg = CollectorRegistry()
    if inv is not None:
        images = Gauge("cargohold_images", "Images in the store by tier (unpacked, partial, "
                       "fetched = compressed only).", ["tier"], registry=reg)
        for tier, n in inv.tiers().items():
            if tier in TIERS and tier != "absent":
                images.labels(tier=tier).set(n)
        store = Gauge("cargohold_store_bytes", "Bytes the store uses on disk, by kind.",
                      ["kind"], registry=reg)
        store.labels(kind="content").set(inv.content_bytes)
        store.labels(kind="snapshots").set(inv.snapshot_bytes)
        pending = Gauge("cargohold_images_pending_warm", "Images not fully unpacked that warm "
                        "would unpack (tiers fetched and partial).", registry=reg)
        pending.set(sum(1 for i in inv.images if i.tier in ("fetched", "partial")))
        crit = Gauge("cargohold_critical_images_not_unpacked", "Critical images that are not "
                     "unpacked.", registry=reg)
        crit.set(sum(1 for i in inv.images if i.critical and i.tier != "unpacked"))
    evicted = Counter("cargohold_evicted_bytes", "Bytes freed by evict since the store was "
                      "created, by action (demote, delete).", ["action"], registry=reg)
    evicted.labels(action="demote").inc(state.demoted_bytes)
    evicted.labels(action="delete").inc(state.deleted_bytes)
    ts = Gauge("cargohold_last_run_timestamp_seconds", "When the last run of a command "
               "started (unix time).", ["command"], registry=reg)
    dur = Gauge("cargohold_last_run_duration_seconds", "How long the last run of a command "
                "took.", ["command"], registry=reg)
    ok = Gauge("cargohold_last_run_success", "1 if the last run of a command succeeded, "
               "else 0.", ["command"], registry=reg)
    for cmd, run in sorted(state.runs.items()):
        ts.labels(command=cmd).set(float(run.get("timestamp", 0)))
        dur.labels(command=cmd).set(float(run.get("duration", 0)))
        ok.labels(command=cmd).set(1 if run.get("success") else 0)
    path = directory / TEXTFILE_NAME
    try:
        write_to_textfile(str(path), reg)
    except OSError as e:
        raise _write_error(path, e) from None
    return path
