"""`pull` unpacks while it fetches: a layer is applied while a later one still downloads."""

from __future__ import annotations

import _thread
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold import interrupts
from cargohold.errors import Interrupted, NotFoundError
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.platform import host_platform
from cargohold.oci.reference import parse_reference
from cargohold.pull.pipeline import PullPipeline
from cargohold.registry.client import RegistryClient
from cargohold.store.open import LocalStore
from cargohold.unpack.image import UnpackEvents
from tests.rig.cli import CLI, TEST_ENV, last_json, run_cli
from tests.rig.faultproxy import FaultProxy, Rule, running_proxy
from tests.rig.images import Pushed, push
from tests.rig.needs import needs_root
from tests.rig.services import Registry
from tests.test_fetch import records

WAIT = 120.0


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with running_proxy(registry.host) as p:
        yield p


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any] | None]:
    q: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                q.put(json.loads(line))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _held_two_layer_image(registry: Registry, proxy: FaultProxy, tmp_path: Path,
                          seed: int) -> tuple[Pushed, Rule, str]:
    """A small base layer and a 4 MB last layer whose first download the proxy holds after
    1 MiB (until the rule is released). Returns the image, the rule and the ref through the
    proxy."""
    spec = ImageSpec([
        LayerSpec([Dir("base"), File("base/f", size=200_000, seed=seed)]),
        LayerSpec([Dir("big"), File("big/f", size=4_000_000, seed=seed + 1)],
                  compression="none"),
    ], cmd=["/bin/true"])
    pushed = push(registry.host, spec, tmp_path / "img")
    last = pushed.built.layer_descriptors[-1]
    rule = proxy.add(Rule("pause", method="GET", path=f"/blobs/{re.escape(str(last.digest))}$",
                          cut_after=1 << 20, times=1))
    return pushed, rule, f"{proxy.host}/{pushed.ref.path}:v1"


@needs_root("overlay snapshots")
def test_first_layer_unpacked_while_the_last_downloads(registry: Registry, proxy: FaultProxy,
                                                        tmp_path: Path) -> None:
    pushed, rule, ref = _held_two_layer_image(registry, proxy, tmp_path, seed=901)
    first, last = pushed.built.layer_descriptors
    root = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "--root", str(root), "--json", "pull", "--plain-http", ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    events = _lines(proc)
    try:
        seen: list[dict[str, Any]] = []
        while True:
            ev = events.get(timeout=WAIT)
            assert ev is not None, f"pull ended early: {proc.wait()} {proc.stderr.read()}"  # type: ignore[union-attr]
            seen.append(ev)
            if ev.get("event") == "layer_done" and ev.get("index") == 0:
                break
        # The first layer is applied and committed while the last one is held mid-body.
        assert ev["state"] == "unpacked" and ev["digest"] == str(first.digest)
        assert rule.reached.wait(WAIT)
        assert not any(e.get("event") == "blob_done" and e.get("digest") == str(last.digest)
                       for e in seen)
        assert records(root) == {}  # no record before every blob is in
    finally:
        rule.release.set()
    assert proc.wait(timeout=WAIT) == 0, proc.stderr.read()  # type: ignore[union-attr]
    summary = [e for e in iter(lambda: events.get(timeout=WAIT), None)][-1]
    assert summary["event"] == "summary" and not summary["failed"]
    (img,) = summary["images"]
    assert img["unpack"][0]["chains_unpacked"] == 2
    assert records(root) == {ref: str(pushed.built.root.digest)}


@needs_root("overlay snapshots")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_fetch_and_unpack(registry: Registry, proxy: FaultProxy,
                                          tmp_path: Path, sig: int) -> None:
    """Stopped while a layer download is held: exit 130 without waiting for the download,
    no record, no half-applied snapshot; the rerun completes."""
    pushed, rule, ref = _held_two_layer_image(registry, proxy, tmp_path, seed=911)
    root = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "--root", str(root), "--json", "pull", "--plain-http", ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    events = _lines(proc)
    try:
        assert rule.reached.wait(WAIT)
        while (ev := events.get(timeout=WAIT)) is not None:
            if ev.get("event") == "layer_done" and ev.get("index") == 0:
                break
        proc.send_signal(sig)
        # Exits while the proxy still holds the body: the download was abandoned.
        assert proc.wait(timeout=WAIT) == 130, proc.stderr.read()  # type: ignore[union-attr]
        assert not rule.release.is_set()
    finally:
        rule.release.set()
    assert records(root) == {}
    assert not [k for k in snapshot_keys(root) if k.startswith("extract-")]
    done = last_json(run_cli(root, "--json", "pull", "--plain-http", ref))
    assert not done["failed"] and records(root) == {ref: str(pushed.built.root.digest)}


def snapshot_keys(root: Path) -> list[str]:
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in c.execute("SELECT key FROM snapshots")]
    finally:
        c.close()


# ---------------------------------------------------------------- in process (the library)


class _Events(UnpackEvents):
    """Counts the layers started; ``on_layer`` runs (in an unpack worker) at the first."""

    def __init__(self, on_layer: Callable[[], None] | None = None) -> None:
        self.on_layer = on_layer
        self.started: list[str] = []
        self._lock = threading.Lock()

    def layer_started(self, chain_id: str, layer: Descriptor) -> None:
        with self._lock:
            self.started.append(chain_id)
            first = len(self.started) == 1
        if first and self.on_layer is not None:
            self.on_layer()


def _two_layers(seed: int) -> ImageSpec:
    return ImageSpec([
        LayerSpec([Dir("base"), File("base/f", size=100_000, seed=seed)]),
        LayerSpec([Dir("top"), File("top/f", size=300_000, seed=seed + 1)]),
    ], cmd=["/bin/true"])


def _pipeline(store: LocalStore, events: UnpackEvents | None = None) -> PullPipeline:
    return PullPipeline(store, RegistryClient(plain_http=True), jobs=2, unpack_events=events)


def _leftovers(root: Path) -> tuple[list[str], list[str]]:
    """The ``extract-*`` snapshots and the leases left in the store at ``root``."""
    with LocalStore(root) as store:
        extract = [i.name for i in store.snapshots.walk() if i.name.startswith("extract-")]
        return extract, [lease.id for lease in store.leases.list()]


def test_library_pull_fetches_and_unpacks_two_images(registry: Registry, tmp_path: Path) -> None:
    a = push(registry.host, _two_layers(931), tmp_path / "a")
    b = push(registry.host, _two_layers(941), tmp_path / "b")
    root = tmp_path / "store"
    with LocalStore(root) as store:
        result = _pipeline(store).run([a.ref, b.ref], platforms=[host_platform()])
        assert [i.name for i in result.images] == [str(a.ref), str(b.ref)]
        assert not result.failures and result.total == 2
        assert [r.name for r in result.fetched] == [str(a.ref), str(b.ref)]
        assert result.bytes_transferred == sum(r.bytes_total for r in result.fetched) > 0
        for pulled, pushed in zip(result.images, (a, b), strict=True):
            assert pulled.fetch.target.digest == pushed.built.root.digest
            (unpack,) = pulled.unpacks
            assert unpack.chains_unpacked == 2 and not unpack.already_unpacked
            assert store.snapshots.stat(unpack.chain_id).kind.lower() == "committed"
            assert pulled.to_json()["unpack"][0]["chain_id"] == unpack.chain_id
    assert records(root) == {str(a.ref): str(a.built.root.digest),
                             str(b.ref): str(b.built.root.digest)}
    assert _leftovers(root) == ([], [])


def test_library_pull_reports_a_failed_image_among_good_ones(registry: Registry,
                                                            tmp_path: Path) -> None:
    a = push(registry.host, _two_layers(951), tmp_path / "a")
    b = push(registry.host, _two_layers(961), tmp_path / "b")
    missing = parse_reference(f"{registry.host}/{a.ref.path}:no-such-tag")
    root = tmp_path / "store"
    with LocalStore(root) as store:
        result = _pipeline(store).run([a.ref, missing, b.ref], platforms=[host_platform()])
    assert [i.name for i in result.images] == [str(a.ref), str(b.ref)]
    (failure,) = result.failures
    assert str(failure.ref) == str(missing) and isinstance(failure.error, NotFoundError)
    assert result.total == 3
    assert set(records(root)) == {str(a.ref), str(b.ref)}
    assert _leftovers(root) == ([], [])


@pytest.mark.parametrize("how", ["abort", "interrupt"])
def test_library_pull_stopped_leaves_no_extract_snapshot_or_lease(
        registry: Registry, tmp_path: Path, how: str) -> None:
    """Stopped while the first layer is being applied: by :meth:`PullPipeline.abort` from an
    unpack worker (Interrupted), or by Ctrl-C in the calling thread (KeyboardInterrupt, as
    the CLI's signal handler raises it). Either way every thread has ended when the call
    returns, and the half-applied snapshot and the leases are gone; a second pull completes."""
    pushed = push(registry.host, _two_layers(971), tmp_path / "img")
    root = tmp_path / "store"
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    try:
        with LocalStore(root) as store:
            pipeline: PullPipeline | None = None

            def stop() -> None:
                assert pipeline is not None
                if how == "abort":
                    pipeline.abort()
                else:
                    _thread.interrupt_main(signal.SIGINT)

            pipeline = _pipeline(store, _Events(stop))
            expected = Interrupted if how == "abort" else KeyboardInterrupt
            before = set(threading.enumerate())
            with pytest.raises(expected):
                pipeline.run([pushed.ref], platforms=[host_platform()])
            assert pipeline.aborted == (how == "abort")
            assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _leftovers(root) == ([], [])
    with LocalStore(root) as store:
        result = _pipeline(store).run([pushed.ref], platforms=[host_platform()])
    assert not result.failures and result.images[0].unpacks[0].chains_total == 2
    assert records(root) == {str(pushed.ref): str(pushed.built.root.digest)}
    assert _leftovers(root) == ([], [])
