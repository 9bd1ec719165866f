"""The leases cargohold takes for its own work, and the release of those a dead process left.

Every job that writes (fetch, pull, bake, unpack) holds a lease while it runs, so that a
concurrent garbage collector (``cargohold gc``, containerd's) never takes half-fetched content,
ingests or half-applied snapshots. :func:`leased` creates it with labels naming its owner:

* ``cargohold.owner/pid``, ``cargohold.owner/start`` (the process's start time in clock ticks
  since boot, ``/proc/<pid>/stat`` field 22), ``cargohold.owner/boot`` (the kernel's boot id),
  ``cargohold.owner/host`` (the host name) and ``cargohold.owner/pidns`` (its pid namespace):
  the pid alone is not enough, pids are reused, and mean nothing in another namespace;
* ``cargohold.purpose`` (``fetch``, ``unpack``, ...);
* ``containerd.io/gc.expire`` 24 h ahead, a last resort for owners nobody can check.

and deletes it when the block ends, whatever the way out (success, error, Ctrl-C, SIGTERM).

A process killed with SIGKILL (or a power loss) cannot: :func:`reap_dead_leases` finds the
leases whose owner is gone (same host, and another boot, or in the same pid namespace no such
pid or a pid started at another time), removes the half-applied ``extract-*`` snapshots they hold (what only a dead
unpack leaves) and deletes them. Every command that opens a store runs it, and so does
``gc`` (a lease of a dead owner is not a root). Leases without the owner labels (other
clients', containerd's own) are never touched; ingests a dead fetch left stay for the rerun
to resume (without a lease ``gc`` removes them).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Literal

from cargohold.errors import CargoholdError, NotFoundError
from cargohold.labels import (
    LABEL_GC_EXPIRE,
    LABEL_OWNER_BOOT,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_PIDNS,
    LABEL_OWNER_START,
    LABEL_PURPOSE,
)
from cargohold.store.interfaces import KIND_ACTIVE, LeaseResource, Store, active_lease

#: How long a lease protects after its owner vanished where nobody can tell (containerd: 24 h).
LEASE_EXPIRY = timedelta(hours=24)
#: Keys of the snapshots an unpack applies layers into (the reaper releases them).
EXTRACT_PREFIX = "extract-"

Owner = Literal["alive", "dead", "unknown"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


@cache
def _this_boot() -> str:
    return _boot_id()


@cache
def _this_pidns() -> str:
    """This process's pid namespace (``pid:[4026531836]``): pids mean something only in it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain anything: split after it.
    fields = raw[raw.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else None


def owner_labels() -> dict[str, str]:
    """The labels naming this process as a lease's owner."""
    pid = os.getpid()
    return {
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: process_start(pid) or "",
        LABEL_OWNER_BOOT: _this_boot(),
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PIDNS: _this_pidns(),
    }


def owner_state(labels: Mapping[str, str]) -> Owner:
    """Whether the process that owns a lease still runs: ``unknown`` for a lease without
    owner labels (not cargohold's), or an owner on another host or in another pid namespace
    (a container sharing the store), whom nobody here can check."""
    pid_text = labels.get(LABEL_OWNER_PID)
    if not pid_text or not pid_text.isdigit():
        return "unknown"
    if labels.get(LABEL_OWNER_HOST, "") != socket.gethostname():
        return "unknown"
    boot = labels.get(LABEL_OWNER_BOOT, "")
    if boot and _this_boot() and boot != _this_boot():
        return "dead"  # rebooted since: every process of that boot is gone
    if labels.get(LABEL_OWNER_PIDNS, "") != _this_pidns():
        return "unknown"
    start = process_start(int(pid_text))
    if start is None:
        return "dead"
    want = labels.get(LABEL_OWNER_START, "")
    if want and start != want:
        return "dead"  # the pid was reused by another process
    return "alive"


def owner_dead(labels: Mapping[str, str]) -> bool:
    return owner_state(labels) == "dead"


@contextmanager
def _signals_held(store: Store) -> Iterator[None]:
    """Hold SIGINT/SIGTERM (delivered right after) so that creating a lease and entering the
    block that deletes it, or deleting it, is not cut in half by Ctrl-C. Best effort: another
    thread may still take the signal and Python then runs its handler here. Only for the
    embedded store (SQLite, bounded waits): a call to a hung containerd must stay
    interruptible. A lease a signal cut off is released by the next command (its owner is
    dead by then)."""
    if store.kind != "embedded" or threading.current_thread() is not threading.main_thread():
        yield  # process signals go to the main thread
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def leased(store: Store, purpose: str, *, attach: bool = True,
           expire: timedelta = LEASE_EXPIRY, quiet: bool = False) -> Iterator[str]:
    """Hold a new lease of ``store`` (owner labels, see the module docstring) for the block and
    yield its id; with ``attach`` it is the active lease (what the block writes joins it).
    The lease is deleted on the way out, however the block ends; ``expire`` is how long it
    protects if nobody can (``containerd.io/gc.expire``). A failure to delete it is raised
    when the block ended normally, unless ``quiet`` (the lease then expires). The one way
    cargohold creates, attaches and releases a lease of its own (:func:`attached` for one
    held elsewhere)."""
    labels = {
        **owner_labels(),
        LABEL_PURPOSE: purpose,
        LABEL_GC_EXPIRE: (datetime.now(UTC) + expire).isoformat(),
    }
    lease_id = ""
    token: Token[str | None] | None = None
    try:
        with _signals_held(store):
            lease_id = store.leases.create(labels=labels).id
            token = active_lease.set(lease_id) if attach else None
        # A signal held above is raised here at the earliest, inside the try.
        yield lease_id
    except BaseException:
        # The error that ended the block matters more than one releasing the lease (the
        # next command releases it then: its owner will be dead).
        _release(store, lease_id, token, quiet=True)
        raise
    _release(store, lease_id, token, quiet=quiet)


@contextmanager
def attached(lease_id: str | None) -> Iterator[None]:
    """Make ``lease_id`` the active lease for the block (None: no lease), the previous one
    active again when it ends: for a lease held elsewhere (:func:`leased` attaches its own)."""
    token = active_lease.set(lease_id)
    try:
        yield
    finally:
        active_lease.reset(token)


def _release(store: Store, lease_id: str, token: Token[str | None] | None, *,
             quiet: bool) -> None:
    with _signals_held(store):
        if token is not None:
            active_lease.reset(token)
        if not lease_id:
            return
        try:
            store.leases.delete(lease_id)
        except NotFoundError:
            pass  # expired and collected meanwhile
        except CargoholdError:
            if not quiet:
                raise


@dataclass(frozen=True)
class Reaped:
    """A lease of a dead process that was released, and the extract snapshots it held."""

    lease: str
    purpose: str
    snapshots: tuple[str, ...]


def _remove_extract(store: Store, res: LeaseResource) -> bool:
    """Remove a half-applied (active) extract snapshot; False if there is none."""
    if not (res.type.startswith("snapshots/") and res.id.startswith(EXTRACT_PREFIX)):
        return False
    # containerd: any of its snapshotters; embedded: None if nothing was ever unpacked
    sn = store.snapshotter_named(res.type.removeprefix("snapshots/"))
    if sn is None:
        return False
    try:
        if sn.stat(res.id).kind != KIND_ACTIVE:
            return False
        sn.remove(res.id)
    except NotFoundError:
        return False
    return True


def reap_dead_leases(store: Store) -> list[Reaped]:
    """Release every lease of ``store`` whose owner process is dead, removing the
    ``extract-*`` snapshots it held first. Errors on one lease leave it for the next run."""
    out: list[Reaped] = []
    for lease in store.leases.list():
        if not owner_dead(lease.labels):
            continue
        try:
            removed = [
                r.id for r in store.leases.list_resources(lease.id) if _remove_extract(store, r)
            ]
            store.leases.delete(lease.id)
        except NotFoundError:
            continue  # another process reaped it meanwhile
        except CargoholdError:
            continue  # e.g. a snapshot still mounted: the next command (or gc) tries again
        out.append(Reaped(lease.id, lease.labels.get(LABEL_PURPOSE, ""), tuple(removed)))
    return out


__all__ = [
    "LEASE_EXPIRY",
    "Reaped",
    "attached",
    "leased",
    "owner_dead",
    "owner_labels",
    "owner_state",
    "process_start",
    "reap_dead_leases",
]
