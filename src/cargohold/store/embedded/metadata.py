"""``metadata.db``: the SQLite database behind labels, images and leases.

Settings and why:

* ``journal_mode=WAL``: readers never block the writer and vice versa (fetch threads read
  labels while another thread commits); one writer at a time, serialised by SQLite.
* ``synchronous=NORMAL``: in WAL mode this never corrupts the database; a power loss can
  drop the *last* transactions, but always a suffix, in commit order (so an image record is
  never kept while the labels written before it are lost). The blobs themselves do not depend
  on it: they are fsynced and renamed before their row is written, and the filesystem is the
  truth for blobs. What a power loss can lose (labels, a record) a rerun of the same command
  writes again. ``close()`` checkpoints the WAL into the database (which fsyncs), so a command
  that finished cleanly is durable. FULL would add an fsync per transaction for no gain
  in consistency.
* ``foreign_keys=ON`` (lease resources cascade with their lease), ``busy_timeout`` 30 s
  (concurrent cargohold processes share one root).
* One connection per thread, created lazily: the store is used from thread pools, and
  SQLite connections must not be used by two threads at once. Write transactions are
  explicit ``BEGIN IMMEDIATE`` so two writers never deadlock upgrading read locks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.errors import (
    CargoholdError,
    ConflictError,
    InvalidInputError,
    OutOfSpaceError,
    StoreDamagedError,
    UnsupportedError,
)

DB_FILE = "metadata.db"

#: Migrations, in order; the database's ``schema_version`` is the number applied.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE content (
            digest TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE images (
            name TEXT PRIMARY KEY,
            target_media_type TEXT NOT NULL,
            target_digest TEXT NOT NULL,
            target_size INTEGER NOT NULL,
            target_annotations TEXT NOT NULL DEFAULT '{}',
            target_extra TEXT NOT NULL DEFAULT '{}',
            labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE leases (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE lease_resources (
            lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (lease_id, type, id)
        )""",
        "CREATE INDEX lease_resources_by_resource ON lease_resources(type, id)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)

_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def now() -> datetime:
    return datetime.now(UTC)


def ts(dt: datetime) -> str:
    """A stored timestamp: ISO 8601 in UTC with microseconds."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def dump_labels(labels: Mapping[str, str]) -> str:
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInputError(f"labels must map strings to strings (got {k!r}: {v!r})")
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def load_labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    obj: Any = json.loads(text)
    return {str(k): str(v) for k, v in obj.items()} if isinstance(obj, dict) else {}


def _primary_code(e: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``e`` (extended codes such as SQLITE_BUSY_RECOVERY
    folded into their primary code), or None."""
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_busy(e: sqlite3.Error) -> bool:
    """Whether ``e`` says another connection holds a lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    return _primary_code(e) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def translate(e: sqlite3.Error, what: str, kind: str = "metadata") -> CargoholdError:
    """Map an SQLite error to cargohold's error tree (``kind``: whose database it is)."""
    code = _primary_code(e)
    if code == _SQLITE_FULL:
        return OutOfSpaceError(f"{what}: no space left for the {kind} database ({e})")
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return ConflictError(f"{what}: the {kind} database stayed busy ({e})")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreDamagedError(f"{what}: the {kind} database is damaged ({e})")
    return CargoholdError(f"{what}: {kind} database error: {e}")


def _holds_data(d: Path, depth: int, ignore: frozenset[str]) -> bool:
    """Whether directory ``d`` holds a file ``depth`` levels down (names in ``ignore`` at
    the top level do not count)."""
    try:
        with os.scandir(d) as it:
            for entry in it:
                if entry.name in ignore:
                    continue
                if depth <= 1 or (entry.is_dir(follow_symlinks=False)
                                  and _holds_data(Path(entry.path), depth - 1, frozenset())):
                    return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise StoreDamagedError(f"cannot read {d}: {e.strerror or e}") from e
    return False


def check_not_orphaned(db_path: Path, data: list[tuple[Path, int]], *,
                       ignore: frozenset[str] = frozenset()) -> None:
    """StoreDamagedError when ``db_path`` is missing or empty while one of the ``data``
    directories (each with the depth its files are at) holds files: that database was lost,
    and starting a fresh one would hide (and let gc delete) everything it described."""
    try:
        size: int | None = db_path.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError as e:
        raise StoreDamagedError(f"cannot read {db_path}: {e.strerror or e}") from e
    if size:
        return
    for d, depth in data:
        if _holds_data(d, depth, ignore):
            state = "missing" if size is None else "empty (0 bytes)"
            raise StoreDamagedError(
                f"{db_path} is {state} but {d} holds data: the store's records are lost")


class SqliteDB:
    """An SQLite database shared by threads: per-thread connections in autocommit mode,
    explicit write transactions, errors mapped to cargohold's (``kind`` names it in them),
    a WAL checkpoint on close. ``closed_name`` says what was closed if it is used after."""

    def __init__(self, path: Path, *, timeout: float = 30.0, kind: str = "metadata",
                 closed_name: str = "", foreign_keys: bool = False) -> None:
        self.path = path
        self.kind = kind
        self._closed_name = closed_name or f"the {kind} database {path}"
        self._foreign_keys = foreign_keys
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use :meth:`write` for transactions)."""
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is not None:
            return c
        with self._lock:
            if self._closed:
                raise CargoholdError(f"{self._closed_name} is closed")
            c = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            self._conns.append(c)
        c.execute("PRAGMA synchronous=NORMAL")
        if self._foreign_keys:
            c.execute("PRAGMA foreign_keys=ON")
        self._local.conn = c
        return c

    def translate(self, e: sqlite3.Error, what: str) -> CargoholdError:
        return translate(e, what, self.kind)

    def set_up(self, steps: Callable[[sqlite3.Connection], None], what: str) -> None:
        """Run the opening ``steps`` (WAL mode, schema) on this thread's connection, retried
        while another process holds a lock. SQLite answers some of those races with an
        immediate SQLITE_BUSY that skips the busy handler (switching to WAL, WAL recovery
        while a second process opens the same new database), so ``timeout`` is honoured
        here. Closes the database and raises the translated error when it does not settle."""
        deadline = time.monotonic() + self._timeout
        pause = 0.005
        while True:
            try:
                steps(self.conn())
                return
            except sqlite3.Error as e:
                if not is_busy(e) or time.monotonic() >= deadline:
                    self.close()
                    raise self.translate(e, what) from e
            except BaseException:
                self.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    @contextmanager
    def write(self, what: str = "writing metadata") -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        c = self.conn()
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.translate(e, what) from e
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            with suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self.translate(e, what) from e
            raise

    def query(self, sql: str, params: tuple[Any, ...] = (), what: str = "reading metadata") -> list[Any]:
        """Run one read statement and return all rows."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self.translate(e, what) from e

    def close(self) -> None:
        """Checkpoint the WAL (durable from here on) and close every thread's connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns, self._conns = self._conns, []
        if conns:
            # May fail while another process reads; the last connection to close checkpoints.
            with suppress(sqlite3.Error):
                conns[0].execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for c in conns:
            with suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()


class MetadataDB(SqliteDB):
    """The store's SQLite database (schema migrated on open)."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        super().__init__(path, timeout=timeout, closed_name=f"the store's database {path}",
                         foreign_keys=True)
        self.set_up(self._open_steps, f"opening {path}")

    def _open_steps(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise UnsupportedError(
                    f"{self.path} has schema version {current}; this cargohold knows up to "
                    f"{SCHEMA_VERSION} (upgrade cargohold)"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version - 1]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        row = self.query("SELECT MAX(version) FROM schema_version")
        return int(row[0][0]) if row and row[0][0] is not None else 0

