"""Unpacking images into snapshots: lazy on first `create`, `pull`, `unpack`, gc, crashes.

Against a real docker-registry (images built and pushed by cargohold's own code) and the
real snapshotter; the CLI runs as a subprocess.
"""

from __future__ import annotations

import contextvars
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cargohold import errors
from cargohold.errors import DigestMismatchError
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import BuiltImage, ImageSpec, LayerSpec, tamper_diff_ids
from cargohold.mount import is_mountpoint, unmount_all
from cargohold.oci.chainid import chain_ids
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.store.embedded import EmbeddedStore
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
from cargohold.store.interfaces import KIND_ACTIVE, KIND_COMMITTED, Mount
from cargohold.unpack.applier import EmbeddedApplier
from cargohold.unpack.image import Unpacker
from cargohold.unpack.layerwriter import ApplyStats
from cargohold.unpack.resolve import is_unpacked, unpacked_size
from tests.rig.images import Pushed, push, push_index
from tests.rig.needs import needs_root, require_root
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]



def cli(root: Path, *args: str, check: bool = True, timeout: float = 300,
        ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CARGOHOLD_RETRIES": "2", "CARGOHOLD_BACKOFF": "0.01",
             "CARGOHOLD_RESERVE": "0"},
    )
    if check and p.returncode != 0:
        raise AssertionError(f"cargohold {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def last_json(p: subprocess.CompletedProcess[str]) -> Any:
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    return json.loads(lines[-1])


def images_ls(root: Path) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in last_json(cli(root, "--json", "images", "ls"))["images"]}


def snapshots(root: Path) -> dict[str, str]:
    """key -> kind, read straight from the snapshotter's database."""
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return {}
    with EmbeddedSnapshotter(root) as sn:
        return {i.name: i.kind for i in sn.walk()}


def chains_of(built: BuiltImage) -> list[str]:
    return [str(c) for c in chain_ids(list(built.diff_ids))]


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "mnt"
    d.mkdir()
    yield d
    if is_mountpoint(d):
        unmount_all(d, lazy=True)


# ------------------------------------------------------------------ lazy create


@needs_root
def test_fetch_then_create_unpacks_lazily_once(registry: Registry, tmp_path: Path) -> None:
    spec = samples.small_images()["app-a"]
    pushed = push(registry.host, spec, tmp_path / "img")
    built = pushed.built
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    assert images_ls(root)[pushed.text]["unpacked"] is False
    assert snapshots(root) == {}

    first = cli(root, "create", pushed.text, "c1")
    assert first.stdout.startswith("unpacked 2 layers in "), first.stdout
    assert "(lazy)" in first.stdout.splitlines()[0]

    second = cli(root, "create", pushed.text, "c2")
    assert second.stdout.splitlines()[0] == "already unpacked"
    third = last_json(cli(root, "--json", "create", pushed.text, "c3"))
    assert third["lazy"] is False and third["unpack"]["chains_skipped"] == 2
    assert third["container"]["snapshot_key"] == "containers/c3"

    chains = chains_of(built)
    snaps = snapshots(root)
    assert {c: snaps.get(c) for c in chains} == dict.fromkeys(chains, KIND_COMMITTED)
    assert {k: v for k, v in snaps.items() if k.startswith("containers/")} == {
        f"containers/c{i}": KIND_ACTIVE for i in (1, 2, 3)
    }
    listed = last_json(cli(root, "--json", "containers", "ls"))["containers"]
    assert [(c["name"], c["image"]) for c in listed] == [(f"c{i}", pushed.text) for i in (1, 2, 3)]
    ls = images_ls(root)[pushed.text]
    assert ls["unpacked"] is True and ls["unpacked_size"] > 300_000

    # containerd's unpacker labels: uncompressed on layers, gc.ref.snapshot on the config.
    blobs = {b["digest"]: b["labels"] for b in last_json(cli(root, "--json", "content", "ls"))["blobs"]}
    for layer, diff_id in zip(built.layer_descriptors, built.diff_ids, strict=True):
        assert blobs[str(layer.digest)]["containerd.io/uncompressed"] == str(diff_id)
    assert built.config_descriptor is not None
    cfg_labels = blobs[str(built.config_descriptor.digest)]
    assert cfg_labels["containerd.io/gc.ref.snapshot.overlayfs"] == chains[-1]

    # A taken name is a conflict (exit 8) and unpacks nothing.
    dup = cli(root, "create", pushed.text, "c1", check=False)
    assert dup.returncode == 8 and "already exists" in dup.stderr


def test_create_needs_fetched_image(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    p = cli(root, "create", f"{registry.host}/never/fetched:v1", "c1", check=False)
    assert p.returncode == 4, p.stderr
    bad = cli(root, "create", "whatever:v1", "-bad name", check=False)
    assert bad.returncode == 2


# ------------------------------------------------------------------ pull and unpack


@needs_root
def test_pull_then_images_ls_shows_unpacked(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, samples.busybox(), tmp_path / "img")
    root = tmp_path / "store"
    out = last_json(cli(root, "--json", "pull", "--plain-http", pushed.text))
    assert not out["failed"]
    (img,) = out["images"]
    assert img["record"] == "created"
    (u,) = img["unpack"]
    assert u["chains_unpacked"] == 1 and u["platform"] == "linux/amd64"
    ls = images_ls(root)[pushed.text]
    assert ls["unpacked"] is True and ls["complete"] is True
    # busybox-static is ~2 MB unpacked
    assert ls["unpacked_size"] > 1_000_000
    text = cli(root, "images", "ls").stdout.splitlines()
    assert text[0].split() == ["REF", "DIGEST", "SIZE", "PLATFORMS", "COMPLETE", "UNPACKED",
                               "UNPACKED-SIZE"]
    row = next(r for r in text[1:] if r.startswith(pushed.text))
    assert row.split()[-4:-2] == ["yes", "yes"]

    again = cli(root, "pull", "--plain-http", pushed.text)
    assert "already present, nothing transferred" in again.stdout
    assert "already unpacked (1 layers)" in again.stdout


@needs_root
def test_unpack_is_idempotent_and_names_skipped_chains(registry: Registry, tmp_path: Path) -> None:
    imgs = samples.small_images()
    a = push(registry.host, imgs["app-a"], tmp_path / "a")
    b = push(registry.host, imgs["app-b"], tmp_path / "b")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", a.text, b.text)

    r1 = last_json(cli(root, "--json", "unpack", a.text))
    assert (r1["chains_total"], r1["chains_unpacked"], r1["chains_skipped"]) == (2, 2, 0)
    assert r1["chain_id"] == chains_of(a.built)[-1]
    assert r1["bytes_uncompressed"] > r1["bytes_compressed"] > 0
    assert set(r1["phases"]) >= {"seconds_read", "seconds_write"}

    r2 = last_json(cli(root, "--json", "unpack", a.text))
    assert (r2["chains_unpacked"], r2["chains_skipped"]) == (0, 2)
    assert [lo["state"] for lo in r2["layers"]] == ["exists", "exists"]
    assert "already unpacked (2 layers)" in cli(root, "unpack", a.text).stdout

    # app-b shares app-a's base layer: its chain is skipped, and the output says which.
    base_chain = chains_of(b.built)[0]
    assert base_chain == chains_of(a.built)[0]
    text = cli(root, "unpack", b.text).stdout
    assert "unpacked 1 of 2 layers" in text
    assert f"skipped layer 0: chain {base_chain} already unpacked" in text


@needs_root
def test_shared_base_chain_unpacked_once_by_concurrent_pulls(
    registry: Registry, tmp_path: Path
) -> None:
    imgs = samples.small_images()
    pushed = [push(registry.host, imgs[k], tmp_path / k) for k in ("app-a", "app-b", "deleter")]
    root = tmp_path / "store"
    out = last_json(cli(root, "--json", "pull", "-j", "3", "--plain-http",
                        *[p.text for p in pushed]))
    assert not out["failed"] and len(out["images"]) == 3
    states: dict[str, list[str]] = {}
    for img in out["images"]:
        for lo in img["unpack"][0]["layers"]:
            states.setdefault(lo["chain_id"], []).append(lo["state"])
    base = chains_of(pushed[0].built)[0]
    assert len(states[base]) == 3
    # Applied by exactly one image; the others found it committed or shared the run.
    assert states[base].count("unpacked") == 1, states[base]
    distinct = {c for p in pushed for c in chains_of(p.built)}
    assert sum(s.count("unpacked") for s in states.values()) == len(distinct) == 4
    assert {k for k, v in snapshots(root).items() if v == KIND_COMMITTED} == distinct


class _GatedApplier:
    """An applier that holds the base layer until two unpacks want its chain at once."""

    def __init__(self, inner: EmbeddedApplier, gate: Any) -> None:
        self.inner = inner
        self.gate = gate
        self.applied: list[Digest] = []
        self.lock = threading.Lock()

    def apply(self, desc: Descriptor, mounts: list[Mount], *, reader: BinaryIO,
              diff_id: Digest | None = None) -> Descriptor:
        return self.apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)[0]

    def apply_with_stats(self, desc: Descriptor, mounts: list[Mount], *, reader: BinaryIO,
                         diff_id: Digest | None = None) -> tuple[Descriptor, ApplyStats]:
        with self.lock:
            self.applied.append(desc.digest)
        self.gate(desc)
        return self.inner.apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)


@pytest.mark.parametrize("backend", ["overlay", "flat"])
def test_unpacker_applies_a_shared_chain_once(
    registry: Registry, tmp_path: Path, backend: str
) -> None:
    """Two images unpacked at the same time by one Unpacker: the base chain, wanted by
    both while in flight, is applied once (both backends: concurrent and sequential)."""
    if backend == "overlay":
        require_root("overlay")
    imgs = samples.small_images()
    a = push(registry.host, imgs["app-a"], tmp_path / "a")
    b = push(registry.host, imgs["app-docker"], tmp_path / "b")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", a.text, b.text)
    base_layer = a.built.layer_descriptors[0].digest
    assert b.built.layer_descriptors[0].digest == base_layer
    base_chain = chains_of(a.built)[0]
    unpacker_box: list[Unpacker] = []

    def gate(desc: Descriptor) -> None:
        if desc.digest != base_layer:
            return
        deadline = time.monotonic() + 30
        while unpacker_box[0]._flight.pending(base_chain) < 2:
            assert time.monotonic() < deadline, "the second image never asked for the base"
            time.sleep(0.005)

    with EmbeddedStore(root) as store, \
            EmbeddedSnapshotter(root, backend=backend) as sn:  # type: ignore[arg-type]
        applier = _GatedApplier(EmbeddedApplier(), gate)
        with Unpacker(store.content, sn, applier, jobs=4) as unpacker:
            unpacker_box.append(unpacker)
            targets = [store.images.get(p.text).target for p in (a, b)]
            with ThreadPoolExecutor(2) as pool:
                futs = [pool.submit(contextvars.copy_context().run, unpacker.unpack, t)
                        for t in targets]
                results = [f.result(timeout=120) for f in futs]
        assert applier.applied.count(base_layer) == 1
        assert len(applier.applied) == 3
        base_states = sorted(r.layers[0].state for r in results)
        assert base_states == ["shared", "unpacked"]
        for p, r in zip((a, b), results, strict=True):
            assert r.chain_id == chains_of(p.built)[-1]
            assert is_unpacked(store.content, sn, store.images.get(p.text))
            assert unpacked_size(store.content, sn, store.images.get(p.text)) > 0
        # The merged tree of app-docker (flat: a copy; overlay: lower dirs) has both layers.
        sn.view("check", results[1].chain_id)
        if backend == "flat":
            tree = sn.fs_path(results[1].chain_id)
            assert (tree / "usr/bin/tool").stat().st_size == 300_000
            assert (tree / "opt/app-c/app-c").stat().st_size == 500_000


# ------------------------------------------------------------------ platforms and content


@needs_root
def test_unpack_non_host_platform_rootfs(registry: Registry, tmp_path: Path, mnt: Path) -> None:
    pushed = push_index(registry.host, samples.multiarch_images(), tmp_path / "idx")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", "--platform", "linux/arm/v7", pushed.text)

    # The host's platform (amd64) was not fetched: a clear not-found, nothing unpacked.
    host = cli(root, "unpack", pushed.text, check=False)
    assert host.returncode == 4
    assert "linux/arm/v7" in host.stderr and "--platform" in host.stderr

    r = last_json(cli(root, "--json", "unpack", "--platform", "linux/arm/v7", pushed.text))
    arm = pushed.built.image_for(Platform("linux", "arm", "v7"))
    assert r["platform"] == "linux/arm/v7"
    assert r["chain_id"] == chains_of(arm)[-1] and r["chains_unpacked"] == 2
    assert images_ls(root)[pushed.text]["unpacked"] is True

    cli(root, "create", "--platform", "linux/arm/v7", pushed.text, "arm")
    cli(root, "mount", "arm", str(mnt))
    assert (mnt / "etc/arch").read_text() == "linux/arm/v7\n"
    assert (mnt / "etc/os-release").exists()  # from the shared base layer
    cli(root, "umount", str(mnt))


@needs_root
def test_merged_rootfs_has_whiteouts_applied(registry: Registry, tmp_path: Path, mnt: Path) -> None:
    pushed = push(registry.host, samples.small_images()["deleter"], tmp_path / "img")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    cli(root, "create", pushed.text, "d1")
    cli(root, "mount", "d1", str(mnt))
    try:
        assert (mnt / "usr/bin/tool").stat().st_size == 300_000
        assert not (mnt / "usr/bin/tool-alias").exists()  # whiteout
        assert sorted(os.listdir(mnt / "usr/share/doc")) == ["NEW"]  # opaque dir
        assert (mnt / "usr/share/doc/NEW").read_bytes() == b"replaced docs\n"
        assert os.readlink(mnt / "lib") == "usr/lib"
        assert (mnt / "tmp").stat().st_mode & 0o7777 == 0o1777
        # The container's layer is writable and keeps what is written.
        (mnt / "written.txt").write_text("kept\n")
        busy = cli(root, "containers", "rm", "d1", check=False)
        assert busy.returncode == 8 and "mounted" in busy.stderr
    finally:
        cli(root, "umount", str(mnt))
    assert not is_mountpoint(mnt)
    cli(root, "mount", "d1", str(mnt))
    assert (mnt / "written.txt").read_text() == "kept\n"
    cli(root, "umount", str(mnt))
    # The image's own layers were not touched by the container's write.
    cli(root, "create", pushed.text, "d2")
    cli(root, "mount", "d2", str(mnt))
    assert not (mnt / "written.txt").exists()
    cli(root, "umount", str(mnt))
    cli(root, "containers", "rm", "d1", "d2")
    assert not any(k.startswith("containers/") for k in snapshots(root))


@needs_root
def test_bad_layer_leaves_no_partial_snapshot(registry: Registry, tmp_path: Path) -> None:
    spec = samples.small_images()["app-a"]
    built = tamper_diff_ids(spec.build(tmp_path / "b"),
                            replace_at={1: Digest.from_bytes(b"not the layer")})
    pushed = push(registry.host, built, tmp_path / "img")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    p = cli(root, "create", pushed.text, "c1", check=False)
    assert p.returncode == DigestMismatchError.exit_code, p.stderr
    snaps = snapshots(root)
    assert KIND_ACTIVE not in snaps.values()  # the failed layer's snapshot is gone
    assert not any(k.startswith("containers/") for k in snaps)
    assert images_ls(root)[pushed.text]["unpacked"] is False
    assert last_json(cli(root, "--json", "containers", "ls")) == {"containers": []}


# ------------------------------------------------------------------ crash and gc


def _active_extracts(root: Path, *, starting: bool = False) -> list[str]:
    """Keys of the active ``extract-*`` snapshots. ``starting``: the store may still be
    being created by a running command (no database or no table yet, or it is locked: none
    seen yet); otherwise every error is raised, so an unreadable database never passes as
    "nothing left behind"."""
    db = root / "snapshots" / "metadata.db"
    if starting and not db.exists():
        return []
    if not db.exists():
        raise AssertionError(f"{db} does not exist")
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = c.execute(
                "SELECT key FROM snapshots WHERE kind = 'active' AND key LIKE 'extract-%'"
            ).fetchall()
        finally:
            c.close()
    except sqlite3.OperationalError as e:
        if starting and ("no such table" in str(e) or "locked" in str(e)):
            return []
        raise
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def big60(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """A 60 MB, 4-layer image: big enough to be stopped mid-unpack (pushed once)."""
    spec = samples.big_image(60_000_000, layers=4, name="samples/big60")
    return push(registry.host, spec, tmp_path_factory.mktemp("big60"))


def _signal_mid_unpack(pushed: Pushed, tmp_path: Path, sig: int,
                       stopped: int) -> tuple[Path, str]:
    """Fetch ``pushed`` into a fresh store, start `unpack`, send ``sig`` once a layer is
    being applied; retried on a fresh store until the unpack exits with ``stopped`` (it may
    finish before the signal lands). Returns the store's root and the unpack's stderr."""
    for attempt in range(5):
        root = tmp_path / f"store{attempt}"
        cli(root, "fetch", "--plain-http", pushed.text)
        proc = subprocess.Popen(
            [*CLI, "--root", str(root), "unpack", "-j", "2", pushed.text],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CARGOHOLD_RESERVE": "0"},
        )
        seen: list[str] = []
        while proc.poll() is None and not seen:
            seen = _active_extracts(root, starting=True)
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == stopped and snapshots(root).get(chains_of(pushed.built)[-1]) is None:
            return root, err
        # It finished before the signal landed (or committed its top chain): try again.
        assert proc.returncode in (0, stopped), err
    pytest.fail(f"the unpack always finished before signal {sig} could stop it")


@needs_root
def test_kill_9_mid_unpack_then_gc_then_rerun(big60: Pushed, tmp_path: Path) -> None:
    pushed = big60
    top = chains_of(pushed.built)[-1]
    root, _ = _signal_mid_unpack(pushed, tmp_path, signal.SIGKILL, -signal.SIGKILL)

    snaps = snapshots(root)
    assert top not in snaps
    assert any(k.startswith("extract-") and v == KIND_ACTIVE for k, v in snaps.items())

    # gc first: any other command would release the dead unpack's lease and its extract
    # snapshots itself (tests/test_leases.py).
    gc = last_json(cli(root, "--json", "gc"))
    removed = {r["id"].split("/", 1)[1] for r in gc["removed"] if r["kind"] == "snapshot"}
    assert {k for k in snaps if k.startswith("extract-")} <= removed
    assert images_ls(root)[pushed.text]["unpacked"] is False
    assert snapshots(root) == {}  # nothing references chains of an unfinished unpack
    assert not [d for d in os.listdir(root / "snapshots") if d.startswith(("new-", "rm-"))]
    assert images_ls(root)[pushed.text]["complete"] is True  # the content is kept

    r = last_json(cli(root, "--json", "unpack", pushed.text))
    assert r["chains_unpacked"] == 4 and r["chain_id"] == top
    assert images_ls(root)[pushed.text]["unpacked"] is True
    assert {k: v for k, v in snapshots(root).items() if v != KIND_COMMITTED} == {}


@needs_root
def test_gc_keeps_snapshots_of_records_and_containers(registry: Registry, tmp_path: Path) -> None:
    imgs = samples.small_images()
    a = push(registry.host, imgs["app-a"], tmp_path / "a")
    b = push(registry.host, imgs["app-b"], tmp_path / "b")
    bb = push(registry.host, samples.busybox(), tmp_path / "bb")
    solo = push(registry.host, ImageSpec([LayerSpec([Dir("x"), File("x/y", b"y\n")])]),
                tmp_path / "solo")
    root = tmp_path / "store"
    cli(root, "pull", "--plain-http", a.text, b.text, bb.text, solo.text)
    cli(root, "create", bb.text, "keeper")
    ca, cb, cbb, csolo = (chains_of(p.built) for p in (a, b, bb, solo))
    committed = {k for k, v in snapshots(root).items() if v == KIND_COMMITTED}
    assert committed == {*ca, *cb, *cbb, *csolo}

    assert "snapshot" not in cli(root, "gc").stdout  # everything is referenced
    cli(root, "images", "rm", b.text, bb.text, solo.text)
    gc = last_json(cli(root, "--json", "gc"))
    removed = {r["id"] for r in gc["removed"] if r["kind"] == "snapshot"}
    # app-b's own layer and solo go; the base stays for app-a; busybox stays for its container.
    assert removed == {f"overlayfs/{cb[1]}", f"overlayfs/{csolo[0]}"}
    snaps = snapshots(root)
    assert {*ca, *cbb, "containers/keeper"} == set(snaps)

    cli(root, "containers", "rm", "keeper")
    gc2 = last_json(cli(root, "--json", "gc"))
    assert {r["id"] for r in gc2["removed"] if r["kind"] == "snapshot"} == {
        f"overlayfs/{cbb[0]}"
    }
    assert set(snapshots(root)) == set(ca)
    assert images_ls(root)[a.text]["unpacked"] is True


@needs_root
def test_sigterm_mid_unpack_cleans_up_and_exits_130(big60: Pushed, tmp_path: Path) -> None:
    """SIGTERM is handled like Ctrl-C: workers stop, half-applied snapshots are removed at
    once (no gc needed), exit 130, and a rerun completes."""
    pushed = big60
    top = chains_of(pushed.built)[-1]
    root, err = _signal_mid_unpack(pushed, tmp_path, signal.SIGTERM,
                                   errors.Interrupted.exit_code)

    assert "interrupted" in err
    assert "could not remove" not in err  # no cleanup failed (the store stayed open)
    assert top not in snapshots(root)
    assert _active_extracts(root) == []  # cleaned up on the way out
    assert images_ls(root)[pushed.text]["unpacked"] is False
    r = last_json(cli(root, "--json", "unpack", pushed.text))
    assert r["chain_id"] == top
    assert images_ls(root)[pushed.text]["unpacked"] is True


class _InterruptingPool:
    """A pool whose ``submit`` number ``at`` queues its task and then raises
    KeyboardInterrupt before returning: SIGTERM landing inside ``ThreadPoolExecutor.submit``
    (e.g. in ``Thread.start``) after the work item was queued."""

    def __init__(self, pool: Any, at: int) -> None:
        self.pool = pool
        self.at = at
        self.calls = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        fut = self.pool.submit(*args, **kwargs)
        if self.calls == self.at:
            raise KeyboardInterrupt
        return fut


class _HoldingApplier(_GatedApplier):
    """Holds every layer until the unpack is cancelled; counts the applies in progress."""

    def __init__(self, inner: EmbeddedApplier, cancel: threading.Event) -> None:
        super().__init__(inner, lambda _desc: cancel.wait(60))
        self.running = 0

    def apply_with_stats(self, desc: Descriptor, mounts: list[Mount], *, reader: BinaryIO,
                         diff_id: Digest | None = None) -> tuple[Descriptor, ApplyStats]:
        with self.lock:
            self.running += 1
        try:
            return super().apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)
        finally:
            with self.lock:
                self.running -= 1


@needs_root
def test_interrupt_inside_submit_waits_for_every_layer_task(
    registry: Registry, tmp_path: Path
) -> None:
    """The SIGTERM race (issue 14, defects 7/20): KeyboardInterrupt raised while the layer
    tasks are being submitted. unpack() must cancel the tasks and return only when none of
    them runs and their snapshots are removed (the CLI closes the store right after)."""
    pushed = push(registry.host, samples.small_images()["app-a"], tmp_path / "img")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    with EmbeddedStore(root) as store, EmbeddedSnapshotter(root, backend="overlay") as sn:
        unpacker = Unpacker(store.content, sn, EmbeddedApplier(), jobs=2)
        applier = _HoldingApplier(EmbeddedApplier(), unpacker.cancel)
        unpacker.applier = applier
        pool = _InterruptingPool(unpacker._executor(), at=2)
        unpacker._executor = lambda: pool  # type: ignore[method-assign]
        try:
            with pytest.raises(KeyboardInterrupt):
                unpacker.unpack(store.images.get(pushed.text).target)
            # Nothing of the unpack may still run or be left half-applied.
            assert applier.running == 0
            assert [i.name for i in sn.walk() if i.kind == KIND_ACTIVE] == []
        finally:
            unpacker.cancel.set()  # (before the fix: release the held task)
            unpacker.close()
        assert pool.calls == 2
        assert [i.name for i in sn.walk()] == []  # nothing committed either
    # A rerun completes.
    r = last_json(cli(root, "--json", "unpack", pushed.text))
    assert r["chains_unpacked"] == 2


class _FailingRemoveSnapshotter(EmbeddedSnapshotter):
    def remove(self, key: str) -> None:
        if key.startswith("extract-"):
            raise errors.CargoholdError(f"simulated failure removing {key}")
        super().remove(key)


class _BrokenApplier(EmbeddedApplier):
    def apply_with_stats(self, desc: Descriptor, mounts: list[Mount], *, reader: BinaryIO,
                         diff_id: Digest | None = None) -> tuple[Descriptor, ApplyStats]:
        raise errors.InvalidInputError("simulated bad layer")


@needs_root
def test_failed_cleanup_is_reported_and_gc_removes_the_leftover(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A half-applied snapshot that cannot be removed is not dropped silently: a warning
    names it (the layer's own error is the one raised), and gc removes it."""
    pushed = push(registry.host, samples.small_images()["tiny"], tmp_path / "img")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    with EmbeddedStore(root) as store, \
            _FailingRemoveSnapshotter(root, backend="overlay") as sn, \
            Unpacker(store.content, sn, _BrokenApplier()) as unpacker, \
            pytest.raises(errors.InvalidInputError, match="simulated bad layer"):
        unpacker.unpack(store.images.get(pushed.text).target)
    left = _active_extracts(root)
    assert len(left) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(left[0] in w and "gc" in w for w in warnings), warnings
    gc = last_json(cli(root, "--json", "gc"))
    assert f"overlayfs/{left[0]}" in {r["id"] for r in gc["removed"] if r["kind"] == "snapshot"}
    assert _active_extracts(root) == []


class _HoldAfterApply(EmbeddedApplier):
    """Applies a layer, then holds it (before the unpacker commits it) until ``release``."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release
        self.cond = threading.Condition()
        self.applied = 0

    def apply_with_stats(self, desc: Descriptor, mounts: list[Mount], *, reader: BinaryIO,
                         diff_id: Digest | None = None) -> tuple[Descriptor, ApplyStats]:
        out = super().apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)
        with self.cond:
            self.applied += 1
            self.cond.notify_all()
        assert self.release.wait(120), "never released"
        return out


@pytest.mark.parametrize(("backend", "jobs"), [("overlay", 2), ("flat", 1)])
def test_another_process_commits_the_same_chains_first(
    registry: Registry, tmp_path: Path, backend: str, jobs: int
) -> None:
    """Issue 14, 23: while this unpack holds its applied layers uncommitted, another process
    (`cargohold unpack`) commits the same chains. The held unpack then succeeds and uses
    theirs: its half-applied snapshots go, nothing is left but the committed chains."""
    if backend == "overlay":
        require_root("overlay")
    pushed = push(registry.host, samples.small_images()["app-a"], tmp_path / "img")
    chains = chains_of(pushed.built)
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text)
    release = threading.Event()
    applier = _HoldAfterApply(release)
    with EmbeddedStore(root) as store, \
            EmbeddedSnapshotter(root, backend=backend) as sn:  # type: ignore[arg-type]
        target = store.images.get(pushed.text).target
        with Unpacker(store.content, sn, applier, jobs=jobs) as unpacker, \
                ThreadPoolExecutor(1) as pool:
            fut = pool.submit(unpacker.unpack, target)
            try:
                with applier.cond:  # the first layer (both on overlay) applied, uncommitted
                    assert applier.cond.wait_for(lambda: applier.applied >= jobs or fut.done(),
                                                 timeout=120)
                assert not fut.done()
                other = cli(root, "--json", "unpack", pushed.text)  # the other process
                assert last_json(other)["chains_unpacked"] == 2
            finally:
                release.set()
            result = fut.result(timeout=120)
        assert result.chain_id == chains[-1]
        assert result.layers[0].state == "shared"
        assert {lo.state for lo in result.layers[1:]} <= {"shared", "exists"}
        assert {i.name: i.kind for i in sn.walk()} == dict.fromkeys(chains, KIND_COMMITTED)
        assert is_unpacked(store.content, sn, store.images.get(pushed.text))
    assert images_ls(root)[pushed.text]["unpacked"] is True
