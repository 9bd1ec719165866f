"""`cargohold bake --store containerd`: the same spec and budget as on the embedded store, into
a real containerd; critical images pulled and pinned, CRI records, a second bake a no-op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.rig.containerd import Containerd
from tests.rig.images import push
from tests.rig.services import Registry
from tests.test_bake import LAYER_OVERHEAD, spec_of, write_spec

CLI = [sys.executable, "-m", "cargohold"]


def bake(ctrd: Containerd, ns: str, root: Path, *args: str) -> dict[str, Any]:
    p = subprocess.run(
        [*CLI, "--root", str(root), "--store", "containerd", "--address", ctrd.address,
         "--namespace", ns, "--json", "bake", *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert p.returncode == 0, p.stderr
    doc: dict[str, Any] = json.loads(p.stdout.splitlines()[-1])
    return doc


def test_bake_into_containerd_within_budget(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    crit = push(registry.host, spec_of(401, 300_000), tmp_path / "c")
    autos = [push(registry.host, spec_of(402 + i, 200_000 + 50_000 * i), tmp_path / f"a{i}")
             for i in range(3)]
    budget = (crit.built.total_size() + sum(a.built.total_size() for a in autos)
              + 2 * (300_000 + LAYER_OVERHEAD) + 30_000)
    spec = write_spec(tmp_path / "cache.toml", budget, [crit], autos)
    ns = containerd.unique_namespace("bake")
    root = tmp_path / "state"

    doc = bake(containerd, ns, root, str(spec), "--plain-http")
    assert doc["store"] == "containerd" and doc["namespace"] == ns
    by_name = {i["name"]: i for i in doc["images"]}
    assert by_name[crit.text]["mode"] == "pull"
    assert [by_name[a.text]["mode"] for a in autos].count("pull") == 1
    assert all(i["status"] == "ok" for i in doc["images"])
    totals = doc["totals"]
    assert 0 < totals["total_bytes"] <= budget
    assert totals["snapshot_bytes"] > 0 and totals["over_budget_bytes"] == 0

    # CRI's three records per image; the critical one pinned; pulled images unpacked.
    names = set(containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split())
    for p in [crit, *autos]:
        assert {p.text, f"{p.ref.name}@{p.built.root.digest}",
                str(p.built.config_descriptor.digest)} <= names
    ls = containerd.ctr("images", "ls", namespace=ns).stdout
    pinned = [x.split()[0] for x in ls.splitlines() if "io.cri-containerd.pinned=pinned" in x]
    assert crit.text in pinned and not any(a.text in pinned for a in autos)
    check = containerd.ctr("images", "check", namespace=ns).stdout
    for p in [crit, *autos]:
        line = next(x for x in check.splitlines() if x.startswith(p.text + " "))
        assert "complete" in line.split(), check
        assert line.split()[-1] == ("true" if by_name[p.text]["mode"] == "pull" else "false")

    again = bake(containerd, ns, root, str(spec), "--plain-http")
    assert again["plan_reused"] is True and again["nothing_done"] is True
    assert again["totals"]["bytes_transferred"] == 0


def cli_rc(ctrd: Containerd, ns: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), "--store", "containerd", "--address", ctrd.address,
         "--namespace", ns, *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )


def test_du_and_verify_repair_on_containerd(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    pulled = push(registry.host, spec_of(411, 200_000), tmp_path / "p")
    fetched = push(registry.host, spec_of(412, 150_000), tmp_path / "f")
    spec = tmp_path / "cache.toml"
    spec.write_text(f'[[image]]\nref = "{pulled.text}"\ncritical = true\n\n'
                    f'[[image]]\nref = "{fetched.text}"\nmode = "fetch"\n')
    ns = containerd.unique_namespace("du")
    root = tmp_path / "state"
    bake(containerd, ns, root, str(spec), "--plain-http")

    du = json.loads(cli_rc(containerd, ns, root, "du", "--json", pulled.text,
                           fetched.text).stdout)
    rows = {r["name"]: r for r in du["images"]}
    assert rows[pulled.text]["content_bytes"] == pulled.built.total_size()
    assert rows[pulled.text]["snapshot_bytes"] > 0
    assert rows[fetched.text]["snapshot_bytes"] == 0
    assert cli_rc(containerd, ns, root, "verify").returncode == 0

    # Flip a byte of a layer blob in containerd's own content store.
    layer = fetched.built.layer_descriptors[0].digest
    blob = (containerd.base / "root" / "io.containerd.content.v1.content" / "blobs" /
            layer.algorithm / layer.hex)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    bad = cli_rc(containerd, ns, root, "verify")
    assert bad.returncode == 6, bad.stderr
    assert str(layer) in bad.stderr
    fixed = cli_rc(containerd, ns, root, "verify", "--repair", "--plain-http")
    assert fixed.returncode == 0, "REPAIR:" + fixed.stderr
    assert cli_rc(containerd, ns, root, "verify").returncode == 0


def test_verify_repair_of_a_pulled_config_keeps_its_snapshots_on_containerd(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    """Issue 14, defect 13 on containerd: repairing a pulled image's damaged config keeps its
    gc.ref.snapshot label (its snapshots survive the collector that runs during the repair
    and every later one), and a lost label is a problem that --repair mends."""
    pulled = push(registry.host, spec_of(413, 200_000), tmp_path / "p")
    ns = containerd.unique_namespace("repair")
    root = tmp_path / "state"
    p = cli_rc(containerd, ns, root, "pull", "--plain-http", pulled.text)
    assert p.returncode == 0, p.stderr
    config = pulled.built.config_descriptor.digest  # type: ignore[union-attr]
    key = "containerd.io/gc.ref.snapshot.overlayfs"

    def config_labels() -> dict[str, str]:
        line = next(x for x in containerd.ctr("content", "ls", namespace=ns).stdout.splitlines()
                    if x.startswith(str(config)))
        return dict(kv.split("=", 1) for kv in line.split()[-1].split(","))

    def snapshots() -> set[str]:
        out = containerd.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]
        return {x.split()[0] for x in out if x.strip()}

    labels = config_labels()
    assert key in labels and labels[key] in snapshots()
    snaps = snapshots()

    blob = (containerd.base / "root" / "io.containerd.content.v1.content" / "blobs" /
            config.algorithm / config.hex)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert cli_rc(containerd, ns, root, "verify").returncode == 6
    fixed = cli_rc(containerd, ns, root, "verify", "--repair", "--plain-http")
    assert fixed.returncode == 0, fixed.stderr
    assert config_labels()[key] == labels[key]
    containerd.gc(ns)
    assert snapshots() == snaps
    assert cli_rc(containerd, ns, root, "verify").returncode == 0
    assert not containerd.ctr("leases", "ls", "-q", namespace=ns).stdout.split()

    containerd.ctr("content", "label", str(config), key, namespace=ns)  # drop the label
    lost = cli_rc(containerd, ns, root, "--json", "verify")
    assert lost.returncode == 6, lost.stderr
    assert '"snapshot_unreferenced"' in lost.stdout
    assert cli_rc(containerd, ns, root, "verify", "--repair").returncode == 0
    assert config_labels()[key] == labels[key]
    containerd.gc(ns)
    assert snapshots() == snaps
