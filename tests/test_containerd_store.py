"""The containerd backend against a real containerd (tests/rig/containerd.py)."""

from __future__ import annotations

import gc
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold.errors import (
    AlreadyExistsError,
    ConflictError,
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from cargohold.labels import GC_REF_CONTENT
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.store.containerd import ContainerdStore, api
from cargohold.store.containerd.content import CHUNK, encode_write
from cargohold.store.interfaces import Image, LeaseResource, Mount, active_lease
from tests.rig.containerd import Containerd
from tests.rig.needs import missing

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


@pytest.fixture(scope="module")
def containerd_api() -> api.Api:
    try:
        return api.load()
    except UnavailableError as e:
        msg = f"{e} ({e.hint_text()})"
        missing(msg)


@pytest.fixture
def store(containerd: Containerd, containerd_api: api.Api) -> Iterator[ContainerdStore]:
    """A store in a namespace of this test's own."""
    ns = containerd.unique_namespace()
    with ContainerdStore(containerd.address, ns) as s:
        yield s


def put(store: ContainerdStore, data: bytes, labels: dict[str, str] | None = None) -> Digest:
    dg = Digest.from_bytes(data)
    with store.content.writer(f"put-{dg.hex}", total=len(data), expected=dg) as w:
        w.write(data)
        w.commit(len(data), dg, labels)
    return dg


def ctr_lines(containerd: Containerd, store: ContainerdStore, *args: str) -> list[str]:
    out = containerd.ctr(*args, namespace=store.namespace).stdout
    return [line for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------- api and client


def test_write_encoding_matches_protobuf(containerd_api: api.Api) -> None:
    pb = containerd_api.content
    for offset, data in [(0, b""), (0, b"abc"), (1 << 40, b"x" * 300), (127, bytes(CHUNK))]:
        msg = pb.WriteContentRequest.FromString(encode_write(offset, memoryview(data)))
        assert msg.action == pb.WRITE
        assert msg.offset == offset
        assert msg.data == data
        assert msg.ref == ""


def test_missing_protos_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError) as ei:
        api.collect([tmp_path])
    assert "golang-github-containerd-containerd-dev" in ei.value.hint_text()


def test_generate_into_cache_dir(tmp_path: Path, containerd_api: api.Api) -> None:
    files = api.collect()
    assert any(n.endswith("gogoproto/gogo.proto") for n in files)
    dest = tmp_path / api.cache_key(files)
    api.generate(files, dest)
    gen = dest / api.TOP
    assert (gen / "api/services/content/v1/content_pb2.py").is_file()
    assert (gen / "api/services/content/v1/content_pb2_grpc.py").is_file()
    assert (gen / "gogoproto/gogo_pb2.py").is_file()
    assert not (dest / "github").exists()  # nothing outside the private package
    assert json.loads((dest / "MANIFEST.json").read_text())["generator"] == api.GENERATOR_VERSION
    api.generate(files, dest)  # a second generation into an existing dir is harmless
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]  # temp dirs cleaned up


def test_cache_location_and_untrusted_cache_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, containerd_api: api.Api
) -> None:
    monkeypatch.delenv("CARGOHOLD_CONTAINERD_API_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert api.cache_base() == tmp_path / "xdg" / "cargohold" / "containerd-api"
    monkeypatch.setenv("CARGOHOLD_CONTAINERD_API_CACHE", str(tmp_path / "cache"))
    assert api.cache_base() == tmp_path / "cache"

    files = api.collect()
    good = api._ensure_generated(files)
    assert good == tmp_path / "cache" / api.cache_key(files)
    assert api._ensure_generated(files) == good  # reused
    good.chmod(0o777)  # someone else could have planted code: never import from it
    other = api._ensure_generated(files)
    assert other != good and (other / api.TOP).is_dir()
    shutil.rmtree(other.parent)  # the per-process fallback directory


def test_version(store: ContainerdStore) -> None:
    v = store.version()
    assert v.version.startswith("1.")


def test_unreachable_socket_is_unavailable(tmp_path: Path, containerd_api: api.Api) -> None:
    sock = tmp_path / "nothing.sock"
    with ContainerdStore(str(sock), "x") as s, pytest.raises(UnavailableError) as ei:
        s.version()
    assert str(sock) in str(ei.value)
    assert str(sock) in ei.value.hint_text()


# ---------------------------------------------------------------- gRPC errors -> error tree


def test_deadline_exceeded_is_unavailable(containerd: Containerd, containerd_api: api.Api) -> None:
    """A real DEADLINE_EXCEEDED (a deadline already past when the call starts: gRPC's own
    check; a tiny positive one is sometimes met) is UnavailableError (exit 7)."""
    from cargohold.store.containerd.client import ContainerdClient

    c = ContainerdClient(containerd.address, "x", timeout=-1.0)
    try:
        with pytest.raises(UnavailableError) as ei:
            c.version()
    finally:
        c.close()
    assert ei.value.exit_code == 7
    assert "did not answer in time" in ei.value.hint_text()


def test_unimplemented_is_unsupported(containerd: Containerd, containerd_api: api.Api) -> None:
    """A real UNIMPLEMENTED (a service this containerd does not serve) is UnsupportedError."""
    from cargohold.store.containerd.client import ContainerdClient

    c = ContainerdClient(containerd.address, "x")
    try:
        empty = c.api.empty_pb2.Empty
        nope = c.channel.unary_unary(
            "/containerd.services.nosuch.v1.Nope/Get",
            request_serializer=empty.SerializeToString, response_deserializer=empty.FromString)
        with pytest.raises(UnsupportedError) as ei:
            c.call(nope, empty(), what="nope")
    finally:
        c.close()
    assert ei.value.exit_code == 3 and "nope" in str(ei.value)


def test_cancelled_stream_is_interrupted(store: ContainerdStore, containerd_api: api.Api) -> None:
    """A real CANCELLED (a read stream cancelled, as Ctrl-C does) is an interruption (130)."""
    from cargohold.errors import InterruptedError_

    dg = put(store, os.urandom(3 * CHUNK))
    c = store.client
    pb = c.api.content
    responses = c.content_stub.Read(pb.ReadContentRequest(digest=str(dg)), metadata=c.metadata())
    responses.cancel()
    with pytest.raises(InterruptedError_) as ei:
        list(c._iterate(responses, "read"))
    assert ei.value.exit_code == 130


class _StandIn(Exception):
    """A grpc.RpcError's shape, for codes a real containerd cannot be made to return."""

    def __init__(self, code: object, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> object:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "error", "exit_code"), [
    ("DEADLINE_EXCEEDED", UnavailableError, 7),
    ("UNIMPLEMENTED", UnsupportedError, 3),
    ("PERMISSION_DENIED", UnavailableError, 7),
    ("UNAUTHENTICATED", UnavailableError, 7),
    ("CANCELLED", None, 130),
])
def test_grpc_codes_map_to_the_error_tree(code: str, error: type | None, exit_code: int) -> None:
    """PERMISSION_DENIED used to be a bare CargoholdError: exit 1, the code for bugs."""
    import grpc

    from cargohold.store.containerd.client import map_rpc_error

    e = map_rpc_error(_StandIn(getattr(grpc.StatusCode, code), "denied by policy"),
                      what="images list", address="/run/x.sock")
    if error is not None:
        assert isinstance(e, error)
    assert e.exit_code == exit_code
    assert "images list" in e.message and "denied by policy" in e.message
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        assert "/run/x.sock" in e.hint_text() and "root" in e.hint_text()


# ---------------------------------------------------------------- content


def test_content_write_commit_read_info_delete(
    store: ContainerdStore, containerd: Containerd
) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    dg = Digest.from_bytes(data)
    with store.content.writer("blob-1", total=len(data), expected=dg) as w:
        assert w.offset == 0
        view = memoryview(data)
        for i in range(0, len(data), 70000):  # writes not aligned to messages
            assert w.write(view[i : i + 70000]) == len(view[i : i + 70000])
        assert w.offset == len(data)
        assert w.digest() == dg
        info = w.commit(len(data), dg, {"cargohold.test/a": "1"})
    assert info.digest == dg
    assert info.size == len(data)
    assert info.labels == {"cargohold.test/a": "1"}
    assert abs(info.created_at - datetime.now(UTC)) < timedelta(minutes=5)

    got = store.content.info(dg)
    assert (got.digest, got.size, dict(got.labels)) == (dg, len(data), {"cargohold.test/a": "1"})
    assert [i.digest for i in store.content.walk()] == [dg]
    with store.content.reader(dg) as f:
        assert f.read() == data
    assert any(str(dg) in line for line in ctr_lines(containerd, store, "content", "ls"))
    with pytest.raises(NotFoundError):
        store.content.status("blob-1")  # the ingest is gone after commit

    store.content.delete(dg)
    with pytest.raises(NotFoundError):
        store.content.info(dg)
    with pytest.raises(NotFoundError):
        store.content.delete(dg)
    assert not any(str(dg) in line for line in ctr_lines(containerd, store, "content", "ls"))


def test_labels_update_and_remove(store: ContainerdStore) -> None:
    dg = put(store, b"labelled", {"keep": "k", "drop": "d"})
    info = store.content.update(dg, {"new": "n", "drop": None})
    assert dict(info.labels) == {"keep": "k", "new": "n"}
    assert dict(store.content.info(dg).labels) == {"keep": "k", "new": "n"}
    assert info.updated_at >= info.created_at
    with pytest.raises(NotFoundError):
        store.content.update(Digest.from_bytes(b"absent"), {"a": "b"})


def test_reader_seeks(store: ContainerdStore) -> None:
    data = os.urandom(2 * CHUNK + 999)
    dg = put(store, data)
    with store.content.reader(dg) as f:
        assert f.seekable()
        for pos, n in [(0, 10), (CHUNK - 5, 10), (2 * CHUNK, 999), (17, CHUNK + 3), (len(data), 5)]:
            assert f.seek(pos) == pos
            assert f.read(n) == data[pos : pos + n]
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(5)
        buf = bytearray(3 * CHUNK)
        assert f.readinto(buf) == len(data) - 5
        assert bytes(buf[: len(data) - 5]) == data[5:]
    with pytest.raises(NotFoundError):
        store.content.reader(Digest.from_bytes(b"nope"))  # before the with block


def test_resume_after_closed_writer(store: ContainerdStore) -> None:
    data = os.urandom(2 * CHUNK + CHUNK // 2)
    dg = Digest.from_bytes(data)
    cut = CHUNK + 1000
    with store.content.writer("resume-me", total=len(data), expected=dg) as w:
        w.write(data[:cut])
    st = store.content.status("resume-me")
    assert (st.ref, st.offset, st.total) == ("resume-me", cut, len(data))
    assert "resume-me" in [s.ref for s in store.content.list_statuses()]

    with store.content.writer("resume-me", total=len(data), expected=dg) as w:
        assert w.offset == cut
        w.write(data[cut:])
        w.commit(len(data), dg)
    with store.content.reader(dg) as f:
        assert f.read() == data


def test_truncate_to_zero_starts_over(store: ContainerdStore) -> None:
    good = b"the right bytes" * 1000
    dg = Digest.from_bytes(good)
    with store.content.writer("trunc", total=len(good)) as w:
        w.write(b"garbage" * 5000)
        w.truncate(0)
        assert w.offset == 0
        w.write(good)
        assert w.digest() == dg
        w.commit(len(good), dg)
    with store.content.reader(dg) as f:
        assert f.read() == good


def test_commit_wrong_digest_is_mismatch_and_discards_ingest(store: ContainerdStore) -> None:
    data = b"some bytes" * 100
    wrong = Digest.from_bytes(b"other bytes")
    with store.content.writer("bad-digest") as w:
        w.write(data)
        with pytest.raises(DigestMismatchError):
            w.commit(len(data), wrong)
    with pytest.raises(NotFoundError):
        store.content.status("bad-digest")
    with pytest.raises(NotFoundError):
        store.content.info(wrong)

    with store.content.writer("bad-size") as w:
        w.write(data)
        with pytest.raises(DigestMismatchError):
            w.commit(len(data) + 1, Digest.from_bytes(data))
    with pytest.raises(NotFoundError):
        store.content.status("bad-size")


def test_already_exists(store: ContainerdStore) -> None:
    data = b"present"
    dg = put(store, data)
    with pytest.raises(AlreadyExistsError):
        store.content.writer("again", total=len(data), expected=dg)
    # Without an expected digest up front, containerd notices at commit.
    with store.content.writer("again-2") as w:
        w.write(data)
        with pytest.raises(AlreadyExistsError):
            w.commit(len(data), dg)
    with pytest.raises(NotFoundError):
        store.content.status("again-2")
    assert store.content.info(dg).size == len(data)


def test_second_writer_on_same_ref_conflicts(store: ContainerdStore) -> None:
    with store.content.writer("held") as w:
        w.write(b"x" * 10)
        with pytest.raises(ConflictError) as ei:
            store.content.writer("held")
        assert not isinstance(ei.value, AlreadyExistsError)
    with store.content.writer("held") as w2:  # released by close
        assert w2.offset == 10


def test_forgotten_writer_releases_its_ref_and_thread(store: ContainerdStore) -> None:
    # Compare thread sets, not counts: threads of earlier tests may end meanwhile.
    before = set(threading.enumerate())

    def new_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t not in before and t.is_alive()}

    w = store.content.writer("forgotten")
    w.write(b"abc")
    w.flush()
    w.digest()
    assert new_threads()  # gRPC's thread feeding the request stream
    del w
    gc.collect()
    with store.content.writer("forgotten") as w2:  # the cancelled stream released the lock
        assert w2.offset == 3
    deadline = time.monotonic() + 5
    while new_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert new_threads() == set()


def test_abort(store: ContainerdStore) -> None:
    with store.content.writer("to-abort") as w:
        w.write(b"partial")
        with pytest.raises(ConflictError):
            store.content.abort("to-abort")  # containerd alone would pull it from under w
    assert store.content.status("to-abort").offset == len(b"partial")
    store.content.abort("to-abort")
    with pytest.raises(NotFoundError):
        store.content.status("to-abort")
    with pytest.raises(NotFoundError):
        store.content.abort("to-abort")


def test_namespaces_are_separate(store: ContainerdStore, containerd: Containerd) -> None:
    dg = put(store, b"only here")
    with ContainerdStore(containerd.address, containerd.unique_namespace()) as other:
        with pytest.raises(NotFoundError):
            other.content.info(dg)
        assert list(other.content.walk()) == []


# ---------------------------------------------------------------- images


def _image_target(store: ContainerdStore, tag: str) -> Descriptor:
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "tag": tag,
        }
    ).encode()
    cfg_dg = put(store, cfg)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": str(cfg_dg), "size": len(cfg)},
            "layers": [],
        }
    ).encode()
    m_dg = put(store, manifest, {f"{GC_REF_CONTENT}.config": str(cfg_dg)})
    return Descriptor(MANIFEST, m_dg, len(manifest), {"org.opencontainers.image.ref.name": tag})


def test_images_crud_visible_to_ctr(store: ContainerdStore, containerd: Containerd) -> None:
    name = "registry.test/cargohold/app:1"
    t1 = _image_target(store, "1")
    created = store.images.create(Image(name, t1, {"cargohold.test/by": "test"}))
    assert created.name == name
    assert created.target == t1
    assert created.target.annotations == t1.annotations
    assert created.created_at is not None and created.updated_at is not None
    assert name in ctr_lines(containerd, store, "images", "ls", "-q")

    got = store.images.get(name)
    assert (got.target, dict(got.labels)) == (t1, {"cargohold.test/by": "test"})
    assert [i.name for i in store.images.list()] == [name]

    with pytest.raises(ConflictError):
        store.images.create(Image(name, t1))

    t2 = _image_target(store, "2")
    updated = store.images.update(Image(name, t2, {"v": "2"}))
    assert updated.target == t2
    assert dict(updated.labels) == {"v": "2"}
    assert updated.created_at == created.created_at
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at > created.updated_at
    listing = "\n".join(ctr_lines(containerd, store, "images", "ls"))
    assert str(t2.digest) in listing and str(t1.digest) not in listing

    with pytest.raises(NotFoundError):
        store.images.update(Image(name + "-missing", t2))
    with pytest.raises(NotFoundError):
        store.images.get(name + "-missing")
    store.images.delete(name)
    with pytest.raises(NotFoundError):
        store.images.get(name)
    with pytest.raises(NotFoundError):
        store.images.delete(name)
    assert name not in ctr_lines(containerd, store, "images", "ls", "-q")


# ---------------------------------------------------------------- leases


def test_lease_crud_and_resources(store: ContainerdStore, containerd: Containerd) -> None:
    lid = f"lease-{uuid.uuid4().hex[:8]}"
    lease = store.leases.create(lease_id=lid, labels={"a": "b"}, expire=timedelta(hours=1))
    assert lease.id == lid
    assert lease.labels["a"] == "b"
    expire = datetime.strptime(lease.labels["containerd.io/gc.expire"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(expire.replace(tzinfo=UTC) - datetime.now(UTC) - timedelta(hours=1)) < timedelta(
        minutes=5
    )
    assert lid in [ln.split()[0] for ln in ctr_lines(containerd, store, "leases", "ls")[1:]]
    with pytest.raises(AlreadyExistsError):
        store.leases.create(lease_id=lid)
    assert [x.id for x in store.leases.list()] == [lid]

    dg = put(store, b"resource")
    res = LeaseResource("content", str(dg))
    store.leases.add_resource(lid, res)
    store.leases.add_resource(lid, LeaseResource("ingest", "some-ref"))
    assert sorted(store.leases.list_resources(lid), key=lambda r: r.type) == [
        res,
        LeaseResource("ingest", "some-ref"),
    ]
    store.leases.delete_resource(lid, res)
    assert store.leases.list_resources(lid) == [LeaseResource("ingest", "some-ref")]

    generated = store.leases.create()
    assert generated.id and generated.id != lid
    store.leases.delete(lid)
    store.leases.delete(generated.id)
    assert store.leases.list() == []
    with pytest.raises(NotFoundError):
        store.leases.delete(lid)


def test_active_lease_header_attaches_ingests_and_content(store: ContainerdStore) -> None:
    lease = store.leases.create()
    data = b"leased content"
    dg = Digest.from_bytes(data)
    token = active_lease.set(lease.id)
    try:
        with store.content.writer("leased-ingest", total=len(data), expected=dg) as w:
            w.write(data[:4])
            w.flush()
            w.digest()  # round trip: the ingest exists
            assert LeaseResource("ingest", "leased-ingest") in store.leases.list_resources(lease.id)
            w.write(data[4:])
            w.commit(len(data), dg)
    finally:
        active_lease.reset(token)
    assert store.leases.list_resources(lease.id) == [LeaseResource("content", str(dg))]
    store.leases.delete(lease.id)


def test_gc_spares_leased_content_and_collects_the_rest(
    store: ContainerdStore, containerd: Containerd
) -> None:
    keep = store.leases.create(labels={"cargohold.test": "keep"})
    drop = store.leases.create()
    expired = store.leases.create(expire=datetime(2000, 1, 1, tzinfo=UTC))

    def put_under(lease_id: str | None, data: bytes) -> Digest:
        token = active_lease.set(lease_id)
        try:
            return put(store, data)
        finally:
            active_lease.reset(token)

    kept = put_under(keep.id, b"kept by its lease")
    unleased = put_under(None, b"written without a lease")
    dropped = put_under(drop.id, b"its lease goes away")
    stale = put_under(expired.id, b"its lease expired")
    for dg in (kept, unleased, dropped, stale):
        assert store.content.info(dg)

    store.leases.delete(drop.id, sync=True)  # deleting a lease with sync runs a gc and waits

    assert store.content.info(kept).digest == kept
    for dg in (unleased, dropped, stale):
        with pytest.raises(NotFoundError):
            store.content.info(dg)
    listed = "\n".join(ctr_lines(containerd, store, "content", "ls"))
    assert str(kept) in listed
    assert str(unleased) not in listed and str(dropped) not in listed
    assert [x.id for x in store.leases.list()] == [keep.id]  # the expired lease was collected

    store.leases.delete(keep.id, sync=True)
    with pytest.raises(NotFoundError):
        store.content.info(kept)


def test_image_target_platform_urls_artifact_type_round_trip(
    store: ContainerdStore, containerd: Containerd
) -> None:
    name = "registry.test/cargohold/plat:1"
    t = Descriptor(
        MANIFEST,
        Digest.from_bytes(b"m"),
        1,
        platform=Platform("linux", "arm64", "v8"),
        urls=("https://mirror.test/m",),
        artifact_type="application/x.test",
    )
    made = store.images.create(Image(name, t, {"l": "v"}))
    for img in (made, store.images.get(name), store.images.list()[0]):
        assert img.target == t
        assert img.target.platform == Platform("linux", "arm64", "v8")
        assert img.target.urls == t.urls and img.target.artifact_type == t.artifact_type
        assert dict(img.labels) == {"l": "v"}
    # kept in a label of containerd's record, which other clients see
    assert "linux" in "\n".join(ctr_lines(containerd, store, "images", "ls"))
    plain = Descriptor(MANIFEST, Digest.from_bytes(b"n"), 1)
    assert store.images.update(Image(name, plain)).target.platform is None
    assert dict(store.images.get(name).labels) == {}
    assert "io.cargohold.target" not in "\n".join(ctr_lines(containerd, store, "images", "ls"))


# ---------------------------------------------------------------- snapshots and apply

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def make_layer(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """(tar, gzip of it) holding ``dirs`` and ``files`` (a ``.wh.`` name is a whiteout)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            tf.addfile(ti)
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    return tar, gzip.compress(tar, mtime=0)


def put_layer(store: ContainerdStore, gz: bytes) -> Descriptor:
    return Descriptor(LAYER_GZIP, put(store, gz), len(gz))


@contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    assert len(mounts) == 1
    m = mounts[0]
    target.mkdir(parents=True, exist_ok=True)
    opts = ",".join(o for o in m.options if not o.startswith("x-"))
    subprocess.run(["mount", "-t", m.type, "-o", opts, m.source, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_snapshots_prepare_apply_commit_view(
    store: ContainerdStore, containerd: Containerd, tmp_path: Path
) -> None:
    # containerd's snapshot service itself (store.snapshots stages parallel layers on top of
    # it when cargohold can write into containerd's snapshots: test_containerd_fastapply)
    snaps, applier = store.snapshotter_named("overlayfs"), store.applier
    assert snaps.name == "overlayfs" and snaps.standalone_layers is False
    tar1, gz1 = make_layer({"etc/hello": b"hi", "bin/tool": b"x" * 5000}, dirs=("etc", "bin"))
    tar2, gz2 = make_layer({"etc/.wh.hello": b"", "etc/new": b"new"}, dirs=("etc",))
    d1, d2 = put_layer(store, gz1), put_layer(store, gz2)
    lease = store.leases.create()
    token = active_lease.set(lease.id)
    try:
        mounts = snaps.prepare("k1", labels={"cargohold.test": "1"})
        applied = applier.apply(d1, mounts, reader=io.BytesIO(gz1), diff_id=Digest.from_bytes(tar1))
        assert (applied.media_type, applied.digest, applied.size) == (
            LAYER_TAR,
            Digest.from_bytes(tar1),
            len(tar1),
        )
        st = snaps.stat("k1")
        assert (st.kind, st.name, st.parent, dict(st.labels)) == (
            "active",
            "k1",
            "",
            {"cargohold.test": "1"},
        )
        assert snaps.usage("k1").size >= 5000
        assert snaps.mounts("k1") == mounts
        snaps.commit("layer1", "k1", labels={"containerd.io/uncompressed": str(applied.digest)})
        with pytest.raises(NotFoundError):
            snaps.stat("k1")
        assert snaps.stat("layer1").kind == "committed"
        with pytest.raises(InvalidInputError):
            snaps.mounts("layer1")  # committed snapshots have no mounts

        m2 = snaps.prepare("k2", "layer1")
        assert applier.apply(d2, m2, reader=io.BytesIO(gz2)).digest == Digest.from_bytes(tar2)
        with pytest.raises(UnsupportedError):
            snaps.commit("layer2", "k2", parent="")  # containerd cannot re-parent
        snaps.commit("layer2", "k2", parent="layer1")
        assert snaps.stat("layer2").parent == "layer1"
        view = snaps.view("v", "layer2")
    finally:
        active_lease.reset(token)

    with mounted(view, tmp_path / "root") as root:
        assert (root / "etc" / "new").read_bytes() == b"new"
        assert not (root / "etc" / "hello").exists()  # whited out by layer 2
        assert (root / "bin" / "tool").read_bytes() == b"x" * 5000
    assert snaps.stat("v").kind == "view"

    resources = store.leases.list_resources(lease.id)
    assert {LeaseResource("snapshots/overlayfs", k) for k in ("layer1", "layer2", "v")} <= set(
        resources
    )
    assert {s.name for s in snaps.walk()} == {"layer1", "layer2", "v"}
    listed = "\n".join(ctr_lines(containerd, store, "snapshots", "ls"))
    assert "layer2" in listed and "layer1" in listed

    with pytest.raises(ConflictError):
        snaps.remove("layer1")  # layer2 sits on it
    info = snaps.update("layer2", {"a": "1", "containerd.io/uncompressed": None})
    assert dict(info.labels) == {"a": "1"}

    store.leases.delete(lease.id, sync=True)  # the lease held them all
    assert list(snaps.walk()) == []


def test_snapshot_errors(store: ContainerdStore) -> None:
    snaps = store.snapshots
    lease = store.leases.create()
    token = active_lease.set(lease.id)
    try:
        snaps.prepare("a")
        with pytest.raises(AlreadyExistsError):
            snaps.prepare("a")
        with pytest.raises(NotFoundError):
            snaps.prepare("b", "no-such-parent")
        with pytest.raises(InvalidInputError):
            snaps.prepare("b", "a")  # a is not committed
        snaps.commit("a-done", "a")
        with pytest.raises(InvalidInputError):
            snaps.commit("again", "a-done")  # not active
        snaps.prepare("c")
        with pytest.raises(AlreadyExistsError):
            snaps.commit("a-done", "c")
        snaps.remove("c")
        with pytest.raises(NotFoundError):
            snaps.stat("c")
        with pytest.raises(NotFoundError):
            snaps.remove("c")
    finally:
        active_lease.reset(token)
        store.leases.delete(lease.id, sync=True)


def test_apply_checks_diff_id_and_ingests_missing_blobs(store: ContainerdStore) -> None:
    tar, gz = make_layer({"f": b"content"})
    desc = Descriptor(LAYER_GZIP, Digest.from_bytes(gz), len(gz))  # not in containerd yet
    lease = store.leases.create()
    token = active_lease.set(lease.id)
    try:
        # containerd's diff service (the fallback applier) reads blobs from its own store
        mounts = store.snapshots.prepare("x")
        applied = store.diff_applier.apply(desc, mounts, reader=io.BytesIO(gz))
        assert applied.digest == Digest.from_bytes(tar)
        assert store.content.info(desc.digest).size == len(gz)  # ingested from the reader
        assert (Path(mounts[0].source) / "f").read_bytes() == b"content"

        m2 = store.snapshots.prepare("y")
        with pytest.raises(DigestMismatchError):
            store.diff_applier.apply(
                desc, m2, reader=io.BytesIO(gz), diff_id=Digest.from_bytes(b"other")
            )
        # cargohold's own applier (the store's) applies from the reader it is given
        m3 = store.snapshots.prepare("z")
        applied = store.applier.apply(desc, m3, reader=io.BytesIO(gz))
        assert applied.digest == Digest.from_bytes(tar)
        assert (Path(m3[0].source) / "f").read_bytes() == b"content"
        with pytest.raises(DigestMismatchError):
            store.applier.apply(desc, store.snapshots.prepare("w"), reader=io.BytesIO(gz),
                                diff_id=Digest.from_bytes(b"other"))
    finally:
        active_lease.reset(token)
        store.leases.delete(lease.id, sync=True)


# ---------------------------------------------------------------- restarts


def test_restart_breaks_open_writer_and_keeps_the_ingest(
    fresh_containerd: Containerd, containerd_api: api.Api
) -> None:
    data = os.urandom(3 * CHUNK)
    dg = Digest.from_bytes(data)
    with ContainerdStore(fresh_containerd.address, "restart") as s:
        w = s.content.writer("across-restart", total=len(data), expected=dg)
        w.write(data[: 2 * CHUNK])
        assert w.digest() == Digest.from_bytes(data[: 2 * CHUNK])  # acknowledged
        fresh_containerd.restart()
        with pytest.raises(UnavailableError):
            w.write(data[2 * CHUNK :])
            w.digest()
        w.close()  # a broken writer closes quietly
        assert s.content.status("across-restart").offset == 2 * CHUNK
        with s.content.writer("across-restart", total=len(data), expected=dg) as w2:
            assert w2.offset == 2 * CHUNK
            w2.write(data[2 * CHUNK :])
            w2.commit(len(data), dg)
        assert s.content.info(dg).size == len(data)
