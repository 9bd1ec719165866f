"""Leases in ``metadata.db``: named holds on content, ingests and snapshots that gc honours.

A lease with the label ``containerd.io/gc.expire`` (RFC 3339) stops protecting anything
once that time has passed; gc then deletes it. Resource types follow containerd:
``content`` (id: digest), ``ingest`` (id: ingest ref), ``snapshots/<snapshotter>`` (id: key).
"""

from __future__ import annotations

import builtins
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from cargohold.errors import ConflictError, InvalidInputError, NotFoundError
from cargohold.labels import LABEL_GC_EXPIRE
from cargohold.oci.digest import Digest
from cargohold.store.embedded.metadata import (
    MetadataDB,
    dump_labels,
    load_labels,
    now,
    parse_ts,
    ts,
)
from cargohold.store.interfaces import Lease, LeaseResource

#: containerd's identifier rule (lease ids must also be valid there).
_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,74}[A-Za-z0-9])?$")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def validate_lease_id(lease_id: str) -> None:
    if not _ID.match(lease_id):
        raise InvalidInputError(
            f"invalid lease id {lease_id!r}: letters, digits, '.', '_', '-' "
            "(starting and ending with a letter or digit), at most 76 characters"
        )


def validate_resource(resource: LeaseResource) -> None:
    t, rid = resource.type, resource.id
    if t == "content":
        Digest.parse(rid)
    elif t == "ingest" or (t.startswith("snapshots/") and len(t) > len("snapshots/")):
        if not rid:
            raise InvalidInputError(f"lease resource {t!r} needs a non-empty id")
    else:
        raise InvalidInputError(
            f"invalid lease resource type {t!r}: expected 'content', 'ingest' or "
            "'snapshots/<snapshotter>'"
        )


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 (Go's RFC3339Nano included: extra fraction digits are dropped)."""
    t = _FRACTION.sub(r"\1", text.strip().upper().replace("Z", "+00:00"))
    dt = datetime.fromisoformat(t)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def lease_expiry(labels: Mapping[str, str]) -> datetime | None:
    """When a lease stops protecting; None if it has no (valid) expiry label.

    Like containerd, an unparsable expiry is ignored (the lease does not expire)."""
    raw = labels.get(LABEL_GC_EXPIRE)
    if not raw:
        return None
    try:
        return parse_rfc3339(raw)
    except ValueError:
        return None


def lease_expired(lease: Lease, at: datetime | None = None) -> bool:
    exp = lease_expiry(lease.labels)
    return exp is not None and exp <= (at or now())


def new_lease_id() -> str:
    return f"{time.time_ns()}-{secrets.token_hex(6)}"


def _lease(row: tuple[str, str, str]) -> Lease:
    return Lease(id=row[0], created_at=parse_ts(row[1]), labels=load_labels(row[2]))


class EmbeddedLeaseManager:
    """LeaseManager over ``metadata.db``. Thread-safe."""

    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    def create(self, *, labels: Mapping[str, str] | None = None, lease_id: str = "") -> Lease:
        lid = lease_id or new_lease_id()
        validate_lease_id(lid)
        labels = dict(labels or {})
        exp = labels.get(LABEL_GC_EXPIRE)
        if exp:
            try:
                parse_rfc3339(exp)
            except ValueError:
                raise InvalidInputError(
                    f"invalid {LABEL_GC_EXPIRE} label {exp!r}: expected an RFC 3339 time"
                ) from None
        created = now()
        with self._db.write("creating a lease") as c:
            try:
                c.execute(
                    "INSERT INTO leases (id, created_at, labels) VALUES (?, ?, ?)",
                    (lid, ts(created), dump_labels(labels)),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"lease {lid!r} already exists") from None
        return Lease(id=lid, created_at=created, labels=labels)

    def get(self, lease_id: str) -> Lease:
        rows = self._db.query("SELECT id, created_at, labels FROM leases WHERE id = ?", (lease_id,))
        if not rows:
            raise NotFoundError(f"lease {lease_id!r} not found")
        return _lease(rows[0])

    def delete(self, lease_id: str) -> None:
        with self._db.write("deleting a lease") as c:
            cur = c.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"lease {lease_id!r} not found")

    def list(self) -> builtins.list[Lease]:
        rows = self._db.query("SELECT id, created_at, labels FROM leases ORDER BY created_at, id")
        return [_lease(r) for r in rows]

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        """Idempotent; NotFoundError if the lease does not exist."""
        validate_resource(resource)
        with self._db.write("adding a lease resource") as c:
            if not self.add_resource_in(c, lease_id, resource):
                raise NotFoundError(f"lease {lease_id!r} not found")

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None:
        """Idempotent for the resource; NotFoundError if the lease does not exist."""
        with self._db.write("deleting a lease resource") as c:
            if c.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
                raise NotFoundError(f"lease {lease_id!r} not found")
            c.execute(
                "DELETE FROM lease_resources WHERE lease_id = ? AND type = ? AND id = ?",
                (lease_id, resource.type, resource.id),
            )

    def list_resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        self.get(lease_id)
        rows = self._db.query(
            "SELECT type, id FROM lease_resources WHERE lease_id = ? ORDER BY type, id",
            (lease_id,),
        )
        return [LeaseResource(type=t, id=i) for t, i in rows]

    # ------------------------------------------------------------ for the store and gc

    def all_resources(self) -> dict[str, builtins.list[LeaseResource]]:
        """Every lease's resources, in one query (gc)."""
        out: dict[str, builtins.list[LeaseResource]] = {}
        for lid, t, i in self._db.query(
            "SELECT lease_id, type, id FROM lease_resources ORDER BY lease_id, type, id"
        ):
            out.setdefault(lid, []).append(LeaseResource(type=t, id=i))
        return out

    @staticmethod
    def add_resource_in(c: sqlite3.Connection, lease_id: str, resource: LeaseResource) -> bool:
        """Add a resource inside the caller's transaction; False if the lease is gone."""
        cur = c.execute(
            "INSERT OR IGNORE INTO lease_resources (lease_id, type, id) "
            "SELECT id, ?, ? FROM leases WHERE id = ?",
            (resource.type, resource.id, lease_id),
        )
        if cur.rowcount:
            return True
        return c.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is not None
