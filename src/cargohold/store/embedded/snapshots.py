"""The embedded snapshotter, shaped after containerd's snapshots service.

Layout (``<root>/snapshots/``)::

    metadata.db        SQLite (WAL) of its own: one row per snapshot
    <id>/fs            the snapshot's files (overlay: the layer's upper dir, i.e. its diff;
                       flat: a full copy of the tree)
    <id>/work          overlayfs work dir (active overlay snapshots only)
    new-<random>/      a snapshot being created (renamed to <id> in the creating transaction)
    rm-<id>/           a snapshot being removed (deleted after its row)

Metadata: ``id`` (never reused), ``key`` (key of an active snapshot or view, name of a
committed one: one namespace, as in containerd), ``kind``, ``parent`` (the committed parent's
name), ``labels`` (JSON), times, and the disk usage measured at commit.  SQLite rather than
JSON files because prepare/commit/remove must check-and-change atomically ("key free",
"parent committed", "no children") with concurrent threads and processes; a directory is
renamed into place inside the transaction that creates its row, so after a crash a directory
without a row may remain (``cleanup`` removes those), never a row without its directory.

Backends, chosen at construction:

``overlay`` (containerd's ``overlayfs``; root and overlayfs needed)
    Each snapshot's ``fs`` holds only its own layer.  An active snapshot on a parent chain
    mounts as ``overlay`` with ``lowerdir=<parent fs>:<grandparent fs>:...``, its own ``fs``
    as ``upperdir`` and ``work`` as ``workdir``; without a parent it is a ``bind`` mount of
    its ``fs`` (marked ``x-cargohold.whiteout=overlay`` so the applier writes overlay
    whiteouts into it).  A view of one layer is a read-only bind of that layer, of several a
    read-only overlay of lower dirs only.
``flat`` (containerd's ``native``)
    Each active snapshot is a full copy of its parent (``cp -a --reflink=auto``: owners,
    modes, times, xattrs, devices and hardlinks within the tree preserved; reflinks where the
    file system has them).  Mounts are bind mounts.  A view binds the (immutable) parent's
    tree read-only without copying.

Parallel unpack (overlay): a layer's directory does not depend on its parents, so
``standalone_layers`` is true and an image's N layers can be unpacked concurrently::

    for each layer i (concurrently):
        mounts = sn.prepare(f"extract-{i}")                 # no parent
        applier.apply(desc_i, mounts, reader=..., diff_id=diff_ids[i])
    for i in order:                                         # parents first
        sn.commit(chain_ids[i], f"extract-{i}", parent=chain_ids[i - 1] if i else None)

``commit(..., parent=P)`` gives a snapshot prepared without a parent its parent at commit
time; P must already be committed, which is why commits go in chain order.  The flat backend
cannot do this (a copy is made *from* the parent at prepare): its callers prepare each layer
on its committed parent, one after the other.  Committed layer snapshots are named by their
chain ID string (``sha256:...``).

Leases: when constructed with a lease manager and ``active_lease`` is set, new snapshots are
added to that lease as ``snapshots/<name>`` resources (``name`` is ``overlayfs`` or
``native``, as in containerd).  Garbage collection: this class is the ``SnapshotSweeper`` of
``store.embedded.gc`` (roots: ``containerd.io/gc.root`` labels; edges: parent and gc.ref
labels; sweep: removes the unmarked snapshots, children first, then ``cleanup``).
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Set
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
    UnsupportedError,
)
from cargohold.labels import IMPLICIT_DIRS_OPTION, LABEL_GC_ROOT, WHITEOUT_OVERLAY_OPTION
from cargohold.mount import overlay_supported
from cargohold.store.embedded.metadata import SqliteDB, check_not_orphaned
from cargohold.store.interfaces import (
    KIND_ACTIVE,
    KIND_COMMITTED,
    KIND_VIEW,
    LeaseManager,
    LeaseResource,
    Mount,
    SnapshotInfo,
    Usage,
    active_lease,
)
from cargohold.unpack.applier import OVERLAY_MARKS_SUFFIX, undo_overlay_marks
from cargohold.unpack.copyup import copy_lower_dir_metadata

if TYPE_CHECKING:
    from cargohold.store.embedded.gc import Removed
    from cargohold.store.gcmark import Node

Backend = Literal["overlay", "flat"]

SNAPSHOTS_DIR = "snapshots"
DB_FILE = "metadata.db"
#: The file (named by ``labels.IMPLICIT_DIRS_OPTION``) the applier lists the directories it
#: created implicitly in (their metadata comes from the parent chain, known only at commit).
IMPLICIT_DIRS_FILE = "implicit-dirs"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        size INTEGER,
        inodes INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(parent)",
]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _labels_json(labels: Mapping[str, str]) -> str:
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInputError(f"labels must map strings to strings (got {k!r}: {v!r})")
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _check_key(key: str, what: str = "snapshot key") -> None:
    if not isinstance(key, str) or not key or "\0" in key or len(key) > 4096:
        raise InvalidInputError(f"invalid {what} {key!r}")


@dataclass(frozen=True)
class _Row:
    id: int
    key: str
    kind: str
    parent: str
    labels: dict[str, str]
    created_at: str
    updated_at: str
    size: int | None
    inodes: int | None

    @classmethod
    def of(cls, r: Any) -> _Row:
        labels = json.loads(r[4]) if r[4] else {}
        return cls(int(r[0]), r[1], r[2], r[3], labels, r[5], r[6], r[7], r[8])

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            kind=self.kind,
            name=self.key,
            parent=self.parent,
            labels=dict(self.labels),
            created_at=datetime.fromisoformat(self.created_at),
            updated_at=datetime.fromisoformat(self.updated_at),
        )


_COLS = "id, key, kind, parent, labels, created_at, updated_at, size, inodes"


def disk_usage(path: Path) -> Usage:
    """``du`` of a tree: allocated bytes (st_blocks * 512) and inodes, hardlinks once."""
    seen: set[int] = set()
    size = inodes = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Usage(0, 0)
    seen.add(st.st_ino)
    size, inodes = st.st_blocks * 512, 1
    stack = [os.fspath(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile (another process's unpack cleaning up)
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                inodes += 1
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return Usage(size, inodes)


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    for stmt in _SCHEMA:
        conn.execute(stmt)


class EmbeddedSnapshotter:
    """Snapshots under ``<root>/snapshots`` with the ``overlay`` or ``flat`` backend.

    ``backend`` None picks overlay when running as root with overlayfs available, else flat.
    ``reserve_bytes``: free space a flat copy must leave (OutOfSpaceError).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        backend: Backend | None = None,
        leases: LeaseManager | None = None,
        reserve_bytes: int = 0,
        timeout: float = 30.0,
    ) -> None:
        can_overlay = os.geteuid() == 0 and overlay_supported()
        if backend is None:
            backend = "overlay" if can_overlay else "flat"
        if backend not in ("overlay", "flat"):
            raise InvalidInputError(f"unknown snapshotter backend {backend!r}")
        if backend == "overlay" and not can_overlay:
            raise UnsupportedError(
                "the overlay snapshotter needs root and overlayfs (see /proc/filesystems)",
                hint="run as root, load the overlay module, or use the flat snapshotter",
            )
        self.backend: Backend = backend
        self.dir = Path(root) / SNAPSHOTS_DIR
        self.leases = leases
        self.reserve_bytes = reserve_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CargoholdError(f"cannot create {self.dir}: {e}") from e
        # Snapshot directories without their database: lost rows, not a new snapshotter.
        # (-journal: another process creating the database right now, before it is WAL.)
        check_not_orphaned(self.dir / DB_FILE, [(self.dir, 1)],
                           ignore=frozenset({DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm",
                                             DB_FILE + "-journal"}))
        self._db = SqliteDB(self.dir / DB_FILE, timeout=timeout, kind="snapshot",
                            closed_name=f"the snapshotter at {self.dir}")
        self._conn = self._db.conn
        self._write = self._db.write
        self._db.set_up(_create_schema, f"opening {self.dir / DB_FILE}")

    # ------------------------------------------------------------ naming

    @property
    def name(self) -> str:
        return "overlayfs" if self.backend == "overlay" else "native"

    @property
    def standalone_layers(self) -> bool:
        return self.backend == "overlay"

    @property
    def usage_per_layer(self) -> bool:
        """overlay: a layer's own directory; flat: a full copy of its stack."""
        return self.backend != "flat"

    @property
    def local_dir(self) -> Path:
        return self.dir

    # ------------------------------------------------------------ database

    def _get(self, c: sqlite3.Connection, key: str) -> _Row | None:
        r = c.execute(f"SELECT {_COLS} FROM snapshots WHERE key = ?", (key,)).fetchone()
        return _Row.of(r) if r else None

    def _must(self, c: sqlite3.Connection, key: str) -> _Row:
        row = self._get(c, key)
        if row is None:
            raise NotFoundError(f"snapshot {key!r} does not exist")
        return row

    def _chain_ids(self, c: sqlite3.Connection, name: str) -> list[int]:
        """ids of ``name`` and its ancestors, nearest first."""
        rows = c.execute(
            """WITH RECURSIVE chain(id, parent, depth) AS (
                   SELECT id, parent, 0 FROM snapshots WHERE key = ?
                   UNION ALL
                   SELECT s.id, s.parent, chain.depth + 1
                   FROM snapshots s JOIN chain ON s.key = chain.parent
                   WHERE chain.parent != '' AND chain.depth < 100000
               ) SELECT id FROM chain ORDER BY depth""",
            (name,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddedSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ paths and mounts

    def _path(self, sid: int) -> Path:
        return self.dir / str(sid)

    def fs_path(self, key: str) -> Path:
        """The directory holding the files of ``key`` (its diff for overlay)."""
        row = self._must(self._conn(), key)
        return self._path(row.id) / "fs"

    def _mounts(self, c: sqlite3.Connection, row: _Row) -> builtins.list[Mount]:
        own = self._path(row.id)
        parents = self._chain_ids(c, row.parent) if row.parent else []
        lowers = [str(self._path(i) / "fs") for i in parents]
        if row.kind == KIND_VIEW:
            if not lowers:
                return [Mount("bind", str(own / "fs"), ("ro", "rbind"))]
            if self.backend == "flat" or len(lowers) == 1:
                return [Mount("bind", lowers[0], ("ro", "rbind"))]
            return [Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(lowers)))]
        if self.backend == "flat":
            return [Mount("bind", str(own / "fs"), ("rw", "rbind"))]
        if not lowers:
            return [
                Mount(
                    "bind",
                    str(own / "fs"),
                    (
                        "rw",
                        "rbind",
                        WHITEOUT_OVERLAY_OPTION,
                        IMPLICIT_DIRS_OPTION + str(own / IMPLICIT_DIRS_FILE),
                    ),
                )
            ]
        return [
            Mount(
                "overlay",
                "overlay",
                (
                    f"workdir={own / 'work'}",
                    f"upperdir={own / 'fs'}",
                    "lowerdir=" + ":".join(lowers),
                ),
            )
        ]

    def mounts(self, key: str) -> builtins.list[Mount]:
        c = self._conn()
        row = self._must(c, key)
        if row.kind == KIND_COMMITTED:
            raise InvalidInputError(
                f"snapshot {key!r} is committed: make a view or prepare on it to mount it"
            )
        return self._mounts(c, row)

    # ------------------------------------------------------------ queries

    def stat(self, key: str) -> SnapshotInfo:
        return self._must(self._conn(), key).info()

    def walk(self) -> Iterator[SnapshotInfo]:
        rows = self._conn().execute(f"SELECT {_COLS} FROM snapshots ORDER BY id").fetchall()
        for r in rows:
            yield _Row.of(r).info()

    def children(self, key: str) -> builtins.list[str]:
        rows = (
            self._conn()
            .execute("SELECT key FROM snapshots WHERE parent = ? ORDER BY id", (key,))
            .fetchall()
        )
        return [str(r[0]) for r in rows]

    def usage(self, key: str) -> Usage:
        row = self._must(self._conn(), key)
        if row.kind == KIND_COMMITTED and row.size is not None and row.inodes is not None:
            return Usage(row.size, row.inodes)
        return disk_usage(self._path(row.id) / "fs")

    def update(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        with self._write(f"updating snapshot {key}") as c:
            row = self._must(c, key)
            new = dict(row.labels)
            for k, v in labels.items():
                if v is None:
                    new.pop(k, None)
                else:
                    new[k] = v
            c.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?",
                (_labels_json(new), _now(), row.id),
            )
            out = self._must(c, key)
        return out.info()

    # ------------------------------------------------------------ changes

    def _lease(self, key: str) -> None:
        lease = active_lease.get()
        if lease and self.leases is not None:
            self.leases.add_resource(lease, LeaseResource(f"snapshots/{self.name}", key))

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._create(KIND_ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._create(KIND_VIEW, key, parent, labels)

    def _check_parent(self, c: sqlite3.Connection, parent: str) -> _Row:
        prow = self._get(c, parent)
        if prow is None:
            raise NotFoundError(f"parent snapshot {parent!r} does not exist")
        if prow.kind != KIND_COMMITTED:
            raise InvalidInputError(f"parent snapshot {parent!r} is {prow.kind}, not committed")
        return prow

    def _create(
        self, kind: str, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> builtins.list[Mount]:
        _check_key(key)
        if parent:
            _check_key(parent, "parent snapshot name")
        labels_text = _labels_json(labels or {})
        c = self._conn()
        # Fail early (and cheaply) before copying anything; rechecked in the transaction.
        if self._get(c, key) is not None:
            raise AlreadyExistsError(f"snapshot {key!r} already exists")
        prow = self._check_parent(c, parent) if parent else None
        self._lease(key)
        tmp = self.dir / f"new-{secrets.token_hex(8)}"
        stale: Path | None = None
        try:
            tmp.mkdir()
            (tmp / "fs").mkdir(mode=0o755)
            os.chmod(tmp / "fs", 0o755)
            if self.backend == "overlay" and kind == KIND_ACTIVE:
                (tmp / "work").mkdir(mode=0o700)
            if self.backend == "flat" and kind == KIND_ACTIVE and prow is not None:
                self._copy_tree(self._path(prow.id) / "fs", tmp / "fs", prow)
            with self._write(f"creating snapshot {key}") as c:
                if self._get(c, key) is not None:
                    raise AlreadyExistsError(f"snapshot {key!r} already exists")
                if parent:
                    self._check_parent(c, parent)
                t = _now()
                cur = c.execute(
                    "INSERT INTO snapshots (key, kind, parent, labels, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key, kind, parent, labels_text, t, t),
                )
                sid = int(cur.lastrowid or 0)
                target = self._path(sid)
                if os.path.lexists(target):
                    # Left by a process killed after this rename and before its commit: the
                    # row was rolled back and SQLite hands out the same id again. No row
                    # names it (this transaction just allocated the id): move it aside.
                    stale = self.dir / f"rm-{sid}-{secrets.token_hex(4)}"
                    os.rename(target, stale)
                os.rename(tmp, target)
                row = self._must(c, key)
                mounts = self._mounts(c, row)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)  # else `gc` removes rm-* later
        return mounts

    def _copy_tree(self, src: Path, dst: Path, prow: _Row) -> None:
        need = prow.size if prow.size is not None else 0
        st = os.statvfs(dst)
        free = st.f_bavail * st.f_frsize
        if free - need < self.reserve_bytes:
            raise OutOfSpaceError(
                f"copying snapshot {prow.key!r} ({need} bytes) would leave less than the "
                f"reserve of {self.reserve_bytes} bytes free ({free} free)"
            )
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", f"{src}/.", f"{dst}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            msg = proc.stderr.strip()
            if "No space left" in msg or "Disk quota" in msg:
                raise OutOfSpaceError(f"copying snapshot {prow.key!r}: {msg}")
            raise CargoholdError(f"copying snapshot {prow.key!r} failed: {msg}")

    def commit(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        """See the Snapshotter protocol.  ``labels`` None keeps the active snapshot's labels.

        The usage of the committed snapshot is measured here (as containerd's overlay
        snapshotter does) and served by ``usage`` from then on.
        """
        _check_key(name, "snapshot name")
        c = self._conn()
        row = self._must(c, key)
        if row.kind != KIND_ACTIVE:
            raise InvalidInputError(f"snapshot {key!r} is {row.kind}: only active ones commit")
        if parent is not None and parent != row.parent:
            if not self.standalone_layers:
                raise UnsupportedError(
                    f"the {self.backend} snapshotter cannot give snapshot {key!r} a parent at "
                    "commit: prepare it on its parent"
                )
            if row.parent:
                raise InvalidInputError(
                    f"snapshot {key!r} was prepared on {row.parent!r}; it cannot be committed "
                    f"onto {parent!r}"
                )
        labels_text = _labels_json(labels) if labels is not None else None
        if self._get(c, name) is not None:  # (again below, in the transaction)
            raise AlreadyExistsError(f"snapshot {name!r} already exists")
        self._lease(name)
        new_parent = row.parent if parent is None else parent
        self._fix_implicit_dirs(c, row, new_parent)
        marks = self._path(row.id) / (IMPLICIT_DIRS_FILE + OVERLAY_MARKS_SUFFIX)
        if marks.exists():  # applied in overlay mode without a parent (see the applier)
            if not new_parent:  # a bottom layer: its whiteouts hide nothing, as containerd's
                undo_overlay_marks(self._path(row.id) / "fs")
            marks.unlink()
        usage = disk_usage(self._path(row.id) / "fs")
        with self._write(f"committing snapshot {key} as {name}") as c:
            row2 = self._must(c, key)
            if row2.id != row.id or row2.kind != KIND_ACTIVE:
                raise ConflictError(f"snapshot {key!r} changed while committing")
            if self._get(c, name) is not None:
                raise AlreadyExistsError(f"snapshot {name!r} already exists")
            if new_parent:
                self._check_parent(c, new_parent)
            c.execute(
                "UPDATE snapshots SET key = ?, kind = ?, parent = ?, labels = ?, updated_at = ?,"
                " size = ?, inodes = ? WHERE id = ?",
                (
                    name,
                    KIND_COMMITTED,
                    new_parent,
                    labels_text if labels_text is not None else _labels_json(row.labels),
                    _now(),
                    usage.size,
                    usage.inodes,
                    row.id,
                ),
            )
        shutil.rmtree(self._path(row.id) / "work", ignore_errors=True)

    def _fix_implicit_dirs(self, c: sqlite3.Connection, row: _Row, parent: str) -> None:
        """A layer applied without its parents: directories it created implicitly take the
        metadata the parent chain has for them (what the applier does when it knows them)."""
        log = self._path(row.id) / IMPLICIT_DIRS_FILE
        try:
            data = log.read_bytes()
        except FileNotFoundError:
            return
        if parent and self.backend == "overlay":
            prow = self._check_parent(c, parent)
            lowers = [self._path(i) / "fs" for i in self._chain_ids(c, prow.key)]
            copy_lower_dir_metadata(self._path(row.id) / "fs", data.split(b"\0"), lowers)
        log.unlink()

    def remove(self, key: str) -> None:
        with self._write(f"removing snapshot {key}") as c:
            row = self._must(c, key)
            kids = c.execute(
                "SELECT key FROM snapshots WHERE parent = ? LIMIT 5", (key,)
            ).fetchall()
            if kids:
                raise ConflictError(
                    f"snapshot {key!r} has children ({', '.join(repr(k[0]) for k in kids)}); "
                    "remove them first"
                )
            c.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
            path = self._path(row.id)
            gone = self.dir / f"rm-{row.id}"
            try:
                os.rename(path, gone)
            except FileNotFoundError:
                return
        self._rmtree(gone)

    @staticmethod
    def _rmtree(path: Path) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CargoholdError(
                f"removing {path} failed: {e}",
                hint="is it still mounted? `cargohold gc` removes it later",
            ) from e

    def cleanup(self) -> builtins.list[str]:
        """Remove directories without a row (interrupted prepare/remove).

        Only safe while no other process creates snapshots (gc holds the root lock).
        """
        ids = {int(r[0]) for r in self._conn().execute("SELECT id FROM snapshots").fetchall()}
        removed: builtins.list[str] = []
        for entry in os.scandir(self.dir):
            n = entry.name
            if not entry.is_dir(follow_symlinks=False):
                continue
            if n.startswith(("new-", "rm-")) or (n.isdigit() and int(n) not in ids):
                with suppress(OSError):
                    shutil.rmtree(entry.path)
                    removed.append(n)
        return removed

    # ------------------------------------------------------------ garbage collection

    def roots(self) -> Iterable[Node]:
        from cargohold.store.gcmark import Node

        for info in self.walk():
            if LABEL_GC_ROOT in info.labels:
                yield Node.snapshot(self.name, info.name)

    def references(self, node: Node) -> Iterable[Node]:
        from cargohold.store.gcmark import Node, references_from_labels

        if node.kind != "snapshot" or node.snapshotter != self.name:
            return []
        row = self._get(self._conn(), node.id)
        if row is None:
            return []
        out = references_from_labels(row.labels)
        if row.parent:
            out.append(Node.snapshot(self.name, row.parent))
        return out

    def sweep(self, marked: Set[Node], *, dry_run: bool) -> builtins.list[Removed]:
        """Remove every snapshot not in ``marked``, children before parents."""
        from cargohold.store.embedded.gc import Removed
        from cargohold.store.gcmark import Node

        rows = [
            _Row.of(r) for r in self._conn().execute(f"SELECT {_COLS} FROM snapshots").fetchall()
        ]
        doomed = {r.key: r for r in rows if Node.snapshot(self.name, r.key) not in marked}
        removed: builtins.list[Removed] = []
        # Leaves first: a doomed snapshot can go once none of its children remain.
        remaining = dict(doomed)
        parents_of = {r.key: r.parent for r in rows}
        while remaining:
            live_parents = {p for k, p in parents_of.items() if p}
            leaves = [k for k in remaining if k not in live_parents]
            if not leaves:
                break  # a marked child keeps its parent (cannot happen: parents are edges)
            for k in leaves:
                row = remaining.pop(k)
                # Active snapshots (a killed unpack's) have no size recorded: measure them.
                size = row.size if row.size is not None else disk_usage(self._path(row.id)).size
                if not dry_run:
                    with suppress(NotFoundError):
                        self.remove(k)
                removed.append(Removed("snapshot", f"{self.name}/{k}", size))
                parents_of.pop(k, None)
        if not dry_run:
            self.cleanup()
        return removed
