"""Applier conformance: the same fixture layers give the same trees on every backend.

The layers are the rootfs fixture images of tests/rig/images.py, built by cargohold's own
image builder (``cargohold.imagebuild``): ``whiteouts`` (files, directories, symlinks and
hardlinks; file and directory whiteouts, opaque directories with the marker before and after
the new entries, re-adds, type changes, a whiteout of something that never existed in the
bottom layer; gzip, zstd, uncompressed and the 32-byte empty gzip layer) and ``specials``
(hardlink groups, symlink chains, xattrs, setuid/sticky modes, owners, long and unicode
names, a fifo and devices; a GNU-format second layer changing lower entries).

Each backend (tests/conformance/backends.py) applies them with its own applier, two ways:
``in-order`` (each layer prepared on its committed parent, committed keeping it) and
``standalone`` (every layer prepared without a parent, applied concurrently, committed in
chain order onto its parent: the parallel unpack; refused with UnsupportedError where
``standalone_layers`` is false, and then done in order). A read-only view of *every* prefix
of the chain (each is an image's root file system) is mounted and recorded with
tests/test_rootfs_vs_containerd.py's ``record_tree`` (type, mode, owner, size, content hash,
link target, xattrs, devices, mtime, hardlink groups); all backends must give the same
trees, and the expected effects of the fixture are checked (``spot_check``).

The only tolerated differences: the root directory's mtime (no layer defines it), and two
of containerd's ``native`` snapshotter, which starts every snapshot as a copy of its parent
(continuity's ``fs.CopyDir``): the copied directories get the time of the copy (as in
tests/test_rootfs_vs_containerd.py), and hardlinks are kept for regular files only, so a
hardlinked symlink (``chain/s``, ``chain/s-hl`` of ``specials``) is two separate symlinks in
the snapshots above the layer that made it (same type, mode, owner and target).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from cargohold.errors import UnsupportedError
from cargohold.imagebuild.image import BuiltImage
from cargohold.mount import mounted
from cargohold.oci.chainid import chain_ids
from cargohold.store.interfaces import KIND_ACTIVE, Mount
from tests.conformance.backends import SNAPSHOT_BACKENDS, SnapshotsUnderTest, open_snapshots
from tests.rig.containerd import Containerd
from tests.rig.images import rootfs_images
from tests.rig.needs import require_root
from tests.test_apply import describe
from tests.test_rootfs_vs_containerd import (
    Tree,
    assert_same_tree,
    mount_point,
    record_tree,
    spot_check,
    without,
)
from tests.test_snapshots import EXPECTED, L1, L2, L3, _blob

IMAGES = ("whiteouts", "specials")
REFERENCE = SNAPSHOT_BACKENDS[0]


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltImage]:
    work = tmp_path_factory.mktemp("conformance-layers")
    specs = rootfs_images(work / "src")
    return {name: specs[name].build(work / name) for name in IMAGES}


def unpack(s: SnapshotsUnderTest, image: BuiltImage, standalone: bool) -> list[str]:
    """Every layer of ``image`` applied by ``s.applier`` and committed by chain ID; the
    committed names, bottom first."""
    names = [str(c) for c in chain_ids(list(image.diff_ids))]
    layers = list(zip(image.layer_descriptors, image.diff_ids, strict=True))

    def apply(i: int, key: str, mounts: list[Mount]) -> None:
        desc, diff_id = layers[i]
        with image.open(desc.digest) as blob:
            got = s.applier.apply(desc, mounts, reader=blob, diff_id=diff_id)
        assert (got.digest, s.sn.stat(key).kind) == (diff_id, KIND_ACTIVE)

    if standalone:
        keys = [_key("extract") for _ in layers]
        mounts = [s.sn.prepare(key) for key in keys]
        with ThreadPoolExecutor(len(keys)) as pool:  # all layers at once, as pull does
            list(pool.map(apply, range(len(keys)), keys, mounts))
        if not s.sn.standalone_layers:
            with pytest.raises(UnsupportedError):
                s.sn.commit(names[1], keys[1], parent=names[0])
            for key in keys:
                s.sn.remove(key)
        else:
            for i, key in enumerate(keys):
                s.sn.commit(names[i], key, parent=names[i - 1] if i else "")
            return names
    for i, name in enumerate(names):
        key = _key("extract")
        apply(i, key, s.sn.prepare(key, names[i - 1] if i else ""))
        s.sn.commit(name, key)
    return names


def record_views(s: SnapshotsUnderTest, names: list[str], tmp_path: Path) -> list[Tree]:
    """A read-only view of each committed name, mounted and recorded."""
    trees = []
    for name in names:
        key = _key("view")
        mounts = s.sn.view(key, name)
        try:
            with mount_point(tmp_path / key) as mnt, mounted(mounts, mnt):
                trees.append(record_tree(mnt))
        finally:
            s.sn.remove(key)
    return trees


def comparable(backend: str, tree: Tree, level: int) -> Tree:
    """``tree`` (the view of layer ``level``) without what may differ by backend (see the
    module docstring)."""
    if backend != "containerd-native":
        return without(tree, mtimes=frozenset({"/"}))
    dirs = frozenset(p for p, e in tree.entries.items() if e["type"] == "dir")
    out = without(tree, mtimes=dirs | {"/"})
    if level == 0:  # made by the applier: nothing copied
        return out
    links = {p for p, e in tree.entries.items() if e["type"] == "symlink"}
    return Tree(out.entries, frozenset(g for g in out.hardlinks if not g <= links))


@pytest.fixture
def all_backends(request: pytest.FixtureRequest,
                 tmp_path: Path) -> Iterator[dict[str, SnapshotsUnderTest]]:
    def ctrd() -> Containerd:
        c: Containerd = request.getfixturevalue("containerd")
        return c

    with ExitStack() as stack:
        yield {b: stack.enter_context(open_snapshots(b, tmp_path / b, ctrd))
               for b in SNAPSHOT_BACKENDS}


@pytest.mark.parametrize("mode", ["in-order", "standalone"])
@pytest.mark.parametrize("image", IMAGES)
def test_same_layers_same_trees(
    image: str, mode: str, built: dict[str, BuiltImage],
    all_backends: dict[str, SnapshotsUnderTest], tmp_path: Path,
) -> None:
    img = built[image]
    trees = {}
    for backend, s in all_backends.items():
        names = unpack(s, img, standalone=mode == "standalone")
        trees[backend] = record_views(s, names, tmp_path)
        for name in reversed(names):
            s.sn.remove(name)
    spot_check(image, trees[REFERENCE][-1])
    if image == "whiteouts":  # the bottom layer alone: its whiteout hides nothing
        assert "w/never-existed" not in trees[REFERENCE][0].entries
    for backend, levels in trees.items():
        for i, (want, got) in enumerate(zip(trees[REFERENCE], levels, strict=True)):
            assert_same_tree(comparable(backend, want, i), comparable(backend, got, i),
                             (f"{REFERENCE} layer {i}", f"{backend} layer {i}"))


def test_apply_gives_the_expected_tree(snap: SnapshotsUnderTest, tmp_path: Path) -> None:
    """tests/test_snapshots.py's three whiteout layers (gzip, zstd, gzip: whiteouts, opaque
    directories, replaced types, implicit parents, a whiteout and a new entry of that name in
    one layer), applied by each backend's applier on prepared snapshots and committed by
    chain ID: the expected merged tree."""
    blobs = [_blob(entries, "zstd" if i % 2 else "gzip") for i, entries in enumerate([L1, L2, L3])]
    names = [str(c) for c in chain_ids([b[2] for b in blobs])]
    parent = ""
    for (desc, blob, diff_id), name in zip(blobs, names, strict=True):
        key = _key("extract")
        mounts = snap.sn.prepare(key, parent)
        got = snap.applier.apply(desc, mounts, reader=io.BytesIO(blob), diff_id=diff_id)
        assert got.digest == diff_id
        snap.sn.commit(name, key)
        parent = name
    key = _key("view")
    mounts = snap.sn.view(key, names[-1])
    try:
        with mount_point(tmp_path / key) as mnt, mounted(mounts, mnt):
            assert describe(mnt) == EXPECTED
    finally:
        snap.sn.remove(key)
    for name in reversed(names):
        snap.sn.remove(name)


def test_containerd_diff_service_apply_of_a_blob_another_namespace_holds(
    request: pytest.FixtureRequest,
) -> None:
    """containerd shares a blob its backend has with a namespace that asks to write it (the
    writer starts at the blob's size); the diff service applier's ingest must not write it
    again."""
    require_root("containerd's own root and state directories")
    from cargohold.store.containerd import ContainerdStore

    ctrd = request.getfixturevalue("containerd")
    desc, blob, diff_id = _blob(L1)
    with ContainerdStore(ctrd.address, ctrd.unique_namespace("holder")) as a:
        with a.content.writer(_key("hold"), total=desc.size, expected=desc.digest) as w:
            w.write(blob[w.offset:])  # an earlier test may have left the blob in the backend
            w.commit(desc.size, desc.digest)
        with ContainerdStore(ctrd.address, ctrd.unique_namespace("other")) as b:
            key = _key("extract")
            mounts = b.snapshots.prepare(key)
            got = b.diff_applier.apply(desc, mounts, reader=io.BytesIO(blob), diff_id=diff_id)
            assert got.digest == diff_id
            b.snapshots.remove(key)
