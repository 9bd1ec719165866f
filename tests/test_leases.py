"""Leases of cargohold's own jobs (issue 14, defects 12, 14, 15): released however a process
ends, recognised and released when their owner died (kill -9) with the half-applied snapshots
they held, real sizes in gc's report, and a second writer of a blob waiting for the first."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold import errors
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import (
    LABEL_GC_EXPIRE,
    LABEL_OWNER_BOOT,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_PIDNS,
    LABEL_OWNER_START,
)
from cargohold.leasing import (
    attached,
    leased,
    owner_labels,
    owner_state,
    process_start,
    reap_dead_leases,
)
from cargohold.store.containerd.store import ContainerdStore
from cargohold.store.embedded.gc import collect
from cargohold.store.interfaces import KIND_ACTIVE, KIND_COMMITTED, active_lease
from cargohold.store.open import LocalStore
from tests.rig.cli import CLI, TEST_ENV, last_json, run_cli
from tests.rig.containerd import Containerd
from tests.rig.images import Pushed, push
from tests.rig.needs import require_root
from tests.rig.services import Registry

# --------------------------------------------------------------------------- owners


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def dead_owner() -> dict[str, str]:
    """Owner labels of a dead process on this host and boot. The start time "1" makes it
    dead even if the pid was reused meanwhile (nothing but init starts at tick 1)."""
    return {**owner_labels(), LABEL_OWNER_PID: str(_dead_pid()), LABEL_OWNER_START: "1"}


def test_owner_state() -> None:
    assert owner_state(owner_labels()) == "alive"
    assert owner_state(dead_owner()) == "dead"
    # The pid runs, but it is another process than the one that took the lease.
    assert owner_state({**owner_labels(), LABEL_OWNER_START: "1"}) == "dead"
    # Another boot: every process of that boot is gone, whatever runs under the pid now.
    assert owner_state({**owner_labels(), LABEL_OWNER_BOOT: "another-boot"}) == "dead"
    # Not ours to judge: no owner labels (another client's lease), or another host.
    assert owner_state({}) == "unknown"
    assert owner_state({**dead_owner(), LABEL_OWNER_HOST: "elsewhere"}) == "unknown"
    # A container sharing the store (same host name, e.g. host network): its pids are not ours.
    assert owner_state({**dead_owner(), LABEL_OWNER_PIDNS: "pid:[1]"}) == "unknown"
    assert process_start(os.getpid()) == owner_labels()[LABEL_OWNER_START]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "root") as s:
        yield s


@pytest.mark.parametrize("exc", [errors.NotFoundError("boom"), KeyboardInterrupt()])
def test_leased_releases_however_the_block_ends(store: LocalStore,
                                                exc: BaseException) -> None:
    with leased(store, "fetch") as lid:
        assert active_lease.get() == lid
        labels = store.leases.get(lid).labels
        assert labels[LABEL_OWNER_PID] == str(os.getpid()) and labels["cargohold.purpose"] == "fetch"
    assert store.leases.list() == [] and active_lease.get() is None
    with pytest.raises(type(exc)), leased(store, "fetch"):
        raise exc
    assert store.leases.list() == []



def test_leased_expiry_and_attached(store: LocalStore) -> None:
    """The one lease helper: ``expire`` sets gc.expire that far ahead, ``attach=False``
    leaves the active lease alone, :func:`attached` attaches a lease held elsewhere (None:
    none) and restores the previous one however the block ends."""
    before = datetime.now(UTC)
    with leased(store, "verify-repair", attach=False, expire=timedelta(hours=1)) as lid:
        assert active_lease.get() is None
        expiry = datetime.fromisoformat(store.leases.get(lid).labels[LABEL_GC_EXPIRE])
        assert before + timedelta(minutes=59) < expiry < before + timedelta(hours=2)
        with attached(lid):
            assert active_lease.get() == lid
            with pytest.raises(KeyError), attached(None):
                assert active_lease.get() is None
                raise KeyError("x")
            assert active_lease.get() == lid
        assert active_lease.get() is None
    assert store.leases.list() == []

def _extract_with_file(store: LocalStore, key: str, size: int) -> None:
    """An active extract snapshot holding ``size`` bytes (a killed unpack's)."""
    store.snapshots.prepare(key)
    (store.snapshots.fs_path(key) / "f").write_bytes(os.urandom(size))


def test_reap_releases_dead_leases_and_their_extract_snapshots(store: LocalStore) -> None:
    sn = store.snapshots
    dead = store.leases.create(labels=dead_owner())
    token = active_lease.set(dead.id)
    try:
        _extract_with_file(store, "extract-dead-0-sha256:aa", 10_000)
        sn.prepare("extract-dead-1-sha256:bb")
        sn.commit("sha256:bb", "extract-dead-1-sha256:bb")  # committed: not half-applied
    finally:
        active_lease.reset(token)
    alive = store.leases.create(labels=owner_labels())
    foreign = store.leases.create(labels={"someone": "else"})
    token = active_lease.set(foreign.id)
    try:
        sn.prepare("extract-foreign")  # another client's, under its own lease
    finally:
        active_lease.reset(token)

    reaped = reap_dead_leases(store)
    assert [(r.lease, r.snapshots) for r in reaped] == [
        (dead.id, ("extract-dead-0-sha256:aa",))]
    assert {lease.id for lease in store.leases.list()} == {alive.id, foreign.id}
    assert {i.name: i.kind for i in sn.walk()} == {
        "sha256:bb": KIND_COMMITTED, "extract-foreign": KIND_ACTIVE}
    assert reap_dead_leases(store) == []


def test_gc_ignores_dead_leases_and_reports_bytes_on_disk(store: LocalStore) -> None:
    dead = store.leases.create(labels=dead_owner())
    token = active_lease.set(dead.id)
    try:
        _extract_with_file(store, "extract-x-0-sha256:cc", 200_000)
    finally:
        active_lease.reset(token)
    result = collect(store, snapshot_hook=store.snapshots)
    removed = {(r.kind, r.id): r.size for r in result.removed}
    assert removed[("lease", dead.id)] == 0
    assert removed[("snapshot", f"{store.snapshots.name}/extract-x-0-sha256:cc")] >= 200_000
    assert list(store.snapshots.walk()) == [] and store.leases.list() == []


# --------------------------------------------------------------------------- CLI, embedded


def _leases(root: Path) -> list[tuple[str, dict[str, str]]]:
    with sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True) as c:
        return [(i, json.loads(lb)) for i, lb in c.execute("SELECT id, labels FROM leases")]


def _active(root: Path) -> list[str]:
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [k for (k,) in c.execute("SELECT key FROM snapshots WHERE kind = 'active'")]


def test_failed_fetch_releases_its_lease(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, ImageSpec([LayerSpec([File("a", b"a")])]), tmp_path / "i")
    root = tmp_path / "store"
    run_cli(root, "fetch", "--plain-http", pushed.text)
    missing = pushed.text.rsplit(":", 1)[0] + ":nope"
    p = run_cli(root, "fetch", "--plain-http", pushed.text, missing, check=False)
    assert p.returncode == errors.PartialFailureError.exit_code, p.stderr
    assert _leases(root) == []


@pytest.fixture(scope="module")
def big40(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    spec = samples.big_image(40_000_000, layers=4, name="samples/big40")
    return push(registry.host, spec, tmp_path_factory.mktemp("big40"))


def _spec(tmp_path: Path, ref: str) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'budget = "10GB"\n[[image]]\nref = "{ref}"\nmode = "pull"\n')
    return spec


def _command(command: str, ref: str, tmp_path: Path) -> list[str]:
    if command == "bake":
        return ["bake", "--plain-http", str(_spec(tmp_path, ref))]
    return ["pull", "--plain-http", "-j", "2", ref]


def _killed_mid_unpack(root: Path, args: list[str], sig: int) -> int:
    """Start ``cargohold ARGS``, send ``sig`` once a layer is being applied; its status."""
    proc = subprocess.Popen([*CLI, "--root", str(root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **TEST_ENV})
    while proc.poll() is None:
        try:
            if any(k.startswith("extract-") for k in _active(root)):
                break
        except sqlite3.Error:
            pass  # being created
        time.sleep(0.002)
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.parametrize("command", ["pull", "bake"])
def test_rerun_after_kill_9_releases_the_lease_and_cleans_up(big40: Pushed, tmp_path: Path,
                                                             command: str) -> None:
    args = _command(command, big40.text, tmp_path)
    for attempt in range(5):
        root = tmp_path / f"store{attempt}"
        if _killed_mid_unpack(root, args, signal.SIGKILL) == -signal.SIGKILL:
            break
    else:
        pytest.fail(f"the {command} always finished before kill -9 landed")
    assert _leases(root), f"the killed {command} left no lease (it must have held one)"
    assert any(k.startswith("extract-") for k in _active(root))

    rerun = run_cli(root, "--json", *args)
    assert _leases(root) == []
    assert _active(root) == []  # the dead run's half-applied snapshots went with its lease
    gc = last_json(run_cli(root, "--json", "gc", "--dry-run"))
    assert [r for r in gc["removed"] if r["kind"] in ("snapshot", "lease")] == []
    run_cli(root, "verify")
    if command == "bake":  # the budget is checked against what is on disk
        du = last_json(run_cli(root, "--json", "du"))
        assert last_json(rerun)["totals"]["snapshot_bytes"] == du["totals"]["snapshot_bytes"]


def test_gc_after_sigterm_and_kill_reclaims_everything(big40: Pushed, tmp_path: Path) -> None:
    """The issue's reproduction: an interrupted pull, a pull, `images rm`, `gc`: nothing of
    the image stays on disk."""
    root = tmp_path / "store"
    rc = _killed_mid_unpack(root, _command("pull", big40.text, tmp_path), signal.SIGTERM)
    assert rc in (0, errors.Interrupted.exit_code)
    assert _leases(root) == []  # released on the way out
    run_cli(root, "pull", "--plain-http", big40.text)
    run_cli(root, "images", "rm", big40.text)
    gc = last_json(run_cli(root, "--json", "gc"))
    assert gc["bytes_freed"] >= 40_000_000
    blobs = root / "content" / "blobs" / "sha256"
    assert not list(blobs.iterdir()) and _active(root) == [] and _leases(root) == []


def test_second_writer_waits_for_the_first(registry: Registry, tmp_path: Path) -> None:
    """Another process holds the ingest of a layer: fetch waits for it (event
    ``blob_waiting``) and then uses the blob that process committed."""
    spec = ImageSpec([LayerSpec([File("x", size=3_000_000, seed=5)])])
    pushed = push(registry.host, spec, tmp_path / "img")
    layer = pushed.built.layer_descriptors[0]
    root = tmp_path / "store"
    with LocalStore(root) as s, s.content.writer(
            f"fetch-sha256-{layer.digest.hex}", total=layer.size, expected=layer.digest) as w:
        proc = subprocess.Popen(
            [*CLI, "--root", str(root), "--json", "fetch", "--plain-http", pushed.text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **TEST_ENV})
        assert proc.stdout is not None
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1].get("event") == "blob_waiting":
                break
        assert events[-1] == {"event": "blob_waiting", "digest": str(layer.digest),
                              "kind": "layer", "size": layer.size}, proc.stderr.read()
        w.write(pushed.built.path(layer.digest).read_bytes())
        w.commit(layer.size, layer.digest)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert last_json(subprocess.CompletedProcess([], 0, out, ""))["images"][0]["name"] \
        == pushed.text
    assert _leases(root) == []


@pytest.mark.parametrize("command", ["pull", "bake"])
def test_two_runs_of_the_same_image_at_once(big40: Pushed, tmp_path: Path,
                                            command: str) -> None:
    """Two bakes (or pulls) of one spec started together both succeed (issue 14, 15)."""
    root = tmp_path / "store"
    args = _command(command, big40.text, tmp_path)
    procs = [subprocess.Popen([*CLI, "--root", str(root), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **TEST_ENV}) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert _leases(root) == [] and _active(root) == []
    run_cli(root, "verify")


def test_out_of_space_leaves_no_ingest(registry: Registry, tmp_path: Path) -> None:
    require_root("mounting a small tmpfs")
    big = push(registry.host, ImageSpec([LayerSpec([File(f"f{i}", size=6_000_000, seed=i)],
                                                   compression="none") for i in range(4)]),
               tmp_path / "b")
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], check=True)
    try:
        p = run_cli(root, "pull", "--plain-http", big.text, check=False,
                    env={"CARGOHOLD_RESERVE": "1MiB"})
        assert p.returncode == errors.OutOfSpaceError.exit_code, p.stderr
        ingests = [d.name for d in (root / "content" / "ingest").iterdir()
                   if (d / "data").exists() and (d / "data").stat().st_size]
        assert ingests == [], p.stderr  # the partial downloads are gone
        assert _leases(root) == [] and _active(root) == []
        # What was committed stays (exit 9 keeps it), unreferenced: gc gives the disk back.
        run_cli(root, "gc")
        st = os.statvfs(root)
        assert st.f_bavail * st.f_frsize > 15_000_000
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


# --------------------------------------------------------------------------- containerd


def _ctrd_state(ctrd: Containerd, ns: str) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """(labels of every lease, keys of active snapshots, digests of blobs) in namespace ns."""
    with ContainerdStore(ctrd.address, ns) as s:
        return ([lease.labels for lease in s.leases.list()],
                [i.name for i in s.snapshots.walk() if i.kind == KIND_ACTIVE],
                [str(i.digest) for i in s.content.walk()])


def _ctrd_pull(ctrd: Containerd, ns: str, ref: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "--store", "containerd", "--address", ctrd.address, "--namespace", ns,
         "pull", "--plain-http", ref],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **TEST_ENV})


def test_containerd_rerun_after_kill_9_releases_lease_and_extracts(
        containerd: Containerd, big40: Pushed) -> None:
    ctrd = containerd
    for _ in range(5):
        ns = ctrd.unique_namespace("reap")
        proc = _ctrd_pull(ctrd, ns, big40.text)
        while proc.poll() is None and not any(
                k.startswith("extract-") for k in _ctrd_state(ctrd, ns)[1]):
            time.sleep(0.01)
        proc.kill()
        if proc.wait(timeout=60) == -signal.SIGKILL:
            break
    else:
        pytest.fail("the pull always finished before kill -9 landed")
    leases, active, _ = _ctrd_state(ctrd, ns)
    assert leases and any(k.startswith("extract-") for k in active)
    # Another client's lease in the namespace is never touched.
    with ContainerdStore(ctrd.address, ns) as s:
        foreign = s.leases.create(labels={"someone": "else"}).id

    rerun = _ctrd_pull(ctrd, ns, big40.text)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    leases, active, _ = _ctrd_state(ctrd, ns)
    assert leases == [{"someone": "else"}] and active == []
    # Nothing of the killed run survives `images rm` and containerd's gc.
    with ContainerdStore(ctrd.address, ns) as s:
        s.leases.delete(foreign)
        for img in s.images.list():
            s.images.delete(img.name)
    ctrd.gc(ns)
    with ContainerdStore(ctrd.address, ns) as s:
        assert list(s.snapshots.walk()) == []
    assert _ctrd_state(ctrd, ns) == ([], [], [])


def test_containerd_second_writer_waits_for_the_first(
        containerd: Containerd, registry: Registry, tmp_path: Path) -> None:
    spec = ImageSpec([LayerSpec([File("x", size=3_000_000, seed=6)])])
    pushed = push(registry.host, spec, tmp_path / "img")
    layer = pushed.built.layer_descriptors[0]
    ns = containerd.unique_namespace("wait")
    with ContainerdStore(containerd.address, ns) as s:
        lease = s.leases.create(labels={"test": "holder"})
        token = active_lease.set(lease.id)
        try:
            w = s.content.writer(f"fetch-sha256-{layer.digest.hex}", total=layer.size,
                                 expected=layer.digest)
        finally:
            active_lease.reset(token)
        proc = subprocess.Popen(
            [*CLI, "--store", "containerd", "--address", containerd.address, "--namespace",
             ns, "--json", "fetch", "--plain-http", pushed.text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **TEST_ENV})
        assert proc.stdout is not None
        last: dict[str, object] = {}
        for line in proc.stdout:
            last = json.loads(line)
            if last.get("event") == "blob_waiting":
                break
        assert last.get("digest") == str(layer.digest), proc.stderr.read() if proc.stderr else ""
        w.write(pushed.built.path(layer.digest).read_bytes())
        w.commit(layer.size, layer.digest)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        s.leases.delete(lease.id)
    leases, _, blobs = _ctrd_state(containerd, ns)
    assert leases == [] and str(layer.digest) in blobs
