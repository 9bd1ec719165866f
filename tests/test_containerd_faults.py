"""`cargohold --store containerd` under faults, checked against containerd's own view.

A real containerd of the test's own (tests/rig/containerd.py: own root, state and socket;
garbage collection only when a test asks for it) and the real docker-registry, reached
through the fault proxy (tests/rig/faultproxy.py) whose ``pause`` rule holds the big layer's
body half-way, so the fetch is deterministically in flight while the test restarts
containerd or runs its garbage collector:

* a containerd restart mid-fetch fails the fetch with a clear error and no image record;
  the rerun resumes and completes, and ``ctr images check`` calls the image complete;
* containerd's GC during a fetch keeps what the fetch lease protects (committed blobs and
  the open ingest) while it collects unrelated unreferenced content;
* containerd's GC keeps every blob and snapshot of an image while any of its records
  exists, and removes all of them once ``cargohold images rm`` removed the last record:
  the ``containerd.io/gc.ref.*`` labels cargohold writes are right and complete.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.errors import NotFoundError
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import BuiltImage, ImageSpec, LayerSpec
from cargohold.oci.descriptor import Platform
from cargohold.oci.digest import Digest
from cargohold.store.containerd import ContainerdStore
from tests.rig.containerd import Containerd
from tests.rig.faultproxy import FaultProxy, Rule, running_proxy
from tests.rig.images import push, push_index, unique_repo
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]
#: Where the fault proxy holds the big layer's body (the layer is ~6 MB compressed).
PAUSE_AT = 2 << 20
#: Bounded waits for a subprocess or a proxy event (never reached when things work).
WAIT = 120.0
#: cargohold's exit code for UnavailableError (cargohold.errors).
EXIT_UNAVAILABLE = 7


def cargohold_argv(ctrd: Containerd, ns: str, *args: str) -> list[str]:
    return [*CLI, "--store", "containerd", "--address", ctrd.address, "--namespace", ns,
            "--no-progress", *args]


def cargohold(ctrd: Containerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cargohold_argv(ctrd, ns, *args), capture_output=True, text=True,
                       timeout=WAIT, env=dict(os.environ), check=False)
    assert p.returncode == 0, f"cargohold {' '.join(args)} exited {p.returncode}:\n{p.stderr}"
    return p


def image_names(ctrd: Containerd, ns: str) -> set[str]:
    return set(ctrd.ctr("images", "ls", "-q", namespace=ns).stdout.split())


def content_digests(ctrd: Containerd, ns: str) -> set[str]:
    return set(ctrd.ctr("content", "ls", "-q", namespace=ns).stdout.split())


def snapshot_keys(ctrd: Containerd, ns: str) -> set[str]:
    lines = ctrd.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


def lease_ids(ctrd: Containerd, ns: str) -> set[str]:
    lines = ctrd.ctr("leases", "ls", namespace=ns).stdout.splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


def active_ingests(ctrd: Containerd, ns: str) -> set[str]:
    lines = ctrd.ctr("content", "active", namespace=ns).stdout.splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


def ingest_offset(ctrd: Containerd, ns: str, ref: str) -> int:
    """How many bytes of ingest ``ref`` containerd has written (0 if there is none)."""
    with ContainerdStore(ctrd.address, ns) as store:
        try:
            return store.content.status(ref).offset
        except NotFoundError:
            return 0


def wait_ingest(ctrd: Containerd, ns: str, ref: str, fetch: Fetch) -> int:
    """Until containerd holds some bytes of the paused blob (they pass cargohold first)."""
    deadline = time.monotonic() + WAIT
    while (offset := ingest_offset(ctrd, ns, ref)) == 0:
        if fetch.proc.poll() is not None or time.monotonic() > deadline:
            fetch.kill()
            pytest.fail(f"no bytes of {ref} reached containerd:\n{fetch.proc.stderr}")
        time.sleep(0.05)
    return offset


def check_complete(ctrd: Containerd, ns: str, names: set[str]) -> None:
    """``ctr images check``: every record's image is complete (all blobs present)."""
    out = ctrd.ctr("images", "check", namespace=ns).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) == names, out
    for name, cols in rows.items():
        # REF TYPE DIGEST STATUS SIZE UNPACKED; STATUS is "complete (n/n)" or "incomplete (..)"
        assert "complete" in cols and "incomplete" not in cols, f"{name}: {out}"


def cri_names(ref_text: str, name: str, built: BuiltImage) -> set[str]:
    """The three records a CRI-style fetch writes (repo:tag, repo@digest, sha256:<config>)."""
    config = built.config_descriptor
    assert config is not None
    return {ref_text, f"{name}@{built.root.digest}", str(config.digest)}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bigish(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """A config, a tiny layer and a ~6 MB layer of generated bytes (built once)."""
    spec = ImageSpec(
        [
            LayerSpec([Dir("etc"), File("etc/motd", b"small layer\n")]),
            LayerSpec([Dir("big"), File("big/blob.bin", size=12 << 20, seed=7)]),
        ],
        name="faults/bigish",
        cmd=["/bin/sh"],
    )
    return spec.build(tmp_path_factory.mktemp("bigish"))


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with running_proxy(registry.host) as p:
        yield p


def pause_big_layer(proxy: FaultProxy, built: BuiltImage) -> Rule:
    big = max(built.layer_descriptors, key=lambda d: d.size)
    assert big.size > 2 * PAUSE_AT
    return proxy.add(Rule("pause", method="GET", path=f"/blobs/{re.escape(str(big.digest))}$",
                          cut_after=PAUSE_AT))


class Fetch:
    """A ``cargohold fetch`` running in the background."""

    def __init__(self, ctrd: Containerd, ns: str, ref: str) -> None:
        self.proc = subprocess.Popen(
            cargohold_argv(ctrd, ns, "fetch", "--plain-http", ref),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )
        self.stdout = ""
        self.stderr = ""

    def wait_paused(self, rule: Rule) -> None:
        """Until the proxy holds the big layer (fails with the fetch's output if it ended)."""
        while not rule.reached.wait(0.1):
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(f"fetch ended ({self.proc.returncode}) before the pause:\n"
                            f"{self.stderr}")

    def finish(self) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def fetches() -> Iterator[list[Fetch]]:
    started: list[Fetch] = []
    yield started
    for f in started:
        f.kill()


# ---------------------------------------------------------------- restart mid-fetch


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct-ingest", "write-stream"])
def test_containerd_restart_mid_fetch_fails_cleanly_and_rerun_completes(
    fresh_containerd: Containerd, registry: Registry, proxy: FaultProxy, bigish: BuiltImage,
    tmp_path: Path, fetches: list[Fetch], direct: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CARGOHOLD_CONTAINERD_DIRECT: the big layer written into containerd's ingest file, or
    # through the Write stream (the fetches below inherit the environment).
    monkeypatch.setenv("CARGOHOLD_CONTAINERD_DIRECT", direct)
    ctrd = fresh_containerd
    pushed = push(registry.host, bigish, tmp_path)
    ref = f"{proxy.host}/{pushed.ref.path}:v1"
    names = cri_names(ref, f"{proxy.host}/{pushed.ref.path}", bigish)
    big = max(bigish.layer_descriptors, key=lambda d: d.size)
    ingest = f"fetch-sha256-{big.digest.hex}"
    ns = ctrd.unique_namespace("restart")
    rule = pause_big_layer(proxy, bigish)

    fetch = Fetch(ctrd, ns, ref)
    fetches.append(fetch)
    fetch.wait_paused(rule)
    # In flight: the manifest and config are committed, the big layer is an open ingest
    # under the fetch's lease, and there is no image record yet.
    assert str(bigish.root.digest) in content_digests(ctrd, ns)
    assert image_names(ctrd, ns) == set()
    assert len(lease_ids(ctrd, ns)) == 1
    wait_ingest(ctrd, ns, ingest, fetch)

    ctrd.restart()
    rule.release.set()
    code = fetch.finish()

    # The broken content stream fails the fetch with containerd named, and no record.
    assert code == EXIT_UNAVAILABLE, fetch.stderr
    assert "containerd" in fetch.stderr and "unavailable" in fetch.stderr, fetch.stderr
    assert image_names(ctrd, ns) == set()
    assert str(big.digest) not in content_digests(ctrd, ns)
    # The partial download survives the restart; the failed fetch released its lease on the
    # way out (as ctr does: until a rerun, containerd's gc may reclaim what it held).
    held = ingest_offset(ctrd, ns, ingest)
    # Over the stream the download stops with it; written directly into the ingest file it
    # may run to the end (the commit then fails on the lost stream).
    assert 0 < held <= big.size if direct == "1" else 0 < held < big.size
    assert len(lease_ids(ctrd, ns)) == 0
    assert str(bigish.root.digest) in content_digests(ctrd, ns)

    proxy.clear()
    cargohold(ctrd, ns, "fetch", "--plain-http", ref)
    # The rerun resumed the big layer where containerd's ingest stood.
    gets = proxy.seen("GET", re.escape(str(big.digest)))
    assert [r.headers.get("Range") for r in gets] == (
        [f"bytes={held}-"] if held < big.size else [])

    assert image_names(ctrd, ns) == names
    check_complete(ctrd, ns, names)
    assert ingest not in active_ingests(ctrd, ns)
    expected = {str(d.digest) for d in (bigish.root, bigish.config_descriptor,
                                        *bigish.layer_descriptors) if d is not None}
    assert content_digests(ctrd, ns) == expected


# ---------------------------------------------------------------- gc during a fetch


def test_gc_during_fetch_keeps_leased_content(
    fresh_containerd: Containerd, registry: Registry, proxy: FaultProxy, bigish: BuiltImage,
    tmp_path: Path, fetches: list[Fetch],
) -> None:
    ctrd = fresh_containerd
    pushed = push(registry.host, bigish, tmp_path)
    ref = f"{proxy.host}/{pushed.ref.path}:v1"
    names = cri_names(ref, f"{proxy.host}/{pushed.ref.path}", bigish)
    big = max(bigish.layer_descriptors, key=lambda d: d.size)
    small = min(bigish.layer_descriptors, key=lambda d: d.size)
    config = bigish.config_descriptor
    assert config is not None
    ns = ctrd.unique_namespace("gc")

    # Unreferenced content of the same namespace, written without a lease: the control
    # that shows the collection below really runs.
    junk = b"nothing references this blob\n"
    ctrd.ctr("content", "ingest", "junk", namespace=ns, input=junk.decode())
    junk_digest = str(Digest.from_bytes(junk))
    assert junk_digest in content_digests(ctrd, ns)

    rule = pause_big_layer(proxy, bigish)
    fetch = Fetch(ctrd, ns, ref)
    fetches.append(fetch)
    fetch.wait_paused(rule)
    # The small layer downloads beside the big one; wait for it to be committed.
    committed = {str(bigish.root.digest), str(config.digest), str(small.digest)}
    deadline = time.monotonic() + WAIT
    while not committed <= content_digests(ctrd, ns):
        if fetch.proc.poll() is not None or time.monotonic() > deadline:
            fetch.kill()
            pytest.fail(f"the small layer was never committed:\n{fetch.proc.stderr}")
        time.sleep(0.05)
    ingest = f"fetch-sha256-{big.digest.hex}"
    assert ingest in active_ingests(ctrd, ns)
    (lease,) = lease_ids(ctrd, ns)

    ctrd.gc(ns)

    have = content_digests(ctrd, ns)
    assert junk_digest not in have, "gc did not run"
    assert committed <= have
    assert ingest in active_ingests(ctrd, ns)
    assert image_names(ctrd, ns) == set()

    rule.release.set()
    assert fetch.finish() == 0, fetch.stderr
    assert image_names(ctrd, ns) == names
    check_complete(ctrd, ns, names)
    assert lease not in lease_ids(ctrd, ns)  # a successful fetch drops its lease
    ctrd.gc(ns)
    check_complete(ctrd, ns, names)  # and the records alone keep everything


# ---------------------------------------------------------------- gc after images rm


def test_records_keep_every_blob_and_snapshot_until_the_last_is_removed(
    fresh_containerd: Containerd, registry: Registry, tmp_path: Path
) -> None:
    ctrd = fresh_containerd
    pushed = push_index(registry.host, samples.multiarch_images(), tmp_path / "img",
                        repo=unique_repo("gcrefs"))
    child = pushed.built.image_for(Platform("linux", "amd64"))
    assert child.config_descriptor is not None
    ns = ctrd.unique_namespace("gcrefs")
    cargohold(ctrd, ns, "pull", "--plain-http", "--platform", "linux/amd64", pushed.text)

    # index -> amd64 manifest -> config + layers; the other platforms were not fetched.
    blobs = {str(d.digest) for d in (pushed.built.root, child.root, child.config_descriptor,
                                     *child.layer_descriptors)}
    names = [pushed.text, f"{pushed.ref.name}@{pushed.built.root.digest}",
             str(child.config_descriptor.digest)]
    assert image_names(ctrd, ns) == set(names)
    assert lease_ids(ctrd, ns) == set()  # nothing but the records holds the content now
    assert content_digests(ctrd, ns) == blobs
    snapshots = snapshot_keys(ctrd, ns)
    assert len(snapshots) == len(child.layer_descriptors)  # one committed chain per layer

    # Any one record keeps the whole image: its blobs through gc.ref.content.* labels on
    # the index and manifest, its snapshots through the config's gc.ref.snapshot label.
    for i, name in enumerate(names):
        ctrd.gc(ns)
        assert content_digests(ctrd, ns) == blobs, f"with {names[i:]} left"
        assert snapshot_keys(ctrd, ns) == snapshots, f"with {names[i:]} left"
        assert cargohold(ctrd, ns, "images", "rm", name).stdout.split() == [name]

    assert image_names(ctrd, ns) == set()
    ctrd.gc(ns)
    assert content_digests(ctrd, ns) == set()
    assert snapshot_keys(ctrd, ns) == set()
