"""Writing blobs straight into containerd's ingest file (store/containerd/ingest.py), against
the real containerd of tests/rig/containerd.py: a blob whose bytes hash to the expected
digest is linked into containerd's store and recorded by containerd without being read
again; anything else is re-hashed and refused by containerd."""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.errors import (
    DigestMismatchError,
    IngestLockedError,
    NotFoundError,
    UnavailableError,
)
from cargohold.oci.digest import Digest
from cargohold.store.containerd import ContainerdStore, api
from cargohold.store.containerd.content import DIRECT_ENV, ContainerdContentWriter
from cargohold.store.containerd.ingest import DIRECT_WRITE_MIN, DirectContentWriter
from tests.rig.containerd import Containerd, start_containerd
from tests.rig.needs import missing

SIZE = DIRECT_WRITE_MIN + 123_457


@pytest.fixture(scope="module")
def containerd_api() -> api.Api:
    try:
        return api.load()
    except UnavailableError as e:
        missing(f"{e} ({e.hint_text()})")


@pytest.fixture
def store(containerd: Containerd, containerd_api: api.Api) -> Iterator[ContainerdStore]:
    with ContainerdStore(containerd.address, containerd.unique_namespace()) as s:
        yield s


def _blob(n: int = SIZE) -> tuple[bytes, Digest]:
    data = os.urandom(n)
    return data, Digest.from_bytes(data)


def _read(store: ContainerdStore, dg: Digest) -> bytes:
    with store.content.reader(dg) as r:
        return r.read()


def test_direct_path_used_and_blob_correct(store: ContainerdStore) -> None:
    data, dg = _blob()
    with store.content.writer("direct-1", total=len(data), expected=dg) as w:
        assert isinstance(w, DirectContentWriter)
        mv = memoryview(data)
        for i in range(0, len(data), 1 << 20):
            w.write(mv[i : i + (1 << 20)])
        assert w.offset == len(data)
        info = w.commit(len(data), dg, {"x": "y"})
    assert info.digest == dg and info.size == len(data)
    assert store.content.info(dg).labels["x"] == "y"
    assert _read(store, dg) == data
    with pytest.raises(NotFoundError):
        store.content.status("direct-1")


def _blob_file(store: ContainerdStore, dg: Digest) -> Path:
    root = store.content.local_root()
    assert root is not None
    return root / "blobs" / dg.algorithm / dg.hex


def test_verified_blob_is_linked_and_recorded_without_containerd_reading_it(
    store: ContainerdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the link, the ingest's ``data`` is replaced by garbage of the same size: a
    commit that made containerd re-hash the ingest would refuse it; the linked blob is
    recorded as it is, read-only, with its labels, and no ingest is left behind."""
    data, dg = _blob()
    link = DirectContentWriter._link_blob

    def link_then_spoil(self: DirectContentWriter, expected: Digest) -> Path | None:
        target = link(self, expected)
        os.unlink(self.path / "data")
        (self.path / "data").write_bytes(b"\0" * len(data))
        return target

    monkeypatch.setattr(DirectContentWriter, "_link_blob", link_then_spoil)
    with store.content.writer("linked", total=len(data), expected=dg) as w:
        assert isinstance(w, DirectContentWriter)
        ingest = w.path
        w.write(data)
        assert w.digest() == dg
        info = w.commit(len(data), dg, {"k": "v"})
    assert info.digest == dg and info.size == len(data)
    assert store.content.info(dg).labels == {"k": "v"}
    assert _read(store, dg) == data
    mode = stat.S_IMODE(os.stat(_blob_file(store, dg)).st_mode)
    assert mode & 0o222 == 0, oct(mode)  # read-only, as containerd leaves its blobs
    assert not ingest.exists()
    with pytest.raises(NotFoundError):
        store.content.status("linked")


def test_linked_blob_taken_before_the_commit_is_rehashed_from_the_ingest(
    store: ContainerdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd's GC may remove the linked file (no record names it yet) before the
    commit: containerd then resumes the ingest, re-hashes ``data`` and commits that."""
    data, dg = _blob()
    link = DirectContentWriter._link_blob

    def link_then_lose(self: DirectContentWriter, expected: Digest) -> Path | None:
        target = link(self, expected)
        assert target is not None
        target.unlink()
        return target

    monkeypatch.setattr(DirectContentWriter, "_link_blob", link_then_lose)
    with store.content.writer("lost-link", total=len(data), expected=dg) as w:
        w.write(data)
        w.commit(len(data), dg)
    assert _read(store, dg) == data
    assert _blob_file(store, dg).exists()


def test_linked_blob_taken_right_after_the_commit_is_put_back(
    store: ContainerdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, dg = _blob()
    settle = DirectContentWriter._settle

    def lose_then_settle(self: DirectContentWriter, target: Path) -> None:
        target.unlink()
        settle(self, target)

    monkeypatch.setattr(DirectContentWriter, "_settle", lose_then_settle)
    with store.content.writer("lost-after", total=len(data), expected=dg) as w:
        w.write(data)
        w.commit(len(data), dg)
    assert _read(store, dg) == data


def test_killed_after_the_link_the_rerun_records_the_blob(store: ContainerdStore) -> None:
    """A process killed between the link and the commit leaves a verified blob file that no
    record names: the rerun's writer finds it (nothing left to write) and commits it."""
    data, dg = _blob()
    w = store.content.writer("killed-linked", total=len(data), expected=dg)
    assert isinstance(w, DirectContentWriter)
    w.write(data)
    assert w._link_blob(dg) == _blob_file(store, dg)
    del w  # killed: the stream is cancelled, no commit
    gc.collect()
    with pytest.raises(NotFoundError):
        store.content.info(dg)
    with store.content.writer("killed-linked", total=len(data), expected=dg) as w2:
        assert w2.offset == len(data)
        w2.commit(len(data), dg, {"r": "1"})
    assert store.content.info(dg).labels == {"r": "1"}
    assert _read(store, dg) == data


def test_isolated_sharing_policy_rehashes_the_ingest(tmp_path: Path,
                                                     containerd_api: api.Api) -> None:
    """With ``content_sharing_policy = "isolated"`` containerd does not record a blob it
    was not sent: it re-hashes the ingest, finds the linked file there and records it."""
    ctrd = start_containerd(tmp_path / "isolated", content_sharing="isolated")
    try:
        with ContainerdStore(ctrd.address, "iso") as s:
            data, dg = _blob()
            with s.content.writer("iso", total=len(data), expected=dg) as w:
                assert isinstance(w, DirectContentWriter)
                w.write(data)
                info = w.commit(len(data), dg, {"a": "b"})
            assert info.digest == dg
            assert s.content.info(dg).labels == {"a": "b"}
            assert _read(s, dg) == data
            with pytest.raises(NotFoundError):
                s.content.status("iso")
    finally:
        ctrd.cleanup()


def test_small_or_unknown_blobs_use_the_stream(store: ContainerdStore) -> None:
    data, dg = _blob(1000)
    with store.content.writer("small", total=len(data), expected=dg) as w:
        assert isinstance(w, ContainerdContentWriter)
        w.write(data)
        w.commit(len(data), dg)
    big, bdg = _blob()
    with store.content.writer("no-expected", total=len(big)) as w2:
        assert isinstance(w2, ContainerdContentWriter)
        w2.write(big)
        w2.commit(len(big), bdg)
    assert _read(store, bdg) == big


def test_fallback_with_direct_off(containerd: Containerd, containerd_api: api.Api,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DIRECT_ENV, "0")
    data, dg = _blob()
    with ContainerdStore(containerd.address, containerd.unique_namespace()) as s:
        assert s.content.local_root() is None
        with s.content.writer("off", total=len(data), expected=dg) as w:
            assert isinstance(w, ContainerdContentWriter)
            w.write(data)
            w.commit(len(data), dg)
        assert _read(s, dg) == data


def test_interrupted_direct_ingest_is_resumed(store: ContainerdStore) -> None:
    data, dg = _blob()
    half = len(data) // 2 + 7
    w = store.content.writer("resume-direct", total=len(data), expected=dg)
    assert isinstance(w, DirectContentWriter)
    w.write(data[:half])
    del w  # forgotten without close, as in a killed process: the stream is cancelled
    gc.collect()
    w2 = store.content.writer("resume-direct", total=len(data), expected=dg)
    try:
        assert w2.offset == half
        assert isinstance(w2, DirectContentWriter)
        assert w2.digest() == Digest.from_bytes(data[:half])  # the prefix hashed from the file
        w2.write(data[half:])
        w2.commit(len(data), dg)
    finally:
        w2.close()
    assert _read(store, dg) == data


def test_second_writer_waits_for_the_direct_one(store: ContainerdStore) -> None:
    data, dg = _blob()
    with store.content.writer("held-direct", total=len(data), expected=dg) as w:
        assert isinstance(w, DirectContentWriter)
        w.write(data[:100])
        with pytest.raises(IngestLockedError):
            store.content.writer("held-direct", total=len(data), expected=dg)
        w.write(data[100:])
        w.commit(len(data), dg)
    assert _read(store, dg) == data


def test_corrupt_bytes_rejected_at_commit(store: ContainerdStore) -> None:
    data, dg = _blob()
    bad = bytearray(data)
    bad[len(bad) // 3] ^= 0xFF
    with store.content.writer("corrupt-direct", total=len(data), expected=dg) as w:
        assert isinstance(w, DirectContentWriter)
        w.write(bytes(bad))
        with pytest.raises(DigestMismatchError):
            w.commit(len(data), dg)
    with pytest.raises(NotFoundError):
        store.content.info(dg)
    with pytest.raises(NotFoundError):  # aborted: nothing left to resume
        store.content.status("corrupt-direct")
    assert not _blob_file(store, dg).exists()  # nothing linked into the store


def test_short_ingest_rejected_at_commit(store: ContainerdStore) -> None:
    data, dg = _blob()
    with store.content.writer("short-direct", total=len(data), expected=dg) as w:
        w.write(data[:-10])
        with pytest.raises(DigestMismatchError):
            w.commit(len(data), dg)
    with pytest.raises(NotFoundError):
        store.content.info(dg)


def test_truncate_and_digest(store: ContainerdStore) -> None:
    data, dg = _blob()
    with store.content.writer("trunc-direct", total=len(data), expected=dg) as w:
        assert isinstance(w, DirectContentWriter)
        w.write(b"garbage" * 1000)
        w.truncate(0)
        assert w.offset == 0
        w.write(data[:1000])
        assert w.digest() == Digest.from_bytes(data[:1000])
        w.write(data[1000:])
        w.commit(len(data), dg)
    assert _read(store, dg) == data


def test_stream_reader_sequential_seek_and_readall(store: ContainerdStore) -> None:
    """Reads over gRPC (direct off): sequential reads share one Read stream, seeks start
    another; the bytes are the blob's wherever one reads."""
    data, dg = _blob(3 * (1 << 20) + 5)
    with store.content.writer("reader-src", total=len(data), expected=dg) as w:
        w.write(data)
        w.commit(len(data), dg)
    store.content.direct = False
    with store.content.reader(dg) as r:
        got = bytearray()
        while chunk := r.read(700_001):
            got += chunk
        assert bytes(got) == data
        r.seek(12345)
        assert r.read(100) == data[12345:12445]
        r.seek(len(data) - 10)
        assert r.read() == data[-10:]
        r.seek(5)
        assert r.read() == data[5:]
        r.seek(2 << 20)
        assert r.read(10) == data[2 << 20 : (2 << 20) + 10]
