"""Merged root file systems, entry by entry: containerd's own unpack vs cargohold's.

For each fixture image of tests/rig/images.py (whiteouts, implicit parents, links, xattrs,
special files, odd names and modes; gzip, zstd, uncompressed and the 32-byte empty gzip
layer) the same image, pushed once to the real docker-registry, is unpacked five ways (side
by side, in threads):

(a) containerd alone: ``ctr images pull`` then ``ctr images mount`` (a read-only view);
(b) cargohold's embedded store: ``cargohold pull``, ``create`` and ``mount`` (the merged
    overlay of its own snapshots, under an empty writable layer);
(c) cargohold into containerd: ``cargohold --store containerd pull``, then
    ``ctr images mount`` (which must find every snapshot already there); three times: with
    cargohold's own applier writing into the snapshots containerd's ``overlayfs`` and
    ``native`` snapshotters prepare, and through containerd's diff service
    (``CARGOHOLD_CONTAINERD_DIRECT=0``, the fallback for other snapshotters);
(c') containerd alone with its ``native`` snapshotter (``ctr images pull --snapshotter native``),
    against which cargohold's unpack into ``native`` is compared;
(d) cargohold's overlay snapshotter with each layer prepared on its parent (the applier sees
    the lower layers while it applies: the other path than ``pull``'s parallel one), and
(e) its ``flat`` backend (full copies, whiteouts as deletions), both in process from the
    built blobs, through a mounted view.

Each mounted tree is walked and recorded per path (type, mode with setuid/setgid/sticky,
owner, size, sha256 of file content, link target, xattrs but overlayfs's own
``trusted.overlay.*``, device numbers, mtime) plus the groups of paths sharing an inode (not
st_nlink: overlayfs reports the lower inode's count, names hidden by whiteouts included, so it
depends on the snapshot layout, not the image). (a) equals (c) exactly but for the mtimes no
layer defines (below) when containerd's diff service applied the layers, and equals the
other trees (cargohold's applier, into containerd's snapshots or its own) exactly but for
these:

* mtimes the image does not define (:data:`VOLATILE_MTIMES`): the root directory's (no
  layer carries it; both skip ``./`` entries, so it is when the snapshot directory was
  made), and those of directories a layer writes into without an entry of its own
  (``implicit-parents``). containerd's ``mkparent`` copies the lower directory's times, then
  creates the entry inside, which sets the directory's mtime to the time of the unpack;
  cargohold sets the copied times at the end. No image builder writes such layers (they list
  every parent), and nothing else of those directories (mode, owner, xattrs) is exempt.
* ``.wh.d`` followed by a new ``d/`` in the same layer (:data:`CONTAINERD_ONLY`): the OCI
  layer spec says the whiteout hides only lower layers' ``d``, so cargohold makes the new
  ``d`` opaque; containerd 1.6's overlay applier removes its whiteout device and makes a
  plain directory, so the lower ``d``'s entries show through in its merged view.
  Only that difference is tolerated (and cargohold must not show them).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from cargohold.imagebuild.image import BuiltImage
from cargohold.mount import is_mountpoint, mounted, unmount_all
from cargohold.oci.chainid import chain_ids
from cargohold.store.containerd.store import ContainerdStore
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
from cargohold.unpack import unpack_layer
from cargohold.unpack.applier import EmbeddedApplier
from cargohold.unpack.resolve import resolve_image
from tests.rig.containerd import Containerd
from tests.rig.images import Pushed, push, rootfs_images
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]
IMAGES = ["whiteouts", "implicit-parents", "specials", "specials-one-layer"]

#: overlayfs's own metadata (opaque markers, redirects...): not part of the image's content.
_OVERLAY_XATTRS = b"trusted.overlay."

#: Paths whose mtime no layer defines (see the module docstring), per image.
VOLATILE_MTIMES: dict[str, frozenset[str]] = {
    "implicit-parents": frozenset({"p", "p/wh", "p/add", "p/add/deep"}),
}
#: Paths containerd 1.6 shows against the OCI layer spec (see the module docstring).
CONTAINERD_ONLY: dict[str, frozenset[str]] = {
    "whiteouts": frozenset({"w/wh-then-dir/old"}),
}


# ------------------------------------------------------------------ recording a tree


@dataclass(frozen=True)
class Tree:
    """What a mounted root file system holds: path -> fields, and hardlink groups."""

    entries: dict[str, dict[str, Any]]
    hardlinks: frozenset[frozenset[str]]


def _type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return f"unknown({stat.S_IFMT(mode):o})"


def _sha256(fd_dir: int, name: bytes) -> str:
    h = hashlib.sha256()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd_dir)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: bytes) -> list[tuple[str, str]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in names:
        if os.fsencode(n).startswith(_OVERLAY_XATTRS):
            continue
        out.append((n, os.getxattr(path, n, follow_symlinks=False).hex()))
    return sorted(out)


def record_tree(root: Path) -> Tree:
    """Walk ``root`` (never following links) and record every entry below it, and root."""
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], set[str]] = {}
    broot = os.fsencode(root)

    def visit(rel: bytes) -> None:
        path = broot + b"/" + rel if rel else broot
        st = os.lstat(path)
        key = os.fsdecode(rel) if rel else "/"
        kind = _type(st.st_mode)
        e: dict[str, Any] = {
            "type": kind,
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": _xattrs(path),
        }
        if kind == "file":
            # (no st_nlink: overlayfs reports the lower inode's count, names hidden by
            # whiteouts included; the hardlink groups below are what the image defines)
            e["size"] = st.st_size
            parent, _, name = path.rpartition(b"/")
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                e["sha256"] = _sha256(dfd, name)
            finally:
                os.close(dfd)
        elif kind == "symlink":
            e["target"] = os.fsdecode(os.readlink(path))
        elif kind in ("char", "block"):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        entries[key] = e
        if kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(key)
        else:
            for child in sorted(os.listdir(path)):
                visit(rel + b"/" + child if rel else child)

    visit(b"")
    groups = frozenset(frozenset(g) for g in inodes.values() if len(g) > 1)
    return Tree(entries, groups)


def diff_trees(a: Tree, b: Tree, names: tuple[str, str]) -> list[str]:
    """Human-readable differences of two trees (empty when equal)."""
    out: list[str] = []
    na, nb = names
    for path in sorted(a.entries.keys() | b.entries.keys()):
        ea, eb = a.entries.get(path), b.entries.get(path)
        if ea == eb:
            continue
        if ea is None:
            out.append(f"{path!r}: only in {nb}: {eb}")
        elif eb is None:
            out.append(f"{path!r}: only in {na}: {ea}")
        else:
            fields = sorted(ea.keys() | eb.keys())
            out.append(f"{path!r}: " + "; ".join(
                f"{f} {na}={ea.get(f)!r} {nb}={eb.get(f)!r}" for f in fields
                if ea.get(f) != eb.get(f)
            ))
    if a.hardlinks != b.hardlinks:
        def show(groups: frozenset[frozenset[str]]) -> list[list[str]]:
            return sorted(sorted(g) for g in groups)

        out.append(f"hardlink groups: {na}={show(a.hardlinks)} {nb}={show(b.hardlinks)}")
    return out


def without(tree: Tree, *, mtimes: frozenset[str] = frozenset(),
            paths: frozenset[str] = frozenset()) -> Tree:
    """``tree`` without the mtimes of ``mtimes`` and without the entries ``paths``."""
    entries = {
        p: {k: v for k, v in e.items() if not (k == "mtime_ns" and p in mtimes)}
        for p, e in tree.entries.items() if p not in paths
    }
    groups = frozenset(g - paths for g in tree.hardlinks if len(g - paths) > 1)
    return Tree(entries, groups)


def assert_same_tree(a: Tree, b: Tree, names: tuple[str, str]) -> None:
    diffs = diff_trees(a, b, names)
    assert not diffs, f"{len(diffs)} differences {names[0]} vs {names[1]}:\n" + "\n".join(diffs)


# ------------------------------------------------------------------ the unpacks


def cargohold(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CARGOHOLD_RESERVE": "0", **(env or {})})
    if p.returncode != 0:
        raise AssertionError(f"cargohold {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


@contextmanager
def mount_point(directory: Path) -> Iterator[Path]:
    """A mount point; whatever is still mounted there at the end is unmounted."""
    directory.mkdir(parents=True)
    try:
        yield directory
    finally:
        if is_mountpoint(directory):
            unmount_all(directory, lazy=True)


def committed(ctrd: Containerd, ns: str, snapshotter: str = "overlayfs") -> set[str]:
    lines = ctrd.ctr("snapshots", "--snapshotter", snapshotter, "ls",
                     namespace=ns).stdout.splitlines()[1:]
    return {x.split()[0] for x in lines if x.split()[-1] == "Committed"}


def native_tree(ctrd: Containerd, ns: str, top_chain: str, mnt: Path) -> Tree:
    """A read-only view of ``top_chain`` of containerd's ``native`` snapshotter, recorded
    (ctr 1.6's ``images mount`` ignores ``--snapshotter`` and would unpack into overlayfs)."""
    key = f"rootfs-view-{os.getpid()}"
    with ContainerdStore(ctrd.address, ns, "native") as store:
        mounts = store.snapshots.view(key, top_chain)
        try:
            with mount_point(mnt), mounted(mounts, mnt):
                return record_tree(mnt)
        finally:
            store.snapshots.remove(key)


def ctr_tree(ctrd: Containerd, ns: str, ref: str, mnt: Path) -> Tree:
    """``ctr images mount`` the (unpacked) image read-only, record it, unmount."""
    before = committed(ctrd, ns)
    with mount_point(mnt):
        ctrd.ctr("images", "mount", ref, str(mnt), namespace=ns)
        try:
            # Everything was unpacked before: the mount made no snapshot but its view.
            assert committed(ctrd, ns) == before
            return record_tree(mnt)
        finally:
            ctrd.ctr("images", "unmount", "--rm", str(mnt), namespace=ns)


def assert_unpacked(ctrd: Containerd, ns: str, ref: str, snapshotter: str = "overlayfs") -> None:
    check = ctrd.ctr("images", "check", "--snapshotter", snapshotter, namespace=ns).stdout
    line = next(x for x in check.splitlines() if x.startswith(ref + " "))
    # REF TYPE DIGEST STATUS SIZE UNPACKED
    assert "complete" in line.split() and line.split()[-1] == "true", check


#: Records an unpacked tree: mounts it, walks it, unmounts it.
Recorder = Callable[[], Tree]

# Each way of unpacking returns a Recorder. The unpacks run side by side; the recorders run
# one after the other once no other thread is left: a child forked by a sibling thread
# holds copies of the walk's open files until it execs, and a (non-lazy) unmount at that
# moment fails with "target is busy".


def containerd_unpack(ctrd: Containerd, ref: str, mnt: Path) -> Recorder:
    ns = ctrd.unique_namespace("rootfs-ctr")
    ctrd.ctr("images", "pull", "--plain-http", ref, namespace=ns, timeout=120)
    assert_unpacked(ctrd, ns, ref)
    return lambda: ctr_tree(ctrd, ns, ref, mnt)


def containerd_native_unpack(ctrd: Containerd, ref: str, mnt: Path) -> Recorder:
    ns = ctrd.unique_namespace("rootfs-ctr-native")
    ctrd.ctr("images", "pull", "--snapshotter", "native", "--plain-http", ref, namespace=ns,
             timeout=120)
    assert_unpacked(ctrd, ns, ref, "native")
    with ContainerdStore(ctrd.address, ns, "native") as store:
        img = store.images.get(ref)
        top = resolve_image(store.content, img.target).top_chain
    return lambda: native_tree(ctrd, ns, top, mnt)


def embedded_unpack(ref: str, root: Path, mnt: Path) -> Recorder:
    cargohold("--root", str(root), "pull", "--plain-http", ref)
    cargohold("--root", str(root), "create", ref, "rootfs")

    def record() -> Tree:
        with mount_point(mnt):
            cargohold("--root", str(root), "mount", "rootfs", str(mnt))
            try:
                return record_tree(mnt)
            finally:
                cargohold("--root", str(root), "umount", str(mnt))

    return record


def cargohold_into_containerd(ctrd: Containerd, ref: str, mnt: Path, *,
                              snapshotter: str = "overlayfs", direct: bool = True) -> Recorder:
    """``cargohold --store containerd pull``: cargohold's applier into containerd's snapshots
    (``direct``; small files written by its helper process), or containerd's diff service
    (``CARGOHOLD_CONTAINERD_DIRECT=0``)."""
    ns = ctrd.unique_namespace("rootfs-ch")
    env = {"CARGOHOLD_SNAPSHOTTER": snapshotter,
           "CARGOHOLD_CONTAINERD_DIRECT": "1" if direct else "0",
           # small files by the helper process from the first one (the embedded-store
           # comparisons keep them on the parsing thread: their layers are small)
           "CARGOHOLD_FILE_HELPER": "always"}
    out = cargohold("--store", "containerd", "--address", ctrd.address, "--namespace", ns,
                    "--json", "pull", "--plain-http", ref, env=env).stdout
    unpack = json.loads(out.strip().splitlines()[-1])["images"][0]["unpack"][0]
    # cargohold's applier reports its phases; containerd's diff service leaves them empty.
    assert any(unpack["phases"].values()) == direct, unpack
    assert_unpacked(ctrd, ns, ref, snapshotter)
    if snapshotter == "native":
        return lambda: native_tree(ctrd, ns, unpack["chain_id"], mnt)
    return lambda: ctr_tree(ctrd, ns, ref, mnt)


def snapshotter_unpack(
    built: BuiltImage, root: Path, mnt: Path, backend: Literal["overlay", "flat"]
) -> Recorder:
    """Each layer prepared on its committed parent and applied by cargohold's applier."""
    names = [str(c) for c in chain_ids(built.diff_ids)]
    with EmbeddedSnapshotter(root, backend=backend) as sn:
        applier = EmbeddedApplier()
        for i, (desc, diff_id) in enumerate(
            zip(built.layer_descriptors, built.diff_ids, strict=True)
        ):
            with built.open(desc.digest) as blob:
                unpack_layer(sn, applier, desc, reader=blob, diff_id=diff_id, name=names[i],
                             parent=names[i - 1] if i else "")

    def record() -> Tree:
        with EmbeddedSnapshotter(root, backend=backend) as sn, mount_point(mnt), \
                mounted(sn.view("rootfs-view", names[-1]), mnt):
            return record_tree(mnt)

    return record


def spot_check(image: str, tree: Tree) -> None:
    """The fixture does what it is meant to in containerd's tree (so equality means something)."""
    e = tree.entries
    if image == "whiteouts":
        for gone in ("w/del-file", "w/del-dir", "w/opq1/old", "w/opq1/olddir",
                     "w/opq1/same/lowerchild", "w/opq2/old", "w/opq2/same/lowerchild",
                     "w/readd-dir/old", "w/hl/orig", "w/never-existed"):
            assert gone not in e, gone
        assert e["w/readd"]["sha256"] == hashlib.sha256(b"second\n").hexdigest()
        assert e["w/readd"]["mode"] == "0600"
        assert e["w/opq1/same/newchild"]["type"] == e["w/opq2/new"]["type"] == "file"
        assert (e["w/d2f"]["type"], e["w/f2l"]["type"], e["w/f2d"]["type"]) == (
            "file", "symlink", "dir")
        assert frozenset({"w/hl/link", "w/hl/link2"}) in tree.hardlinks
    elif image == "implicit-parents":
        assert "p/wh/a" not in e and e["p/wh/b"]["type"] == "file"
        assert (e["p/add"]["mode"], e["p/add"]["uid"]) == ("1777", 11)
        assert e["p/add"]["xattrs"] == [("user.dir", b"kept".hex())]
        assert e["p/add/deep"]["mode"] == "2750"
    else:
        assert e["dev/null"]["rdev"] == (1, 3) and e["dev/loop0"]["type"] == "block"
        assert e["dev/fifo"]["type"] == "fifo"
        assert [n for n, _ in e["x/cap"]["xattrs"]] == ["security.capability"]
        assert e["x/cap-hl"]["xattrs"] == []  # the link header's chown dropped it
        assert e["modes/suid-owned"]["mode"] == "4750"
        assert e["own/big"]["uid"] == 2_200_000
        assert frozenset({"hl/orig", "hl/l1", "hl/l2"}) in tree.hardlinks
        assert e["hl/odd"]["mode"] == "2711"  # the last header naming the inode wins
        assert e["names/日本語/ファイル"]["type"] == "file"
        if image == "specials":
            assert e["modes/sticky"]["mode"] == "1770"
            assert e["etc/passwd"]["mode"] == "0600"


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    work = tmp_path_factory.mktemp("rootfs-images")
    return {name: push(registry.host, spec, work / name, repo=f"rootfs/{name}")
            for name, spec in rootfs_images(work / "src").items()}


@pytest.mark.parametrize("image", IMAGES)
def test_rootfs_equal_entry_by_entry(
    image: str, pushed: dict[str, Pushed], containerd: Containerd, tmp_path: Path
) -> None:
    ref, built = pushed[image].text, pushed[image].built
    if image == "whiteouts":  # gzip, zstd, uncompressed and the 32-byte empty gzip layer
        layers = built.layer_descriptors
        assert [d.media_type.rsplit(".", 1)[-1] for d in layers] == [
            "tar+gzip", "tar+zstd", "tar", "tar+gzip"]
        assert layers[-1].size == 32
    unpacks: dict[str, Callable[[], Recorder]] = {
        "containerd": lambda: containerd_unpack(containerd, ref, tmp_path / "mnt-a"),
        "cargohold": lambda: embedded_unpack(ref, tmp_path / "store", tmp_path / "mnt-b"),
        "cargohold->containerd": lambda: cargohold_into_containerd(
            containerd, ref, tmp_path / "mnt-c"),
        "containerd-native": lambda: containerd_native_unpack(
            containerd, ref, tmp_path / "mnt-h"),
        "cargohold->containerd-native": lambda: cargohold_into_containerd(
            containerd, ref, tmp_path / "mnt-f", snapshotter="native"),
        "cargohold->containerd-diff-service": lambda: cargohold_into_containerd(
            containerd, ref, tmp_path / "mnt-g", direct=False),
        "cargohold-overlay-on-parents": lambda: snapshotter_unpack(
            built, tmp_path / "sn-overlay", tmp_path / "mnt-d", "overlay"),
        "cargohold-flat": lambda: snapshotter_unpack(
            built, tmp_path / "sn-flat", tmp_path / "mnt-e", "flat"),
    }
    with ThreadPoolExecutor(len(unpacks)) as pool:  # independent: run them side by side
        futures = {name: pool.submit(fn) for name, fn in unpacks.items()}
        recorders = {name: f.result(timeout=300) for name, f in futures.items()}
    trees = {name: record() for name, record in recorders.items()}  # one at a time

    volatile = VOLATILE_MTIMES.get(image, frozenset()) | {"/"}
    containerd_only = CONTAINERD_ONLY.get(image, frozenset())
    expected = trees.pop("containerd")
    spot_check(image, expected)
    # cargohold drove containerd's own applier: no exceptions but the unset mtimes.
    assert_same_tree(without(expected, mtimes=volatile),
                     without(trees.pop("cargohold->containerd-diff-service"), mtimes=volatile),
                     ("containerd", "cargohold->containerd-diff-service"))
    # containerd's native snapshotter copies a parent without its directories' mtimes (they
    # are when the copy was made, for containerd's unpack as for cargohold's): compare the
    # two native trees without them; everything else is equal, whiteouts included.
    native = trees.pop("containerd-native")
    dirs = frozenset(p for p, e in native.entries.items() if e["type"] == "dir")
    assert_same_tree(without(native, mtimes=dirs),
                     without(trees.pop("cargohold->containerd-native"), mtimes=dirs),
                     ("containerd-native", "cargohold->containerd-native"))
    for name, tree in trees.items():
        assert not containerd_only & tree.entries.keys(), name
        assert_same_tree(without(expected, mtimes=volatile, paths=containerd_only),
                         without(tree, mtimes=volatile), ("containerd", name))
