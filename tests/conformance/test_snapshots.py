"""Snapshotter conformance over every backend (tests/conformance/backends.py): the embedded
store's overlay and flat snapshotters, containerd's overlayfs and native snapshotters.

Only the ``Snapshotter`` Protocol of ``cargohold.store.interfaces``: prepare / view / commit /
remove, a chain of three parents, labels, usage (per layer or cumulative, as each backend
documents), walk, mounts that really mount (written through an active snapshot's mounts,
read through a view's read-only mounts), removal of a snapshot with children refused, taken
keys and names, commit twice, and the errors for missing and wrong-kind snapshots.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cargohold.bake.catalog import usage_excludes_parents
from cargohold.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnsupportedError,
)
from cargohold.mount import mounted
from cargohold.store.interfaces import (
    KIND_ACTIVE,
    KIND_COMMITTED,
    KIND_VIEW,
    Applier,
    Snapshotter,
)
from tests.conformance.backends import SnapshotsUnderTest
from tests.test_rootfs_vs_containerd import mount_point


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _mnt(tmp_path: Path) -> Path:
    return tmp_path / _key("mnt")


@contextmanager
def viewed(sn: Snapshotter, parent: str, tmp_path: Path) -> Iterator[Path]:
    """A view of ``parent``, mounted (read-only) in a new directory; removed afterwards."""
    key = _key("view")
    mounts = sn.view(key, parent)
    try:
        with mount_point(_mnt(tmp_path)) as mnt, mounted(mounts, mnt):
            yield mnt
    finally:
        sn.remove(key)


def write_through(sn: Snapshotter, key: str, tmp_path: Path,
                  change: Callable[[Path], object]) -> None:
    """Mount the active snapshot ``key`` (its current mounts) and let ``change`` write."""
    with mount_point(_mnt(tmp_path)) as mnt, mounted(sn.mounts(key), mnt):
        change(mnt)


def files(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` with its content (directories implied)."""
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def commit_layer(sn: Snapshotter, name: str, parent: str, tmp_path: Path,
                 change: Callable[[Path], object]) -> None:
    """prepare on ``parent``, write through the mounts, commit as ``name``."""
    key = _key("active")
    sn.prepare(key, parent)
    write_through(sn, key, tmp_path, change)
    sn.commit(name, key)


def assert_read_only(mnt: Path) -> None:
    with pytest.raises(OSError) as e:
        (mnt / "must-not-be-written").write_bytes(b"x")
    assert e.value.errno == errno.EROFS, e.value


# ---------------------------------------------------------------- lifecycle


def test_backend_implements_the_protocols(snap: SnapshotsUnderTest) -> None:
    assert isinstance(snap.sn, Snapshotter)
    assert isinstance(snap.applier, Applier)
    assert snap.sn.name == ("overlayfs" if "overlay" in snap.backend else "native")


def test_prepare_commit_view_remove(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """An active snapshot is written through its mounts, committed under a name (the key is
    gone), viewed read-only (the file is there, writing fails with EROFS), and removed."""
    sn = snap.sn
    key, name = _key("active"), _key("layer")
    mounts = sn.prepare(key, labels={"conformance": "yes"})
    assert mounts
    info = sn.stat(key)
    assert (info.kind, info.name, info.parent) == (KIND_ACTIVE, key, "")
    assert info.labels.get("conformance") == "yes"
    assert sn.mounts(key) == mounts
    with mount_point(_mnt(tmp_path)) as mnt, mounted(mounts, mnt):  # prepare's own mounts
        (mnt / "hello").write_bytes(b"hello, snapshot\n")
        (mnt / "dir").mkdir()
        (mnt / "dir" / "inner").write_bytes(b"inner\n")
    sn.commit(name, key, labels={"conformance": "committed"})
    with pytest.raises(NotFoundError):
        sn.stat(key)
    info = sn.stat(name)
    assert (info.kind, info.name, info.parent) == (KIND_COMMITTED, name, "")
    assert info.labels.get("conformance") == "committed"

    view = _key("view")
    vmounts = sn.view(view, name, labels={"conformance": "view"})
    info = sn.stat(view)
    assert (info.kind, info.parent) == (KIND_VIEW, name)
    assert info.labels.get("conformance") == "view"
    assert sn.mounts(view) == vmounts
    with mount_point(_mnt(tmp_path)) as mnt, mounted(vmounts, mnt):
        assert (mnt / "hello").read_bytes() == b"hello, snapshot\n"
        assert files(mnt) == {"hello": b"hello, snapshot\n", "dir/inner": b"inner\n"}
        assert_read_only(mnt)
    sn.remove(view)
    sn.remove(name)
    for k in (view, name):
        with pytest.raises(NotFoundError):
            sn.stat(k)
    assert not {view, name} & {i.name for i in sn.walk()}


def test_chain_of_three_parents(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """base <- mid <- top, each prepared on its parent: each level sees its parents' files
    (with mid's deletion and overwrite), stat and walk report the parents, and a view of
    each level shows exactly that level's tree."""
    sn = snap.sn
    base, mid, top = _key("base"), _key("mid"), _key("top")

    def write_base(m: Path) -> None:
        (m / "base").write_bytes(b"base\n")
        (m / "shared").write_bytes(b"from base\n")
        (m / "gone").write_bytes(b"deleted in mid\n")
        (m / "d").mkdir()
        (m / "d" / "kept").write_bytes(b"kept\n")

    def write_mid(m: Path) -> None:
        assert (m / "base").read_bytes() == b"base\n"  # sees its parent
        (m / "mid").write_bytes(b"mid\n")
        (m / "shared").write_bytes(b"from mid\n")
        (m / "gone").unlink()
        (m / "d" / "added").write_bytes(b"added\n")

    def write_top(m: Path) -> None:
        assert (m / "mid").read_bytes() == b"mid\n"  # sees both ancestors
        assert (m / "shared").read_bytes() == b"from mid\n"
        assert not (m / "gone").exists()
        (m / "top").write_bytes(b"top\n")

    commit_layer(sn, base, "", tmp_path, write_base)
    commit_layer(sn, mid, base, tmp_path, write_mid)
    commit_layer(sn, top, mid, tmp_path, write_top)

    assert [sn.stat(k).parent for k in (base, mid, top)] == ["", base, mid]
    walked = {i.name: i for i in sn.walk()}
    assert {k: (walked[k].kind, walked[k].parent) for k in (base, mid, top)} == {
        base: (KIND_COMMITTED, ""), mid: (KIND_COMMITTED, base), top: (KIND_COMMITTED, mid)}

    level_base = {"base": b"base\n", "shared": b"from base\n", "gone": b"deleted in mid\n",
                  "d/kept": b"kept\n"}
    level_mid = {"base": b"base\n", "shared": b"from mid\n", "d/kept": b"kept\n",
                 "d/added": b"added\n", "mid": b"mid\n"}
    level_top = {**level_mid, "top": b"top\n"}
    for name, want in ((base, level_base), (mid, level_mid), (top, level_top)):
        with viewed(sn, name, tmp_path) as mnt:
            assert files(mnt) == want, name
            assert sorted(p.name for p in mnt.iterdir()) == sorted(
                {k.split("/")[0] for k in want}), name
            assert_read_only(mnt)

    # An active snapshot on top: writable, sees the whole chain, leaves the chain alone.
    key = _key("container")
    sn.prepare(key, top)
    assert sn.stat(key).parent == top

    def container(m: Path) -> None:
        assert files(m) == level_top
        (m / "base").unlink()
        (m / "written").write_bytes(b"w\n")

    write_through(sn, key, tmp_path, container)
    with viewed(sn, top, tmp_path) as mnt:
        assert files(mnt) == level_top
    for k in (key, top, mid, base):
        sn.remove(k)


def test_update_labels(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """update sets labels and removes those given None; other labels are kept."""
    sn = snap.sn
    key, name = _key("active"), _key("layer")
    sn.prepare(key, labels={"keep": "1"})
    sn.commit(name, key, labels={"keep": "1", "drop": "2"})
    got = sn.update(name, {"new": "3", "drop": None})
    assert dict(got.labels) == dict(sn.stat(name).labels) == {"keep": "1", "new": "3"}
    sn.update(name, {"keep": "changed"})
    assert dict(sn.stat(name).labels) == {"keep": "changed", "new": "3"}
    sn.remove(name)


# ---------------------------------------------------------------- usage


def test_usage_per_layer_or_cumulative(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """usage of a committed snapshot counts its own layer (overlay backends) or its whole
    tree, parents included (full-copy backends: embedded flat, containerd native), as the
    backend documents; the planner's ``usage_excludes_parents`` says the same. usage of an
    active snapshot is its current disk use."""
    sn = snap.sn
    assert usage_excludes_parents(sn) == snap.usage_excludes_parents
    base, mid, top = _key("base"), _key("mid"), _key("top")
    kib = 1024
    sizes = {base: 512 * kib, mid: 256 * kib, top: 64 * kib}
    slack = 64 * kib  # directories, block rounding, the snapshot directory itself
    parent = ""
    for name in (base, mid, top):
        def write(m: Path, n: str = name, data: bytes = os.urandom(sizes[name])) -> None:
            (m / n).write_bytes(data)

        commit_layer(sn, name, parent, tmp_path, write)
        parent = name
    got = {n: sn.usage(n) for n in (base, mid, top)}
    assert sizes[base] <= got[base].size < sizes[base] + slack
    if snap.usage_excludes_parents:
        for n in (mid, top):
            assert sizes[n] <= got[n].size < sizes[n] + slack, (n, got)
            assert got[n].inodes <= 3, (n, got)  # its directory and file (and a work dir)
    else:
        assert sum(sizes.values()) <= got[top].size < sum(sizes.values()) + slack, got
        assert sizes[base] + sizes[mid] <= got[mid].size, got
        assert got[top].inodes >= 4, got  # its directory and all three files

    key = _key("active")
    sn.prepare(key, top)
    before = sn.usage(key)
    write_through(sn, key, tmp_path, lambda m: (m / "new").write_bytes(os.urandom(300 * kib)))
    after = sn.usage(key)
    assert after.size >= before.size + 300 * kib, (before, after)
    assert after.inodes == before.inodes + 1, (before, after)
    for k in (key, top, mid, base):
        sn.remove(k)


# ---------------------------------------------------------------- walk


def test_walk_lists_every_kind(snap: SnapshotsUnderTest) -> None:
    """walk lists committed snapshots, active snapshots and views with kind, parent and
    labels, and no longer lists what was removed."""
    sn = snap.sn
    key, name, child, view = _key("active"), _key("layer"), _key("child"), _key("view")
    sn.prepare(key, labels={"walk": "a"})
    sn.commit(name, key, labels={"walk": "c"})
    sn.prepare(child, name, labels={"walk": "p"})
    sn.view(view, name, labels={"walk": "v"})
    walked = {i.name: i for i in sn.walk()}
    assert {k: (walked[k].kind, walked[k].parent, walked[k].labels.get("walk"))
            for k in (name, child, view)} == {
        name: (KIND_COMMITTED, "", "c"),
        child: (KIND_ACTIVE, name, "p"),
        view: (KIND_VIEW, name, "v"),
    }
    assert key not in walked
    for k in (child, view, name):
        sn.remove(k)
    assert not {name, child, view} & {i.name for i in sn.walk()}


# ---------------------------------------------------------------- refusals and errors


def test_remove_with_children_is_refused(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """A committed snapshot with a committed child, an active child or a view is not removed
    (ConflictError) and stays usable; once the children are gone it is removed."""
    sn = snap.sn
    base, mid = _key("base"), _key("mid")
    commit_layer(sn, base, "", tmp_path, lambda m: (m / "f").write_bytes(b"base\n"))
    commit_layer(sn, mid, base, tmp_path, lambda m: (m / "g").write_bytes(b"mid\n"))
    active, view = _key("active"), _key("view")
    sn.prepare(active, mid)
    sn.view(view, mid)
    with pytest.raises(ConflictError):
        sn.remove(base)  # a committed child
    with pytest.raises(ConflictError):
        sn.remove(mid)  # an active child and a view
    sn.remove(active)
    with pytest.raises(ConflictError):
        sn.remove(mid)  # the view still
    assert sn.stat(mid).kind == sn.stat(base).kind == KIND_COMMITTED
    with viewed(sn, mid, tmp_path) as mnt:  # nothing of the refused removals happened
        assert files(mnt) == {"f": b"base\n", "g": b"mid\n"}
    sn.remove(view)
    sn.remove(mid)
    sn.remove(base)
    assert not {base, mid, active, view} & {i.name for i in sn.walk()}


def test_taken_keys_and_names(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """Keys and names share one namespace: prepare, view and commit to a key or name in use
    (active, view or committed) are AlreadyExistsError, and a refused commit leaves the
    active snapshot as it was (it can be committed under a free name)."""
    sn = snap.sn
    name, active, view = _key("layer"), _key("active"), _key("view")
    commit_layer(sn, name, "", tmp_path, lambda m: (m / "f").write_bytes(b"1\n"))
    sn.prepare(active, name)
    sn.view(view, name)
    for taken in (name, active, view):
        with pytest.raises(AlreadyExistsError):
            sn.prepare(taken, name)
        with pytest.raises(AlreadyExistsError):
            sn.prepare(taken)
        with pytest.raises(AlreadyExistsError):
            sn.view(taken, name)
    write_through(sn, active, tmp_path, lambda m: (m / "g").write_bytes(b"2\n"))
    for taken in (name, view):
        with pytest.raises(AlreadyExistsError):
            sn.commit(taken, active)
    info = sn.stat(active)
    assert (info.kind, info.parent) == (KIND_ACTIVE, name)
    assert sn.stat(view).kind == KIND_VIEW and sn.stat(name).kind == KIND_COMMITTED
    second = _key("layer")
    sn.commit(second, active)
    with viewed(sn, second, tmp_path) as mnt:
        assert files(mnt) == {"f": b"1\n", "g": b"2\n"}
    for k in (view, second, name):
        sn.remove(k)


def test_commit_twice_and_wrong_kinds(snap: SnapshotsUnderTest) -> None:
    """A key commits once (then it is gone: NotFoundError, or AlreadyExistsError for the
    same name again); views and committed snapshots
    do not commit and committed ones have no mounts (InvalidInputError); a parent must be
    committed (an active or view parent: InvalidInputError or NotFoundError)."""
    sn = snap.sn
    key, name, view = _key("active"), _key("layer"), _key("view")
    sn.prepare(key)
    sn.commit(name, key)
    with pytest.raises(NotFoundError):
        sn.commit(_key("again"), key)
    with pytest.raises((NotFoundError, AlreadyExistsError)):  # both are true: either is
        sn.commit(name, key)  # the same commit again
    sn.view(view, name)
    with pytest.raises(InvalidInputError):
        sn.commit(_key("x"), view)
    with pytest.raises(InvalidInputError):
        sn.commit(_key("x"), name)
    with pytest.raises(InvalidInputError):
        sn.mounts(name)
    active = _key("active")
    sn.prepare(active, name)
    for not_committed in (active, view):
        with pytest.raises((InvalidInputError, NotFoundError)):
            sn.prepare(_key("x"), not_committed)
        with pytest.raises((InvalidInputError, NotFoundError)):
            sn.view(_key("x"), not_committed)
    # Nothing of the refused calls was left behind.
    walked = {i.name: i.kind for i in sn.walk()}
    assert {k: v for k, v in walked.items() if k in (key, name, view, active)} == {
        name: KIND_COMMITTED, view: KIND_VIEW, active: KIND_ACTIVE}
    assert sn.stat(view).kind == KIND_VIEW  # a refused commit keeps the view
    for k in (active, view, name):
        sn.remove(k)


def test_missing_snapshots(snap: SnapshotsUnderTest) -> None:
    """Every call naming a snapshot that does not exist is NotFoundError (missing parents
    of prepare and view too)."""
    sn = snap.sn
    missing = _key("missing")
    calls: list[Callable[[], object]] = [
        lambda: sn.stat(missing),
        lambda: sn.usage(missing),
        lambda: sn.mounts(missing),
        lambda: sn.update(missing, {"a": "b"}),
        lambda: sn.remove(missing),
        lambda: sn.commit(_key("x"), missing),
        lambda: sn.prepare(_key("x"), missing),
        lambda: sn.view(_key("x"), missing),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


def test_commit_onto_a_parent(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """``standalone_layers``: a snapshot prepared without a parent is committed onto one
    (its view is the merged tree). Backends without it refuse (UnsupportedError) and keep
    the active snapshot, which then commits as it was prepared."""
    sn = snap.sn
    base, layer = _key("base"), _key("layer")
    commit_layer(sn, base, "", tmp_path, lambda m: (m / "f").write_bytes(b"base\n"))
    key = _key("active")
    sn.prepare(key)
    write_through(sn, key, tmp_path, lambda m: (m / "g").write_bytes(b"layer\n"))
    if sn.standalone_layers:
        assert snap.backend in ("embedded-overlay", "containerd-overlayfs")
        sn.commit(layer, key, parent=base)
        assert sn.stat(layer).parent == base
        with viewed(sn, layer, tmp_path) as mnt:
            assert files(mnt) == {"f": b"base\n", "g": b"layer\n"}
    else:
        assert snap.backend in ("embedded-flat", "containerd-native")
        with pytest.raises(UnsupportedError):
            sn.commit(layer, key, parent=base)
        assert sn.stat(key).kind == KIND_ACTIVE
        sn.commit(layer, key)
        assert sn.stat(layer).parent == ""
        with viewed(sn, layer, tmp_path) as mnt:
            assert files(mnt) == {"g": b"layer\n"}
    for k in (layer, base):
        sn.remove(k)
