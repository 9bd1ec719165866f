"""The embedded snapshotter, the applier on top of it, and real overlay mounts."""

from __future__ import annotations

import contextvars
import io
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cargohold.errors import (
    AlreadyExistsError,
    ConflictError,
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
    UnsafeContentError,
    UnsupportedError,
)
from cargohold.mount import mounted
from cargohold.oci import mediatypes as mt
from cargohold.oci.chainid import chain_ids
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
from cargohold.store.gcmark import Node
from cargohold.store.interfaces import (
    Applier,
    LeaseResource,
    Mount,
    Snapshotter,
    active_lease,
)
from cargohold.unpack import unpack_layer
from cargohold.unpack.applier import EmbeddedApplier, plan
from tests.rig.needs import needs_root, require_root
from tests.test_apply import E, describe, gzip_members, listing, make_tar, sha, zstd_frames

BACKENDS = ["overlay", "flat"]


def _sn(tmp_path: Path, backend: str, **kw: Any) -> EmbeddedSnapshotter:
    if backend == "overlay":
        require_root("overlay")
    return EmbeddedSnapshotter(tmp_path / "root", backend=backend, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def sn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedSnapshotter]:
    s = _sn(tmp_path, request.param)
    yield s
    s.close()


def _blob(entries: list[E], compression: str = "gzip") -> tuple[Descriptor, bytes, Digest]:
    tar = make_tar(entries)
    if compression == "gzip":
        blob, media_type = gzip_members(tar), mt.OCI_LAYER_GZIP
    elif compression == "zstd":
        blob, media_type = zstd_frames(tar, 2), mt.OCI_LAYER_ZSTD
    else:
        blob, media_type = tar, mt.OCI_LAYER
    return Descriptor(media_type, sha(blob), len(blob)), blob, sha(tar)


def _unpack_chain(
    sn: EmbeddedSnapshotter, layers: list[list[E]], *, parallel: bool = False
) -> list[str]:
    """Unpack layers into committed snapshots named by chain ID; returns the names."""
    applier = EmbeddedApplier()
    blobs = [_blob(entries, "zstd" if i % 2 else "gzip") for i, entries in enumerate(layers)]
    names = [str(c) for c in chain_ids([b[2] for b in blobs])]
    if not parallel:
        for i, (desc, blob, diff_id) in enumerate(blobs):
            unpack_layer(
                sn,
                applier,
                desc,
                reader=io.BytesIO(blob),
                diff_id=diff_id,
                name=names[i],
                parent=names[i - 1] if i else "",
            )
        return names

    keys = [f"extract-{i}" for i in range(len(blobs))]
    barrier = threading.Barrier(len(blobs))

    def extract(i: int) -> None:
        desc, blob, diff_id = blobs[i]
        mounts = sn.prepare(keys[i])  # no parent: independent of the others
        barrier.wait(timeout=30)  # all in flight at once
        applier.apply(desc, mounts, reader=io.BytesIO(blob), diff_id=diff_id)

    with ThreadPoolExecutor(len(blobs)) as pool:
        list(pool.map(extract, reversed(range(len(blobs)))))
    for i in range(len(blobs)):
        sn.commit(names[i], keys[i], parent=names[i - 1] if i else None)
    return names


def _merged(sn: EmbeddedSnapshotter, top: str, tmp_path: Path) -> dict[str, tuple[Any, ...]]:
    """The tree a container would see: a view of ``top``, really mounted."""
    key = f"view-{top}-{os.urandom(4).hex()}"
    mounts = sn.view(key, top)
    mnt = tmp_path / f"mnt-{key}"
    mnt.mkdir()
    try:
        with mounted(mounts, mnt):
            return describe(mnt)
    finally:
        sn.remove(key)
        mnt.rmdir()


# ---------------------------------------------------------------- whiteouts, end to end

L1 = [
    E("a", "dir"),
    E("a/f1", data=b"1"),
    E("a/f2", data=b"2"),
    E("b", "dir"),
    E("b/x", data=b"x"),
    E("c", "dir"),
    E("c/old1", data=b"o1"),
    E("c/old2", data=b"o2"),
    E("c/sub", "dir"),
    E("c/sub/deep", data=b"deep"),
    E("d", "dir"),
    E("d/keep", data=b"k"),
    E("e", data=b"file e"),
    E("f", data=b"file f"),
    E("g", "dir"),
    E("g/in", data=b"in"),
    E("h", "dir"),
    E("h/old", data=b"old"),
    E("tmp", "dir", mode=0o1777),
    E("w", "dir"),
    E("w/lower", data=b"lower"),
    E("m", "dir", mode=0o750),
]
L2 = [
    E("a/.wh.f1"),  # file whiteout
    E(".wh.b"),  # directory whiteout
    E("c", "dir"),
    E("c/.wh..wh..opq"),  # opaque directory re-populated in the same layer
    E("c/new", data=b"new"),
    E("c/sub", "dir"),
    E("c/sub/fresh", data=b"fresh"),
    E(".wh.d"),  # deleted here, re-added in L3
    E("e", "dir"),
    E("e/inside", data=b"inside"),  # file replaced by a directory
    E("f", "symlink", link="a/f2"),  # file replaced by a symlink
    E("g", data=b"g is a file now"),  # directory replaced by a file
    E(".wh.h"),
    E("h", "dir"),
    E("h/new", data=b"new"),  # whiteout + dir in one layer
    E("tmp/sock-dir/file", data=b"t"),  # implicit parent below /tmp: /tmp keeps 1777
    E(".wh.w"),
    E("w/upper", data=b"upper"),  # whiteout, then a file below it without a dir entry
]
L3 = [
    E("d", "dir"),
    E("d/again", data=b"again"),  # re-added after deletion
    E("a/f3", data=b"3"),
    E("m/new", data=b"m"),  # m created implicitly (metadata from below: 0750) ...
    E("m", "dir", mode=0o711, mtime=1_700_000_000),  # ... then given by the layer: this wins
]
EXPECTED = {
    "a": ("dir",),
    "a/f2": ("file", b"2"),
    "a/f3": ("file", b"3"),
    "c": ("dir",),
    "c/new": ("file", b"new"),
    "c/sub": ("dir",),
    "c/sub/fresh": ("file", b"fresh"),
    "d": ("dir",),
    "d/again": ("file", b"again"),
    "e": ("dir",),
    "e/inside": ("file", b"inside"),
    "f": ("link", "a/f2"),
    "g": ("file", b"g is a file now"),
    "h": ("dir",),
    "h/new": ("file", b"new"),
    "tmp": ("dir",),
    "tmp/sock-dir": ("dir",),
    "tmp/sock-dir/file": ("file", b"t"),
    "w": ("dir",),
    "w/upper": ("file", b"upper"),
    "m": ("dir",),
    "m/new": ("file", b"m"),
}


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("parallel", [False, True])
def test_whiteouts_merged_view(tmp_path: Path, backend: str, parallel: bool) -> None:
    sn = _sn(tmp_path, backend)
    if parallel and not sn.standalone_layers:
        with pytest.raises(UnsupportedError):
            _unpack_chain(sn, [L1, L2, L3], parallel=True)
        return
    names = _unpack_chain(sn, [L1, L2, L3], parallel=parallel)
    assert _merged(sn, names[-1], tmp_path) == EXPECTED
    # Each prefix of the chain is a usable image too.
    after2 = dict(EXPECTED)
    for k in ("a/f3", "d", "d/again", "m/new"):
        del after2[k]
    assert _merged(sn, names[1], tmp_path) == after2
    mnt = tmp_path / "m"
    mnt.mkdir()
    with mounted(sn.view("tmpcheck", names[-1]), mnt):
        assert stat.S_IMODE(os.lstat(mnt / "tmp").st_mode) == 0o1777
        assert stat.S_IMODE(os.lstat(mnt / "m").st_mode) == 0o711
        assert os.lstat(mnt / "m").st_mtime == 1_700_000_000
    if backend == "overlay":  # the layer dirs hold overlay whiteouts, not deletions
        fs2 = sn.fs_path(names[1])
        assert stat.S_ISCHR(os.lstat(fs2 / "a/f1").st_mode)
        assert os.getxattr(fs2 / "c", "trusted.overlay.opaque") == b"y"
        assert os.getxattr(fs2 / "h", "trusted.overlay.opaque") == b"y"
        assert {p.name for p in sn.fs_path(names[2]).iterdir()} == {"a", "d", "m"}
    sn.close()


@needs_root
def test_active_overlay_snapshot_is_writable_and_sees_parents(tmp_path: Path) -> None:
    sn = _sn(tmp_path, "overlay")
    names = _unpack_chain(sn, [L1, L2])
    mounts = sn.prepare("container", names[-1])
    assert mounts[0].type == "overlay"
    mnt = tmp_path / "m"
    mnt.mkdir()
    with mounted(mounts, mnt):
        assert (mnt / "c/new").read_bytes() == b"new"
        (mnt / "written").write_bytes(b"w")
        os.unlink(mnt / "a/f2")
    fs = sn.fs_path("container")
    assert (fs / "written").read_bytes() == b"w"
    assert stat.S_ISCHR(os.lstat(fs / "a/f2").st_mode)  # the kernel's whiteout
    assert (sn.fs_path(names[0]) / "a/f2").exists()  # parents untouched
    sn.close()


# ---------------------------------------------------------------- failure -> removal


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([E("ok", data=b"x"), E("../escape", data=b"evil")], UnsafeContentError),
        ([E("ok", data=b"x"), E("h", "link", link="/etc/shadow-like")], UnsafeContentError),
    ],
)
def test_failed_apply_removes_partial_snapshot(
    tmp_path: Path, sn: EmbeddedSnapshotter, entries: list[E], error: type[Exception]
) -> None:
    desc, blob, diff_id = _blob(entries)
    before = sorted(p.name for p in sn.dir.iterdir())
    with pytest.raises(error):
        unpack_layer(
            sn,
            EmbeddedApplier(),
            desc,
            reader=io.BytesIO(blob),
            diff_id=diff_id,
            name="sha256:" + "0" * 64,
        )
    assert sorted(p.name for p in sn.dir.iterdir()) == before
    assert list(sn.walk()) == []
    assert not (tmp_path / "escape").exists()


def test_diff_id_mismatch_removes_snapshot(sn: EmbeddedSnapshotter) -> None:
    desc, blob, _ = _blob([E("f", data=b"x")])
    with pytest.raises(DigestMismatchError):
        unpack_layer(
            sn,
            EmbeddedApplier(),
            desc,
            reader=io.BytesIO(blob),
            diff_id=sha(b"something else"),
            name="x",
        )
    assert list(sn.walk()) == []
    with pytest.raises(NotFoundError):
        sn.stat("x")


@needs_root
def test_bomb_in_snapshot_removed(tmp_path: Path) -> None:
    from tests.test_apply import _zeros_layer

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    try:
        sn = EmbeddedSnapshotter(small, backend="overlay")
        bomb = _zeros_layer(256 << 20, files=64)
        desc = Descriptor(mt.OCI_LAYER_GZIP, sha(bomb), len(bomb))
        with pytest.raises(OutOfSpaceError):
            unpack_layer(
                sn,
                EmbeddedApplier(reserve_bytes=8 << 20),
                desc,
                reader=io.BytesIO(bomb),
                diff_id=sha(b"?"),
                name="bomb",
            )
        assert list(sn.walk()) == []
        assert [p.name for p in sn.dir.iterdir() if p.is_dir()] == []
        st = os.statvfs(small)
        assert st.f_bavail * st.f_frsize > 40 << 20  # the space came back
        sn.close()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


@needs_root
def test_watched_outside_dir_untouched_by_hostile_chain(tmp_path: Path) -> None:
    watched = tmp_path / "etc-like"
    watched.mkdir()
    (watched / "shadow").write_bytes(b"root:x")
    before = listing(watched)
    sn = _sn(tmp_path, "overlay")
    hostile = [
        E("etc", "symlink", link=str(watched)),
        E("etc/shadow", data=b"pwned"),
        E("etc2", "symlink", link="../../../../../../../.." + str(watched)),
        E("etc2/new", data=b"pwned"),
        E(str(watched) + "/abs", data=b"pwned"),
    ]
    names = _unpack_chain(sn, [hostile])
    assert listing(watched) == before
    merged = _merged(sn, names[0], tmp_path)
    inside = str(watched).lstrip("/")
    assert merged[f"{inside}/shadow"] == ("file", b"pwned")
    assert merged["etc"] == ("link", str(watched))
    sn.close()


# ---------------------------------------------------------------- snapshotter semantics


def test_prepare_commit_view_stat_walk(sn: EmbeddedSnapshotter) -> None:
    assert isinstance(sn, Snapshotter)
    m = sn.prepare("k1", labels={"l": "1"})
    assert len(m) == 1 and m[0].type == "bind" and "rw" in m[0].options
    info = sn.stat("k1")
    assert (info.kind, info.name, info.parent, dict(info.labels)) == (
        "active",
        "k1",
        "",
        {"l": "1"},
    )
    fs = Path(m[0].source)
    (fs / "hello").write_bytes(b"hello world")
    sn.commit("c1", "k1")
    with pytest.raises(NotFoundError):
        sn.stat("k1")
    info = sn.stat("c1")
    assert info.kind == "committed" and dict(info.labels) == {"l": "1"}
    assert info.created_at is not None and info.updated_at is not None
    assert info.updated_at >= info.created_at

    m2 = sn.prepare("k2", "c1")
    assert sn.stat("k2").parent == "c1"
    if sn.backend == "overlay":
        assert m2[0].type == "overlay"
        opts = dict(o.split("=", 1) for o in m2[0].options)
        assert opts["lowerdir"] == str(sn.fs_path("c1"))
        assert Path(opts["upperdir"]) == sn.fs_path("k2")
    else:
        assert (Path(m2[0].source) / "hello").read_bytes() == b"hello world"  # a full copy
    sn.commit("c2", "k2", labels={"new": "labels"})
    assert dict(sn.stat("c2").labels) == {"new": "labels"}

    v = sn.view("v", "c2")
    assert "ro" in v[0].options
    assert sn.stat("v").kind == "view"
    assert sn.mounts("v") == v
    assert sorted(i.name for i in sn.walk()) == ["c1", "c2", "v"]
    assert sn.children("c2") == ["v"]


def test_immutability_and_errors(sn: EmbeddedSnapshotter) -> None:
    sn.prepare("a")
    sn.commit("A", "a")
    with pytest.raises(InvalidInputError):
        sn.commit("B", "A")  # committed: cannot commit again
    with pytest.raises(InvalidInputError):
        sn.mounts("A")  # committed snapshots are not mounted directly
    with pytest.raises(AlreadyExistsError):
        sn.prepare("A")
    sn.prepare("act", "A")
    with pytest.raises(InvalidInputError):
        sn.prepare("x", "act")  # the parent must be committed
    with pytest.raises(NotFoundError):
        sn.prepare("y", "nope")
    sn.view("vw", "A")
    with pytest.raises(InvalidInputError):
        sn.commit("VW", "vw")  # views do not commit
    with pytest.raises(AlreadyExistsError):
        sn.commit("A", "act")
    with pytest.raises(NotFoundError):
        sn.commit("Z", "missing")
    with pytest.raises(InvalidInputError):
        sn.prepare("")
    with pytest.raises(InvalidInputError):
        EmbeddedApplier().apply(*_blob([E("f")])[:1], sn.mounts("vw"), reader=io.BytesIO(b""))
    assert [i.name for i in sn.walk()] == ["A", "act", "vw"]


def test_remove_with_children_refused(sn: EmbeddedSnapshotter) -> None:
    sn.prepare("a")
    sn.commit("A", "a")
    sn.prepare("b", "A")
    sn.commit("B", "b")
    sn.view("v", "B")
    with pytest.raises(ConflictError):
        sn.remove("A")
    with pytest.raises(ConflictError):
        sn.remove("B")
    sn.remove("v")
    sn.remove("B")
    fs_a = sn.fs_path("A")
    sn.remove("A")
    assert not fs_a.exists()
    assert list(sn.walk()) == []
    with pytest.raises(NotFoundError):
        sn.remove("A")


def test_commit_with_parent(sn: EmbeddedSnapshotter) -> None:
    sn.prepare("base")
    sn.commit("BASE", "base")
    sn.prepare("layer")  # standalone
    if not sn.standalone_layers:
        with pytest.raises(UnsupportedError):
            sn.commit("L", "layer", parent="BASE")
        return
    with pytest.raises(NotFoundError):
        sn.commit("L", "layer", parent="not-yet-committed")
    assert sn.stat("layer").kind == "active"  # a failed commit changes nothing
    sn.commit("L", "layer", parent="BASE")
    assert sn.stat("L").parent == "BASE"
    sn.prepare("on-base", "BASE")
    with pytest.raises(InvalidInputError):
        sn.commit("X", "on-base", parent="L")  # prepared on a parent: cannot re-parent


def test_usage(sn: EmbeddedSnapshotter) -> None:
    m = sn.prepare("a")
    fs = Path(m[0].source)
    (fs / "d").mkdir()
    (fs / "d/f").write_bytes(os.urandom(1 << 20))
    os.link(fs / "d/f", fs / "d/hard")  # counted once
    os.symlink("f", fs / "d/s")
    u = sn.usage("a")
    assert u.inodes == 4  # fs, d, f (+hard), s
    assert 1 << 20 <= u.size < (1 << 20) + 64 * 1024
    sn.commit("A", "a")
    assert sn.usage("A") == u
    sn.prepare("b", "A")
    if sn.backend == "overlay":
        assert sn.usage("b").inodes == 1  # only its own (empty) upper dir
    else:
        assert sn.usage("b").inodes == 4  # a full copy


def test_update_labels(sn: EmbeddedSnapshotter) -> None:
    sn.prepare("a", labels={"x": "1", "y": "2"})
    info = sn.update("a", {"x": None, "z": "3"})
    assert dict(info.labels) == {"y": "2", "z": "3"}
    with pytest.raises(InvalidInputError):
        sn.update("a", {"bad": 3})  # type: ignore[dict-item]


def test_persistence_and_cleanup(tmp_path: Path, sn: EmbeddedSnapshotter) -> None:
    sn.prepare("a")
    sn.commit("A", "a")
    (sn.dir / "new-deadbeef").mkdir()
    (sn.dir / "rm-77").mkdir()
    (sn.dir / "999").mkdir()
    backend = sn.backend
    sn.close()
    again = EmbeddedSnapshotter(tmp_path / "root", backend=backend)  # type: ignore[arg-type]
    assert again.stat("A").kind == "committed"
    assert sorted(again.cleanup()) == ["999", "new-deadbeef", "rm-77"]
    assert again.fs_path("A").is_dir()
    again.close()


def test_concurrent_prepares_distinct(sn: EmbeddedSnapshotter) -> None:
    def make(i: int) -> str:
        return sn.prepare(f"k{i}")[0].source

    with ThreadPoolExecutor(8) as pool:
        sources = list(pool.map(make, range(32)))
    assert len(set(sources)) == 32
    with ThreadPoolExecutor(8) as pool, pytest.raises(AlreadyExistsError):
        list(pool.map(lambda _: sn.prepare("same"), range(4)))


def test_flat_copy_keeps_everything(tmp_path: Path) -> None:
    sn = _sn(tmp_path, "flat")
    names = _unpack_chain(
        sn,
        [
            [
                E("f", data=b"x", mode=0o4755, uid=12, gid=34, xattrs={"user.k": b"v"}),
                # a link's header sets the shared inode's metadata (as containerd's
                # applier does): image builders write the target's there
                E("h", "link", link="f", mode=0o4755, uid=12, gid=34),
                E("s", "symlink", link="/abs"),
            ]
        ],
    )
    m = sn.prepare("copy", names[0])
    fs = Path(m[0].source)
    st = os.lstat(fs / "f")
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12, 34, 0o4755)
    assert os.getxattr(fs / "f", "user.k") == b"v"
    assert os.lstat(fs / "h").st_ino == st.st_ino  # hardlinks within the copy kept
    assert st.st_ino != os.lstat(sn.fs_path(names[0]) / "f").st_ino  # not linked to the parent
    assert os.readlink(fs / "s") == "/abs"
    sn.close()


def test_flat_copy_respects_reserve(tmp_path: Path) -> None:
    sn = _sn(tmp_path, "flat", reserve_bytes=1 << 50)
    sn.prepare("a")
    sn.commit("A", "a")
    with pytest.raises(OutOfSpaceError):
        sn.prepare("b", "A")
    assert [i.name for i in sn.walk()] == ["A"]
    assert not [p for p in sn.dir.iterdir() if p.name.startswith("new-")]
    sn.close()


# ---------------------------------------------------------------- leases and gc


class FakeLeases:
    def __init__(self) -> None:
        self.added: list[tuple[str, LeaseResource]] = []

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        self.added.append((lease_id, resource))


def test_lease_resources(tmp_path: Path) -> None:
    leases = FakeLeases()
    sn = EmbeddedSnapshotter(tmp_path / "root", backend="flat", leases=leases)  # type: ignore[arg-type]
    sn.prepare("no-lease")
    ctx = contextvars.copy_context()

    def work() -> None:
        active_lease.set("L1")
        sn.prepare("k")
        sn.commit("C", "k")

    ctx.run(work)
    assert leases.added == [
        ("L1", LeaseResource("snapshots/native", "k")),
        ("L1", LeaseResource("snapshots/native", "C")),
    ]
    sn.close()


def test_gc_sweeper(sn: EmbeddedSnapshotter) -> None:
    for key, parent in (("a", ""), ("b", "A"), ("x", "")):
        sn.prepare(key, parent)
        sn.commit(key.upper(), key)
    sn.update("X", {"containerd.io/gc.root": "yes"})
    roots = list(sn.roots())
    assert roots == [Node.snapshot(sn.name, "X")]
    assert list(sn.references(Node.snapshot(sn.name, "B"))) == [Node.snapshot(sn.name, "A")]
    marked = {Node.snapshot(sn.name, "X")}
    dry = sn.sweep(marked, dry_run=True)
    assert [r.id for r in dry] == [f"{sn.name}/B", f"{sn.name}/A"]  # children first
    assert len(list(sn.walk())) == 3
    sn.sweep(marked, dry_run=False)
    assert [i.name for i in sn.walk()] == ["X"]


# ---------------------------------------------------------------- applier planning


def test_plan() -> None:
    p = plan([Mount("overlay", "overlay", ("workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"))])
    assert (p.target, p.mode, p.parents) == (Path("/u"), "overlay", (Path("/l1"), Path("/l2")))
    p = plan([Mount("bind", "/s", ("rw", "rbind", "x-cargohold.whiteout=overlay"))])
    assert (p.target, p.mode) == (Path("/s"), "overlay")
    p = plan([Mount("bind", "/s", ("rw", "rbind"))])
    assert (p.target, p.mode) == (Path("/s"), "flat")
    assert plan([Mount("ext4", "/dev/vdb", ())]).target is None
    with pytest.raises(InvalidInputError):
        plan([Mount("bind", "/s", ("ro", "rbind"))])
    assert isinstance(EmbeddedApplier(), Applier)


@needs_root
def test_applier_mounts_other_types(tmp_path: Path) -> None:
    """Mounts it cannot write through directly are mounted on a temporary directory."""
    img = tmp_path / "disk"
    img.mkdir()
    desc, blob, diff_id = _blob([E("f", data=b"via a mount")], "none")
    out = EmbeddedApplier(mount_dir=tmp_path).apply(
        desc, [Mount("none", str(img), ("bind",))], reader=io.BytesIO(blob), diff_id=diff_id
    )
    assert (img / "f").read_bytes() == b"via a mount"
    assert out.digest == diff_id and out.media_type == mt.OCI_LAYER and out.size == len(blob)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("cargohold-apply-")] == []


@needs_root
def test_many_layers_long_mount_options(tmp_path: Path) -> None:
    """More lower dirs than fit in a page of mount options (the helper shortens paths)."""
    sn = _sn(tmp_path / ("long-path-component-" * 4), "overlay")
    layers = [[E(f"layer{i:03d}", data=str(i).encode())] for i in range(90)]
    names = _unpack_chain(sn, layers)
    opts = sn.view("v", names[-1])[0].options
    assert len(",".join(opts)) > 4096
    merged = _merged(sn, names[-1], tmp_path)
    assert merged == {f"layer{i:03d}": ("file", str(i).encode()) for i in range(90)}
    sn.close()


def test_prepare_after_a_kill_between_rename_and_commit(sn: EmbeddedSnapshotter) -> None:
    """kill -9 after a prepare renamed its directory to <id> but before the row committed:
    the row is rolled back and SQLite hands out that id again. The next prepare must not
    fail on the leftover directory (the crash campaign's rerun did, exit 1) nor see its
    files."""
    sn.prepare("first")
    first_id = int(sn.fs_path("first").parent.name)
    stale = sn.dir / str(first_id + 1)
    (stale / "fs" / "etc").mkdir(parents=True)
    (stale / "fs" / "etc" / "left-over").write_text("from the killed run")
    mounts = sn.prepare("second")
    fs = sn.fs_path("second")
    assert fs.parent.name == str(first_id + 1)
    assert list(fs.iterdir()) == [] and mounts
    assert not [p for p in sn.dir.iterdir() if p.name.startswith("rm-")]
