"""`cargohold fetch --store containerd`: what it writes is first-class for ctr and CRI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cargohold.imagebuild import samples
from tests.rig.containerd import Containerd
from tests.rig.images import push
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]


def cargohold(ctrd: Containerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--store", "containerd", "--address", ctrd.address, "--namespace", ns, *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert p.returncode == 0, p.stderr
    return p


def test_fetch_into_containerd_cri_records_and_lazy_unpack(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    pushed = push(registry.host, samples.busybox(), tmp_path / "img")
    ns = containerd.unique_namespace("fetch")
    out = cargohold(containerd, ns, "--json", "fetch", "--plain-http", "--pin", pushed.text)
    summary = json.loads(out.stdout.splitlines()[-1])
    assert not summary["failed"]

    config = pushed.built.config_descriptor
    root = pushed.built.root
    names = set(containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split())
    assert names == {pushed.text, f"{pushed.ref.name}@{root.digest}", str(config.digest)}
    ls = containerd.ctr("images", "ls", namespace=ns).stdout
    assert "io.cri-containerd.image=managed" in ls and "io.cri-containerd.pinned=pinned" in ls

    # The manifest's gc labels are containerd's own.
    info = containerd.ctr("content", "ls", namespace=ns).stdout
    assert f"containerd.io/gc.ref.content.config={config.digest}" in info
    assert f"containerd.io/distribution.source.{pushed.ref.domain}={pushed.ref.path}" in info

    # containerd unpacks on demand when the first container is created, and it runs.
    containerd.ctr("containers", "create", pushed.text, "c1", namespace=ns)
    run = containerd.run(pushed.text, "r1", "/bin/echo", "hello from cargohold", namespace=ns)
    assert run.stdout.strip() == "hello from cargohold"
    containerd.ctr("containers", "rm", "c1", namespace=ns)


def test_no_cri_records_for_plain_ctr_users(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    pushed = push(registry.host, samples.tiny(), tmp_path / "img")
    ns = containerd.unique_namespace("plain")
    cargohold(containerd, ns, "fetch", "--plain-http", "--no-cri-records", pushed.text)
    names = containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split()
    assert names == [pushed.text]
    assert "io.cri-containerd.image" not in containerd.ctr("images", "ls", namespace=ns).stdout


def test_pull_into_containerd_is_unpacked_for_ctr(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    pushed = push(registry.host, samples.busybox(), tmp_path / "img")
    ns = containerd.unique_namespace("pull")
    cargohold(containerd, ns, "pull", "--plain-http", pushed.text)
    check = containerd.ctr("images", "check", namespace=ns).stdout
    line = next(x for x in check.splitlines() if x.startswith(pushed.text))
    # ctr images check: REF TYPE DIGEST STATUS SIZE UNPACKED
    assert "complete" in line.split() and line.split()[-1] == "true", check
    config = pushed.built.config_descriptor
    info = containerd.ctr("content", "ls", namespace=ns).stdout
    assert "containerd.io/gc.ref.snapshot.overlayfs=sha256:" in info
    assert f"containerd.io/uncompressed={pushed.built.diff_ids[0]}" in info
    assert str(config.digest) in info
    # The snapshot exists: creating a container needs no unpack, and the image runs.
    containerd.ctr("containers", "create", pushed.text, "p1", namespace=ns)
    run = containerd.run(pushed.text, "p2", "/bin/echo", "pulled", namespace=ns)
    assert run.stdout.strip() == "pulled"
    containerd.ctr("containers", "rm", "p1", namespace=ns)
