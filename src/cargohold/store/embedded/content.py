"""The embedded content store: blobs on disk, ingests like containerd's local store, labels in SQLite.

Layout under ``<root>/content``::

    blobs/<alg>/<hex>              committed blobs (read-only, the filesystem is the truth)
    ingest/<sha256(ref)>/          one directory per ingest (resumable download)
        lock                       flock'ed by the one live writer of this ref
        ref total expected         what the ingest is (text files)
        startedat updatedat        RFC 3339 timestamps
        data                       the bytes written so far

Durability: ``commit`` fdatasyncs the data, links it into ``blobs/`` (atomic, fails if the
blob appeared meanwhile), fsyncs the directory, then records labels in SQLite. A crash
between any two steps leaves either a resumable ingest or a committed blob whose row may be
missing (``info`` still works from ``stat``; its labels are written again by the rerun).
Writes are not fsynced before commit: a resumed ingest is re-hashed from disk and the
final digest check catches a torn tail after a power loss.

Out of space: ENOSPC/EDQUOT from ``write`` -> OutOfSpaceError, the data file is cut back to
the last whole ``write`` and the ingest is **kept** (resume after freeing space; ``abort``
or gc drops it). From the fsync in ``commit`` -> OutOfSpaceError and the ingest is
**dropped**, since after a failed fsync the page cache may no longer match the disk.
Committed blobs are never touched by either.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cargohold.atomicfile import fsync_dir
from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    ConflictError,
    DigestMismatchError,
    IngestLockedError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
)
from cargohold.filehash import hash_fd
from cargohold.oci.digest import ALGORITHMS, Digest
from cargohold.singleflight import SingleFlight
from cargohold.store.embedded.leases import EmbeddedLeaseManager, parse_rfc3339
from cargohold.store.embedded.metadata import (
    MetadataDB,
    dump_labels,
    load_labels,
    now,
    parse_ts,
    ts,
)
from cargohold.store.interfaces import ContentInfo, IngestStatus, LeaseResource, active_lease

__all__ = [
    "EmbeddedContentStore",
    "EmbeddedContentWriter",
    "IngestEntry",
    "SingleFlight",
    "ingest_key",
]

BLOBS = "blobs"
INGEST = "ingest"
_CHUNK = 1 << 20
_NOSPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK})


class _Locked(Exception):
    """The ingest's lock file is flock'ed by a live writer."""


def ingest_key(ref: str) -> str:
    """The ingest directory name of ``ref`` (refs may contain any character)."""
    return hashlib.sha256(ref.encode()).hexdigest()


def _os_error(e: OSError, what: str) -> CargoholdError:
    if e.errno in _NOSPACE:
        return OutOfSpaceError(f"{what}: {e.strerror or e}")
    return CargoholdError(f"{what}: {e}")


def _write_small(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read_small(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _lock_ingest(path: Path, *, create: bool) -> int | None:
    """Take the ingest's flock (non-blocking) and return its fd.

    None if the ingest does not exist (and ``create`` is false). Raises _Locked if a live
    writer holds it. After locking, the lock file must still be the one at the path: if
    the ingest was removed (and maybe recreated) meanwhile, start over.
    """
    lock_path = path / "lock"
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    for _ in range(20):
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                # mkdir met the directory, and another writer's cleanup removed it before
                # pathlib's is_dir() check: start over (two pulls of one image at once).
                continue
        try:
            fd = os.open(lock_path, flags, 0o644)
        except FileNotFoundError:
            if create:
                continue  # the directory was removed between mkdir and open
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _Locked() from None
        except BaseException:
            os.close(fd)
            raise
        st = os.fstat(fd)
        try:
            cur = os.stat(lock_path)
        except FileNotFoundError:
            cur = None
        if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)
        if not create:
            return None
    raise ConflictError(f"ingest {path.name} keeps being removed while it is opened")


def _remove_ingest_dir(path: Path, lock_fd: int) -> None:
    """Remove a locked ingest directory; the lock file goes last, then the lock is released."""
    try:
        for entry in os.scandir(path):
            if entry.name != "lock":
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
                except IsADirectoryError:  # pragma: no cover - not made by us
                    pass
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / "lock")
        # OSError: a new writer of the same ref already created its lock file inside.
        with contextlib.suppress(OSError):
            os.rmdir(path)
    finally:
        os.close(lock_fd)


@dataclass(frozen=True)
class IngestEntry:
    """An ingest directory as gc sees it (``ref`` None if its metadata is incomplete)."""

    key: str
    path: Path
    ref: str | None
    size: int


class EmbeddedContentWriter:
    """An open ingest (ContentWriter). One thread at a time; not shared between threads."""

    def __init__(
        self,
        store: EmbeddedContentStore,
        ref: str,
        path: Path,
        lock_fd: int,
        data_fd: int,
        offset: int,
        algorithm: str,
        hasher: hashlib._Hash,
        lease: str | None,
    ) -> None:
        self._store = store
        self._ref = ref
        self._path = path
        self._lock_fd: int | None = lock_fd
        self._fd: int | None = data_fd
        self._offset = offset
        self._algorithm = algorithm
        self._hash = hasher
        self._lease = lease

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _data_fd(self) -> int:
        if self._fd is None:
            raise CargoholdError(f"ingest {self._ref!r}: writer is closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        fd = self._data_fd()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        done = 0
        try:
            while done < n:
                done += os.write(fd, view[done:] if done else view)
        except OSError as e:
            if done:  # cut back to the last whole write, so data and hash agree
                try:
                    os.ftruncate(fd, self._offset)
                    os.lseek(fd, self._offset, os.SEEK_SET)
                except OSError:  # pragma: no cover - truncating down frees space
                    self._drop_quietly()
            raise _os_error(e, f"writing ingest {self._ref!r}") from e
        self._hash.update(view)
        self._offset += n
        return n

    def truncate(self, size: int) -> None:
        fd = self._data_fd()
        if size < 0 or size > self._offset:
            raise InvalidInputError(
                f"ingest {self._ref!r}: cannot truncate to {size} (offset {self._offset})"
            )
        try:
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
        except OSError as e:
            raise _os_error(e, f"truncating ingest {self._ref!r}") from e
        self._hash = hash_fd(fd, self._algorithm, size)
        self._offset = size

    def digest(self) -> Digest:
        return Digest(self._algorithm, self._hash.hexdigest())

    def commit(
        self, size: int, expected: Digest, labels: Mapping[str, str] | None = None
    ) -> ContentInfo:
        fd = self._data_fd()
        labels_json = dump_labels(labels or {})
        if size != self._offset:
            self._drop_quietly()
            raise DigestMismatchError(
                f"{expected}: ingest {self._ref!r} has {self._offset} bytes, expected {size}"
            )
        if expected.algorithm == self._algorithm:
            got = self.digest()
        else:
            got = Digest(expected.algorithm, hash_fd(fd, expected.algorithm, size).hexdigest())
        if got != expected:
            self._drop_quietly()
            raise DigestMismatchError(f"content has digest {got}, expected {expected}")
        try:
            os.fdatasync(fd)
        except OSError as e:
            self._drop_quietly()
            raise _os_error(e, f"syncing ingest {self._ref!r}") from e
        store = self._store
        target = store.blob_path(expected)
        data = self._path / "data"
        try:
            os.fchmod(fd, 0o444)
            target.parent.mkdir(parents=True, exist_ok=True)
            created = store._publish(data, target)
            if created:
                fsync_dir(target.parent)
        except OSError as e:
            self.close()  # verified and synced: keep the ingest, a retry commits it
            raise _os_error(e, f"committing {expected}") from e
        if not created:
            self._drop_quietly()
            store._lease_content(self._lease, expected, drop_ingest=self._ref)
            raise AlreadyExistsError(f"content {expected} already exists")
        at = now()
        try:
            with store._db.write(f"recording {expected}") as c:
                c.execute(
                    "INSERT INTO content (digest, size, created_at, updated_at, labels) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE SET "
                    "size = excluded.size, created_at = excluded.created_at, "
                    "updated_at = excluded.updated_at, "
                    # Merged, not replaced: a reader may have labelled the blob (e.g. an
                    # unpack's gc.ref.snapshot) between the file appearing and this row.
                    "labels = json_patch(coalesce(content.labels, '{}'), excluded.labels)",
                    (str(expected), size, ts(at), ts(at), labels_json),
                )
                if self._lease:
                    store._lease_swap_in(c, self._lease, expected, self._ref)
        finally:
            self._drop_quietly()
        return ContentInfo(expected, size, at, at, dict(labels or {}))

    def close(self) -> None:
        """Release the writer; the ingest stays on disk for a later resume."""
        fd, self._fd = self._fd, None
        if fd is not None:
            # Only a timestamp: status() falls back to the data file's mtime.
            with contextlib.suppress(OSError):
                _write_small(self._path / "updatedat", _rfc3339(now()))
            os.close(fd)
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    def _drop_quietly(self) -> None:
        """Close and remove the ingest (used after commit, or when its data is unusable)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            _remove_ingest_dir(self._path, lock_fd)

    def __enter__(self) -> EmbeddedContentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


class EmbeddedContentStore:
    """ContentStore over ``<root>/content`` and ``metadata.db``. Thread-safe."""

    def __init__(self, root: Path, db: MetadataDB, leases: EmbeddedLeaseManager) -> None:
        self.root = root
        self.blobs_dir = root / BLOBS
        self.ingest_dir = root / INGEST
        self._db = db
        self._leases = leases

    # ------------------------------------------------------------ paths

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex

    def ingest_path(self, ref: str) -> Path:
        return self.ingest_dir / ingest_key(ref)

    # ------------------------------------------------------------ committed content

    def info(self, digest: Digest) -> ContentInfo:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFoundError(f"content {digest} not found") from None
        rows = self._db.query(
            "SELECT created_at, updated_at, labels FROM content WHERE digest = ?", (str(digest),)
        )
        if rows:
            created, updated, labels = rows[0]
            return ContentInfo(digest, st.st_size, parse_ts(created), parse_ts(updated),
                               load_labels(labels))
        mtime = datetime.fromtimestamp(st.st_mtime, UTC)
        return ContentInfo(digest, st.st_size, mtime, mtime, {})

    def update(self, digest: Digest, labels: Mapping[str, str | None]) -> ContentInfo:
        for k, v in labels.items():
            if not isinstance(k, str) or not (v is None or isinstance(v, str)):
                raise InvalidInputError(f"labels must map strings to strings or None ({k!r})")
        key = str(digest)
        with self._db.write(f"updating labels of {digest}") as c:
            try:
                st = os.stat(self.blob_path(digest))
            except FileNotFoundError:
                raise NotFoundError(f"content {digest} not found") from None
            row = c.execute(
                "SELECT created_at, labels FROM content WHERE digest = ?", (key,)
            ).fetchone()
            if row is not None:
                created = parse_ts(row[0])
                current = load_labels(row[1])
            else:
                created = datetime.fromtimestamp(st.st_mtime, UTC)
                current = {}
            for k, v in labels.items():
                if v is None:
                    current.pop(k, None)
                else:
                    current[k] = v
            at = now()
            c.execute(
                "INSERT INTO content (digest, size, created_at, updated_at, labels) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE SET "
                "size = excluded.size, updated_at = excluded.updated_at, labels = excluded.labels",
                (key, st.st_size, ts(created), ts(at), dump_labels(current)),
            )
        return ContentInfo(digest, st.st_size, created, at, current)

    def walk(self) -> Iterator[ContentInfo]:
        """Committed blobs present on disk (rows without a file are skipped; gc drops them)."""
        rows = {
            d: (c, u, lb)
            for d, c, u, lb in self._db.query(
                "SELECT digest, created_at, updated_at, labels FROM content"
            )
        }
        for digest, st in self.iter_blob_files():
            row = rows.get(str(digest))
            if row is not None:
                yield ContentInfo(digest, st.st_size, parse_ts(row[0]), parse_ts(row[1]),
                                  load_labels(row[2]))
            else:
                mtime = datetime.fromtimestamp(st.st_mtime, UTC)
                yield ContentInfo(digest, st.st_size, mtime, mtime, {})

    def delete(self, digest: Digest) -> None:
        """Remove a blob (file first, then its row). NotFoundError if it is not on disk."""
        if not self.remove_blob(digest)[0]:
            raise NotFoundError(f"content {digest} not found")

    def reader(self, digest: Digest) -> BinaryIO:
        """An open, seekable binary file over the blob (also a context manager)."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"content {digest} not found") from None

    # ------------------------------------------------------------ ingests

    def writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> EmbeddedContentWriter:
        """Open or resume the ingest ``ref`` (exclusive across threads and processes).

        AlreadyExistsError if ``expected`` is committed (the blob joins the active lease);
        IngestLockedError if another writer holds ``ref``. A resumed ingest keeps its data
        (re-hashed from disk) unless it was started for a different ``expected`` or
        ``total``, in which case it restarts from 0. Under an active lease the ingest (and,
        on commit, the blob instead) becomes a resource of that lease.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidInputError("an ingest needs a non-empty ref")
        if total < 0:
            raise InvalidInputError(f"ingest {ref!r}: total must not be negative")
        lease = active_lease.get()
        if expected is not None and self.blob_path(expected).exists():
            self._lease_content(lease, expected)
            raise AlreadyExistsError(f"content {expected} already exists")
        path = self.ingest_path(ref)
        try:
            lock_fd = _lock_ingest(path, create=True)
        except _Locked:
            raise IngestLockedError(
                f"ref {ref!r} locked: another writer is using this ingest"
            ) from None
        except OSError as e:
            raise _os_error(e, f"opening ingest {ref!r}") from e
        assert lock_fd is not None
        try:
            if lease:
                self._leases.add_resource(lease, LeaseResource("ingest", ref))
            return self._open_ingest(ref, path, lock_fd, total, expected, lease)
        except BaseException:
            os.close(lock_fd)
            raise

    def _open_ingest(
        self,
        ref: str,
        path: Path,
        lock_fd: int,
        total: int,
        expected: Digest | None,
        lease: str | None,
    ) -> EmbeddedContentWriter:
        old = self._read_status(path)
        reset = (
            old is None
            or old.ref != ref
            or (expected is not None and old.expected is not None and old.expected != expected)
            or (total > 0 and old.total > 0 and old.total != total)
        )
        data = path / "data"
        try:
            if reset:
                # Incomplete until 'ref' is written again, last.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path / "ref")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(data)
                stamp = _rfc3339(now())
                _write_small(path / "total", str(total))
                _write_small(path / "expected", str(expected) if expected else "")
                _write_small(path / "startedat", stamp)
                _write_small(path / "updatedat", stamp)
                _write_small(path / "ref", ref)
            else:
                assert old is not None
                if total > 0 and old.total == 0:
                    _write_small(path / "total", str(total))
                if expected is not None and old.expected is None:
                    _write_small(path / "expected", str(expected))
                expected = expected or old.expected
                total = total or old.total
            try:
                st = os.stat(data)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_nlink > 1:
                # A crash between linking into blobs/ and cleaning up: the data *is* a
                # committed blob now; never write through that link.
                os.unlink(data)
            elif st is not None and not st.st_mode & 0o200:
                os.chmod(data, 0o644)
            fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _os_error(e, f"opening ingest {ref!r}") from e
        try:
            size = os.fstat(fd).st_size
            if total > 0 and size > total:
                os.ftruncate(fd, 0)
                size = 0
            algorithm = expected.algorithm if expected is not None else "sha256"
            hasher = hash_fd(fd, algorithm, size)
            os.lseek(fd, size, os.SEEK_SET)
        except OSError as e:
            os.close(fd)
            raise _os_error(e, f"resuming ingest {ref!r}") from e
        except BaseException:
            os.close(fd)
            raise
        return EmbeddedContentWriter(self, ref, path, lock_fd, fd, size, algorithm, hasher, lease)

    def status(self, ref: str) -> IngestStatus:
        st = self._read_status(self.ingest_path(ref))
        if st is None or st.ref != ref:
            raise NotFoundError(f"ingest {ref!r} not found")
        return st

    def list_statuses(self) -> builtins.list[IngestStatus]:
        out = []
        for e in self.ingests():
            if e.ref is None:
                continue
            st = self._read_status(e.path)
            if st is not None:
                out.append(st)
        return sorted(out, key=lambda s: s.ref)

    def abort(self, ref: str) -> None:
        """Remove an ingest. NotFoundError if absent, ConflictError if a writer holds it."""
        path = self.ingest_path(ref)
        if not path.is_dir():
            raise NotFoundError(f"ingest {ref!r} not found")
        try:
            fd = _lock_ingest(path, create=True)
        except _Locked:
            raise ConflictError(f"ref {ref!r} locked: a writer is using this ingest") from None
        assert fd is not None
        _remove_ingest_dir(path, fd)

    def _read_status(self, path: Path) -> IngestStatus | None:
        ref = _read_small(path / "ref")
        if ref is None:
            return None
        try:
            total = int(_read_small(path / "total") or 0)
            exp_text = (_read_small(path / "expected") or "").strip()
            expected = Digest.parse(exp_text) if exp_text else None
            started = parse_rfc3339(_read_small(path / "startedat") or "")
        except (ValueError, CargoholdError):
            return None
        try:
            dst = os.stat(path / "data")
            offset = dst.st_size
            mtime: datetime | None = datetime.fromtimestamp(dst.st_mtime, UTC)
        except FileNotFoundError:
            offset, mtime = 0, None
        try:
            updated = parse_rfc3339(_read_small(path / "updatedat") or "")
        except ValueError:
            updated = started
        if mtime is not None and mtime > updated:
            updated = mtime
        return IngestStatus(ref, offset, total, expected, started, updated)

    # ------------------------------------------------------------ leases

    def _lease_content(
        self, lease: str | None, digest: Digest, drop_ingest: str | None = None
    ) -> None:
        """Attach existing content to the active lease (as containerd does on AlreadyExists)."""
        if not lease:
            return
        with self._db.write("adding content to the lease") as c:
            self._lease_swap_in(c, lease, digest, drop_ingest)

    @staticmethod
    def _lease_swap_in(
        c: sqlite3.Connection, lease: str, digest: Digest, ingest_ref: str | None
    ) -> None:
        EmbeddedLeaseManager.add_resource_in(c, lease, LeaseResource("content", str(digest)))
        if ingest_ref is not None:
            c.execute(
                "DELETE FROM lease_resources WHERE lease_id = ? AND type = 'ingest' AND id = ?",
                (lease, ingest_ref),
            )

    # ------------------------------------------------------------ for commit and gc

    def _publish(self, data: Path, target: Path) -> bool:
        """Move verified data to its blob path; False if the blob exists already."""
        try:
            os.link(data, target)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            if target.exists():  # a filesystem without hard links: rename (racy but safe)
                return False
            os.rename(data, target)
            return True
        os.unlink(data)
        return True

    def iter_blob_files(self) -> Iterator[tuple[Digest, os.stat_result]]:
        """(digest, stat) of every committed blob file; stray names are skipped."""
        for alg in ALGORITHMS:
            d = self.blobs_dir / alg
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    digest = Digest.parse(f"{alg}:{entry.name}")
                    st = entry.stat(follow_symlinks=False)
                except (CargoholdError, FileNotFoundError):
                    continue
                yield digest, st

    def labels_by_digest(self) -> dict[str, dict[str, str]]:
        """Every content row's labels (rows may exist for missing files)."""
        return {d: load_labels(lb) for d, lb in self._db.query("SELECT digest, labels FROM content")}

    def remove_blob(self, digest: Digest) -> tuple[bool, int]:
        """Delete the file, then the row. Returns (file existed, bytes freed)."""
        path = self.blob_path(digest)
        freed = 0
        existed = True
        try:
            st = os.stat(path)
            freed = st.st_size if st.st_nlink == 1 else 0
            os.unlink(path)
        except FileNotFoundError:
            existed = False
            freed = 0
        except OSError as e:
            raise _os_error(e, f"deleting {digest}") from e
        with self._db.write(f"deleting {digest}") as c:
            c.execute("DELETE FROM content WHERE digest = ?", (str(digest),))
        return existed, freed

    def remove_rows_without_files(self) -> int:
        """Drop content rows whose blob file is gone (a crash between file and row)."""
        removed = 0
        with self._db.write("dropping stale content rows") as c:
            for (key,) in c.execute("SELECT digest FROM content").fetchall():
                try:
                    d = Digest.parse(key)
                except CargoholdError:
                    d = None
                if d is None or not self.blob_path(d).exists():
                    c.execute("DELETE FROM content WHERE digest = ?", (key,))
                    removed += 1
        return removed

    def ingests(self) -> builtins.list[IngestEntry]:
        """Every ingest directory, complete or not."""
        out = []
        try:
            entries = list(os.scandir(self.ingest_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            ref = _read_small(path / "ref")
            try:
                st = os.stat(path / "data")
                size = st.st_size if st.st_nlink == 1 else 0
            except (FileNotFoundError, NotADirectoryError):
                size = 0
            out.append(IngestEntry(entry.name, path, ref, size))
        return out

    def remove_ingest_if_idle(self, entry: IngestEntry, *, dry_run: bool = False) -> bool:
        """Remove an ingest unless a live writer holds it. True if removed (or, with
        ``dry_run``, if it would be)."""
        try:
            fd = _lock_ingest(entry.path, create=False)
            if fd is None:
                # No lock file (a crash while creating the ingest): nobody can hold it.
                if not entry.path.is_dir():
                    return False
                if dry_run:
                    return True
                fd = _lock_ingest(entry.path, create=True)
        except _Locked:
            return False
        assert fd is not None
        if dry_run:
            os.close(fd)
            return True
        _remove_ingest_dir(entry.path, fd)
        return True
