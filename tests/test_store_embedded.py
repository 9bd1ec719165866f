"""The embedded store's own behaviour: layout, crash safety, out of space, locks, gc details.

Backend-neutral behaviour is in tests/conformance/.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold.errors import (
    AlreadyExistsError,
    ConflictError,
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
)
from cargohold.labels import GC_REF_CONTENT, GC_REF_SNAPSHOT, LABEL_GC_EXPIRE, LABEL_GC_ROOT
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.singleflight import SingleFlight
from cargohold.store.embedded import EmbeddedStore, RootLock
from cargohold.store.embedded.gc import Removed, collect
from cargohold.store.embedded.metadata import SCHEMA_VERSION
from cargohold.store.gcmark import Node
from cargohold.store.interfaces import (
    Image,
    LeaseResource,
    active_lease,
)
from tests.rig.needs import missing, require_root

MiB = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[EmbeddedStore]:
    with EmbeddedStore(root) as s:
        yield s


def put(s: EmbeddedStore, data: bytes, labels: dict[str, str] | None = None) -> Digest:
    d = Digest.from_bytes(data)
    with s.content.writer(f"put-{d.hex}", total=len(data), expected=d) as w:
        w.write(data)
        w.commit(len(data), d, labels)
    return d


def blob_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "content" / "blobs").rglob("*") if p.is_file())


def ingest_dirs(root: Path) -> list[Path]:
    return sorted((root / "content" / "ingest").iterdir())


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- layout


def test_layout(store: EmbeddedStore, root: Path) -> None:
    assert (root / "content" / "blobs").is_dir()
    assert (root / "content" / "ingest").is_dir()
    assert (root / "lock").is_file()
    tag = (root / "CACHEDIR.TAG").read_text()
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55\n")
    c = sqlite3.connect(root / "metadata.db")
    try:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        c.close()
    assert store.db.conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_ingest_layout_like_containerd(store: EmbeddedStore, root: Path) -> None:
    data = os.urandom(1000)
    d = Digest.from_bytes(data)
    with store.content.writer("my ref/with:odd chars", total=len(data), expected=d) as w:
        w.write(data[:10])
    key = hashlib.sha256(b"my ref/with:odd chars").hexdigest()
    path = root / "content" / "ingest" / key
    assert {"data", "ref", "total", "expected", "startedat", "updatedat"} <= {
        p.name for p in path.iterdir()
    }
    assert (path / "ref").read_text() == "my ref/with:odd chars"
    assert (path / "total").read_text() == "1000"
    assert (path / "expected").read_text() == str(d)
    assert (path / "data").read_bytes() == data[:10]


def test_reopen_keeps_everything_and_create_false(root: Path, tmp_path: Path) -> None:
    with EmbeddedStore(root) as s:
        d = put(s, b"persist", {"k": "v"})
        s.images.create(Image("img", Descriptor("application/x", d, 7)))
    with EmbeddedStore(root, create=False) as s:
        assert s.content.info(d).labels == {"k": "v"}
        assert s.images.get("img").target.digest == d
    with pytest.raises(NotFoundError):
        EmbeddedStore(tmp_path / "nothing-here", create=False)


def test_blob_on_disk_without_row_still_has_info(store: EmbeddedStore) -> None:
    """After a crash between publishing a blob and recording it: the file is the truth."""
    d = put(store, b"x" * 1234, {"a": "b"})
    with store.db.write() as c:
        c.execute("DELETE FROM content")
    info = store.content.info(d)
    assert (info.size, dict(info.labels)) == (1234, {})
    assert d in {i.digest for i in store.content.walk()}
    store.content.update(d, {"again": "1"})
    assert store.content.info(d).labels == {"again": "1"}


# ---------------------------------------------------------------- commit and resume


@pytest.mark.parametrize("wrong", ["digest", "size"])
def test_mismatch_leaves_nothing_in_blobs(store: EmbeddedStore, root: Path, wrong: str) -> None:
    data = os.urandom(50_000)
    d = Digest.from_bytes(data)
    with store.content.writer("bad", total=len(data)) as w:
        w.write(data)
        with pytest.raises(DigestMismatchError):
            if wrong == "digest":
                w.commit(len(data), Digest.from_bytes(b"other"))
            else:
                w.commit(len(data) - 1, d)
    assert blob_files(root) == []
    assert ingest_dirs(root) == []


def test_already_exists_leaves_a_single_file(store: EmbeddedStore, root: Path) -> None:
    data = os.urandom(10_000)
    d = Digest.from_bytes(data)
    w1 = store.content.writer("one", total=len(data))
    w2 = store.content.writer("two", total=len(data))
    w1.write(data)
    w2.write(data)
    w1.commit(len(data), d)
    with pytest.raises(AlreadyExistsError):
        w2.commit(len(data), d)
    assert blob_files(root) == [d.hex]
    assert ingest_dirs(root) == []
    assert (root / "content" / "blobs" / "sha256" / d.hex).read_bytes() == data


def test_committed_blobs_are_read_only(store: EmbeddedStore, root: Path) -> None:
    d = put(store, b"ro")
    assert os.stat(root / "content" / "blobs" / "sha256" / d.hex).st_mode & 0o222 == 0


def test_resume_never_writes_through_a_link_to_a_blob(store: EmbeddedStore, root: Path) -> None:
    """Crash after linking data into blobs/ but before the ingest was removed."""
    data = os.urandom(3000)
    d = put(store, data)
    with store.content.writer("half-done") as w:
        w.write(b"x")
    ingest = next(iter(ingest_dirs(root)))
    blob = root / "content" / "blobs" / "sha256" / d.hex
    os.unlink(ingest / "data")
    os.link(blob, ingest / "data")
    with store.content.writer("half-done") as w:
        assert w.offset == 0
        w.write(b"new bytes")
    assert blob.read_bytes() == data


def test_second_writer_in_another_process_conflicts(store: EmbeddedStore, root: Path) -> None:
    child = python(
        """
        import sys, time
        from cargohold.store.embedded import EmbeddedStore
        s = EmbeddedStore(sys.argv[1])
        w = s.content.writer("shared-ref")
        w.write(b"abc")
        print("ready", flush=True)
        time.sleep(60)
        """,
        str(root),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(ConflictError, match="locked"):
            store.content.writer("shared-ref")
    finally:
        child.kill()
        child.wait()
    with store.content.writer("shared-ref") as w:  # the kernel dropped the dead writer's lock
        assert w.offset == 3


def test_resume_streams(store: EmbeddedStore) -> None:
    """Re-hashing a resumed ingest and verifying a commit do not read the blob into memory."""
    size = 24 * MiB
    chunk = os.urandom(MiB)
    data_digest = hashlib.sha256()
    with store.content.writer("big", total=size) as w:
        for _ in range(size // MiB):
            w.write(chunk)
            data_digest.update(chunk)
    d = Digest("sha256", data_digest.hexdigest())
    tracemalloc.start()
    try:
        with store.content.writer("big", total=size) as w:
            assert w.offset == size
            w.commit(size, d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak


# ---------------------------------------------------------------- single flight


def test_singleflight_runs_once_for_concurrent_callers() -> None:
    sf = SingleFlight()
    release = threading.Event()
    calls: list[int] = []

    def work() -> int:
        calls.append(1)
        assert release.wait(10)
        return 42

    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(sf.do_shared, "k", work) for _ in range(8)]
        wait_until(lambda: sf.pending("k") == 8)
        release.set()
        results = [f.result() for f in futs]
    assert calls == [1]
    assert sorted(results) == [(42, False)] + [(42, True)] * 7
    assert sf.pending("k") == 0
    assert sf.do("k", lambda: 7) == 7  # finished calls are not cached


def test_singleflight_shares_errors_and_keys_are_independent() -> None:
    sf = SingleFlight()
    release = threading.Event()

    def boom() -> int:
        assert release.wait(10)
        raise NotFoundError("nope")

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(sf.do, "bad", boom) for _ in range(3)]
        wait_until(lambda: sf.pending("bad") == 3)
        assert sf.do("other", lambda: "fine") == "fine"
        release.set()
        for f in futs:
            with pytest.raises(NotFoundError):
                f.result()


def test_same_blob_wanted_by_many_threads_is_written_once(
    store: EmbeddedStore, root: Path
) -> None:
    data = os.urandom(4 * MiB)
    d = Digest.from_bytes(data)
    sf = SingleFlight()
    downloads: list[str] = []
    gate = threading.Event()

    def download() -> Digest:
        downloads.append(threading.current_thread().name)
        assert gate.wait(10)
        with store.content.writer(f"fetch-{d.hex}", total=len(data), expected=d) as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
            w.commit(len(data), d)
        return d

    with ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(sf.do, str(d), download) for _ in range(6)]
        wait_until(lambda: sf.pending(str(d)) == 6)
        gate.set()
        assert {f.result() for f in futs} == {d}
    assert len(downloads) == 1
    assert blob_files(root) == [d.hex]


def test_threads_share_the_store(store: EmbeddedStore) -> None:
    """Commits, label updates and reads from a pool (one SQLite connection per thread)."""
    blobs = [os.urandom(20_000 + i) for i in range(24)]

    def job(data: bytes) -> Digest:
        d = put(store, data, {"n": str(len(data))})
        store.content.update(d, {"seen": "1"})
        with store.content.reader(d) as r:
            assert r.read() == data
        return d

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(job, blobs))
    infos = {i.digest: i for i in store.content.walk()}
    for d, data in zip(digests, blobs, strict=True):
        assert infos[d].labels == {"n": str(len(data)), "seen": "1"}


# ---------------------------------------------------------------- crash


CHILD_WRITER = """
    import sys, time
    from cargohold.oci.digest import Digest
    from cargohold.store.embedded import EmbeddedStore
    from cargohold.store.interfaces import active_lease
    root, total, lease = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = (b"0123456789abcdef" * (total // 16 + 1))[:total]
    s = EmbeddedStore(root)
    if lease:
        active_lease.set(lease)
    w = s.content.writer("crash-ref", total=total, expected=Digest.from_bytes(data))
    step = 64 * 1024
    for i in range(0, total, step):
        w.write(data[i:i + step])
        if i == 16 * step:
            print("ready", flush=True)
        time.sleep(0.002)
    print("finished", flush=True)
    time.sleep(60)
"""
CRASH_TOTAL = 8 * MiB


def crash_data() -> bytes:
    return (b"0123456789abcdef" * (CRASH_TOTAL // 16 + 1))[:CRASH_TOTAL]


def kill_writer_midway(root: Path, lease: str = "") -> None:
    EmbeddedStore(root).close()
    child = python(CHILD_WRITER, str(root), str(CRASH_TOTAL), lease)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no cleanup, no close
        child.wait()


def test_killed_writer_leaves_a_resumable_ingest(root: Path) -> None:
    kill_writer_midway(root)
    data = crash_data()
    d = Digest.from_bytes(data)
    with EmbeddedStore(root) as s:
        st = s.content.status("crash-ref")
        assert 16 * 64 * 1024 < st.offset < CRASH_TOTAL
        assert (st.total, st.expected) == (CRASH_TOTAL, d)
        with s.content.writer("crash-ref", total=CRASH_TOTAL, expected=d) as w:
            assert w.offset == st.offset
            w.write(data[w.offset :])
            w.commit(CRASH_TOTAL, d)
        with s.content.reader(d) as r:
            assert hashlib.sha256(r.read()).hexdigest() == d.hex


def test_gc_cleans_a_killed_writers_ingest(root: Path) -> None:
    kill_writer_midway(root)
    with EmbeddedStore(root) as s:
        assert s.content.status("crash-ref").offset > 0
        result = collect(s)
        assert [(r.kind, r.id) for r in result.removed] == [("ingest", "crash-ref")]
        assert result.removed[0].size > 0
        with pytest.raises(NotFoundError):
            s.content.status("crash-ref")
    assert ingest_dirs(root) == []


def test_gc_keeps_a_killed_writers_ingest_under_its_lease(root: Path) -> None:
    with EmbeddedStore(root) as s:
        lease = s.leases.create()
    kill_writer_midway(root, lease.id)
    with EmbeddedStore(root) as s:
        assert collect(s).removed == []
        assert s.content.status("crash-ref").offset > 0


# ---------------------------------------------------------------- out of space


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    require_root("mounting a tiny tmpfs")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        missing(f"cannot mount a tiny tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode:  # still busy (a failed test left a file open): detach it anyway
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_out_of_space_keeps_committed_blobs_and_the_ingest(tiny_fs: Path) -> None:
    root = tiny_fs / "store"
    with EmbeddedStore(root) as s:
        small = os.urandom(100_000)
        kept = put(s, small, {"k": "v"})
        chunk = os.urandom(256 * 1024)
        w = s.content.writer("too-big", total=8 * MiB)
        with pytest.raises(OutOfSpaceError):
            for _ in range(32):
                w.write(chunk)
        assert w.offset % len(chunk) == 0
        assert 0 < w.offset < 2 * MiB
        assert w.digest() == Digest.from_bytes(chunk * (w.offset // len(chunk)))
        offset = w.offset
        w.close()
        # The data file was cut back to the last whole write: resumable.
        assert s.content.status("too-big").offset == offset
        with s.content.writer("too-big") as w2:
            assert w2.offset == offset
        # What was committed is intact and usable.
        with s.content.reader(kept) as r:
            assert r.read() == small
        assert s.content.info(kept).labels == {"k": "v"}
        # Freeing space makes the store writable again.
        s.content.abort("too-big")
        put(s, os.urandom(500_000))


# ---------------------------------------------------------------- root lock


def test_exclusive_root_lock_blocks_shared(root: Path) -> None:
    held = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with RootLock(root, exclusive=True, wait=False):
            held.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(ConflictError, match="exclusively"):
            RootLock(root, exclusive=False, wait=False).acquire()
        with pytest.raises(ConflictError):
            RootLock(root, exclusive=True, wait=False).acquire()
    finally:
        done.set()
        t.join()
    with RootLock(root, exclusive=False, wait=False), RootLock(root, exclusive=False, wait=False):
        pass


def test_shared_root_locks_coexist_and_block_exclusive(root: Path) -> None:
    child = python(
        """
        import sys, time
        from cargohold.store.embedded import RootLock
        with RootLock(sys.argv[1], exclusive=False):
            print("ready", flush=True)
            time.sleep(60)
        """,
        str(root),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with RootLock(root, exclusive=False, wait=False):
            pass
        with EmbeddedStore(root) as s, pytest.raises(ConflictError, match="gc needs it alone"):
            collect(s)
    finally:
        child.kill()
        child.wait()


def test_root_lock_is_reentrant_in_one_thread(root: Path, store: EmbeddedStore) -> None:
    with RootLock(root, exclusive=True, wait=False):
        with RootLock(root, exclusive=False, wait=False):
            pass
        collect(store)  # takes it again: no self-deadlock
        # still held exclusively after the nested releases
        other = threading.Thread(target=lambda: errors.append(_try_shared(root)))
        errors: list[bool] = []
        other.start()
        other.join()
        assert errors == [False]
    with RootLock(root, exclusive=False, wait=False), pytest.raises(ConflictError, match="upgrade"):
        RootLock(root, exclusive=True, wait=False).acquire()


def _try_shared(root: Path) -> bool:
    try:
        with RootLock(root, exclusive=False, wait=False):
            return True
    except ConflictError:
        return False


# ---------------------------------------------------------------- gc


def image_tree(s: EmbeddedStore) -> dict[str, Digest]:
    """index -> manifest -> config + 2 layers, linked by containerd's gc labels."""
    config = put(s, b'{"architecture":"amd64","os":"linux"}')
    layers = [put(s, os.urandom(30_000)), put(s, os.urandom(40_000))]
    man_doc = json.dumps({"config": str(config), "layers": [str(x) for x in layers]}).encode()
    manifest = put(s, man_doc, {
        f"{GC_REF_CONTENT}.config": str(config),
        f"{GC_REF_CONTENT}.l.0": str(layers[0]),
        f"{GC_REF_CONTENT}.l.1": str(layers[1]),
    })
    index = put(s, json.dumps({"manifests": [str(manifest)]}).encode(),
                {f"{GC_REF_CONTENT}.m.0": str(manifest)})
    return {"index": index, "manifest": manifest, "config": config,
            "layer0": layers[0], "layer1": layers[1]}


def test_gc_sweeps_unreferenced_and_keeps_the_image_tree(store: EmbeddedStore, root: Path) -> None:
    tree = image_tree(store)
    orphan = put(store, os.urandom(12_345))
    store.images.create(Image("example/app:1", Descriptor(
        "application/vnd.oci.image.index.v1+json", tree["index"], 100)))

    dry = collect(store, dry_run=True)
    assert dry.dry_run
    assert dry.removed == [Removed("content", str(orphan), 12_345)]
    assert dry.bytes_freed == 12_345
    assert len(blob_files(root)) == 6  # dry run removed nothing

    result = collect(store)
    assert result.removed == [Removed("content", str(orphan), 12_345)]
    assert sorted(blob_files(root)) == sorted(d.hex for d in tree.values())
    assert store.db.query("SELECT COUNT(*) FROM content")[0][0] == 5
    assert result.to_json()["bytes_freed"] == 12_345

    store.images.delete("example/app:1")
    result = collect(store)
    assert {r.id for r in result.removed} == {str(d) for d in tree.values()}
    assert blob_files(root) == []


def test_gc_follows_image_labels_and_gc_root(store: EmbeddedStore) -> None:
    target = put(store, b"target")
    extra = put(store, b"extra, referenced by the image record's labels")
    rooted = put(store, b"pinned", {LABEL_GC_ROOT: "yes"})
    store.images.create(Image("x", Descriptor("application/x", target, 6),
                              labels={f"{GC_REF_CONTENT}.sig": str(extra)}))
    assert collect(store).removed == []
    assert {i.digest for i in store.content.walk()} == {target, extra, rooted}


def test_gc_leaves_locked_ingests_alone(store: EmbeddedStore) -> None:
    w = store.content.writer("live")
    w.write(b"in progress")
    with store.content.writer("stale") as w2:
        w2.write(b"abandoned")
    result = collect(store)
    assert [(r.kind, r.id) for r in result.removed] == [("ingest", "stale")]
    assert store.content.status("live").offset == len(b"in progress")
    w.close()
    assert [r.id for r in collect(store).removed] == ["live"]


def test_gc_drops_rows_without_files_and_broken_ingests(store: EmbeddedStore, root: Path) -> None:
    d = put(store, b"row stays, file goes", {"a": "b"})
    os.unlink(root / "content" / "blobs" / "sha256" / d.hex)  # crash between file and row
    broken = root / "content" / "ingest" / ("0" * 64)
    broken.mkdir()
    (broken / "data").write_bytes(b"junk")  # crashed before writing 'ref'
    assert store.content.list_statuses() == []
    result = collect(store)
    assert result.stale_rows == 1
    assert [(r.kind, r.id) for r in result.removed] == [("ingest", "0" * 64)]
    assert store.db.query("SELECT COUNT(*) FROM content")[0][0] == 0
    assert ingest_dirs(root) == []


def test_gc_lease_expiry(store: EmbeddedStore) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    lease = store.leases.create(labels={LABEL_GC_EXPIRE: soon})
    token = active_lease.set(lease.id)
    try:
        d = put(store, b"leased")
        with store.content.writer("leased-ingest") as w:
            w.write(b"part")
    finally:
        active_lease.reset(token)
    assert collect(store).removed == []
    later = datetime.now(UTC) + timedelta(hours=2)
    dry = collect(store, dry_run=True, now=later)
    assert {(r.kind, r.id) for r in dry.removed} == {
        ("content", str(d)), ("ingest", "leased-ingest"), ("lease", lease.id)}
    assert store.leases.get(lease.id).id == lease.id
    collect(store, now=later)
    with pytest.raises(NotFoundError):
        store.leases.get(lease.id)
    with pytest.raises(NotFoundError):
        store.content.info(d)


def test_gc_lease_accepts_go_style_expiry(store: EmbeddedStore) -> None:
    lease = store.leases.create(labels={LABEL_GC_EXPIRE: "2001-02-03T04:05:06.123456789Z"})
    store.leases.add_resource(lease.id, LeaseResource("content", str(put(store, b"old"))))
    assert {r.kind for r in collect(store).removed} == {"content", "lease"}


def test_lease_validation(store: EmbeddedStore) -> None:
    with pytest.raises(InvalidInputError):
        store.leases.create(lease_id="bad id!")
    with pytest.raises(InvalidInputError):
        store.leases.create(labels={LABEL_GC_EXPIRE: "tomorrow"})
    lease = store.leases.create()
    with pytest.raises(InvalidInputError):
        store.leases.add_resource(lease.id, LeaseResource("content", "not-a-digest"))
    with pytest.raises(InvalidInputError):
        store.leases.add_resource(lease.id, LeaseResource("containers", "x"))
    store.leases.add_resource(lease.id, LeaseResource("snapshots/overlayfs", "k"))


def test_writer_under_a_missing_lease_fails(store: EmbeddedStore) -> None:
    token = active_lease.set("no-such-lease")
    try:
        with pytest.raises(NotFoundError):
            store.content.writer("orphan")
    finally:
        active_lease.reset(token)


class FakeSnapshots:
    """A snapshot sweeper: two snapshots, one referenced by a manifest label."""

    def __init__(self) -> None:
        self.snapshots = {Node.snapshot("overlayfs", "used"), Node.snapshot("overlayfs", "unused")}
        self.parent = {Node.snapshot("overlayfs", "used"): Node.snapshot("overlayfs", "base")}
        self.snapshots |= set(self.parent.values())
        self.swept: list[Node] = []

    def roots(self) -> list[Node]:
        return []

    def references(self, node: Node) -> list[Node]:
        return [self.parent[node]] if node in self.parent else []

    def sweep(self, marked: object, *, dry_run: bool) -> list[Removed]:
        assert isinstance(marked, set)
        gone = sorted(self.snapshots - marked)
        if not dry_run:
            self.swept += gone
        return [Removed("snapshot", f"{n.snapshotter}/{n.id}") for n in gone]


def test_gc_snapshot_extension_point(store: EmbeddedStore) -> None:
    d = put(store, b"manifest", {f"{GC_REF_SNAPSHOT}.overlayfs": "used"})
    store.images.create(Image("snap", Descriptor("application/x", d, 8)))
    hook = FakeSnapshots()
    result = collect(store, snapshot_hook=hook)
    assert hook.swept == [Node.snapshot("overlayfs", "unused")]
    assert [str(r) for r in result.removed] == ["snapshot overlayfs/unused"]


def test_gc_from_a_thread_copies_the_lease_context(store: EmbeddedStore) -> None:
    """Threads do not inherit the active lease: fetch code uses copy_context().run."""
    lease = store.leases.create()
    token = active_lease.set(lease.id)
    try:
        ctx = contextvars.copy_context()
        with ThreadPoolExecutor(1) as pool:
            d = pool.submit(ctx.run, put, store, b"from a thread").result()
    finally:
        active_lease.reset(token)
    assert LeaseResource("content", str(d)) in store.leases.list_resources(lease.id)
    assert collect(store).removed == []


def test_ingest_opens_when_another_writer_removes_its_directory_at_mkdir(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pulls of one image: the other writer's cleanup can remove the ingest directory
    between mkdir's EEXIST and pathlib's is_dir() check, and mkdir(exist_ok=True) then
    raises FileExistsError (seen under load: 'opening ingest ...: [Errno 17] File exists').
    The race is forced here; the writer must start over, not fail."""
    real_mkdir = Path.mkdir
    raced: list[Path] = []

    def racing_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if "ingest" in self.parts and not raced:
            raced.append(self)
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    data = b"raced ingest"
    d = Digest.from_bytes(data)
    with store.content.writer("raced", total=len(data), expected=d) as w:
        w.write(data)
        w.commit(len(data), d)
    assert raced and store.content.info(d).size == len(data)
