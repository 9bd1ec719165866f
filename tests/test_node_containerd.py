"""`cargohold status` and `evict` against a real containerd: CRI's three records are one
image, demotion removes only the chains no kept image or container needs, a demoted image
still runs (`ctr run` unpacks it again), pinned / critical / in-use images stay, a demotion
cut short shows as `partial` and the next run finishes it, --allow-delete lets containerd's
GC take the content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_CRITICAL
from tests.rig.containerd import Containerd
from tests.rig.images import Pushed, push
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]


def ch(ctrd: Containerd, ns: str, root: Path, *args: str,
       code: int = 0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--root", str(root), "--store", "containerd", "--address", ctrd.address,
         "--namespace", ns, *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    return p


def status(ctrd: Containerd, ns: str, root: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(ch(ctrd, ns, root, "--json", "status").stdout)
    return {i["name"]: i for i in doc["images"]}


def on_busybox(top: str, size: int, seed: int) -> ImageSpec:
    return ImageSpec([samples.busybox_layer(),
                      LayerSpec([Dir(top), File(f"{top}/data", size=size, seed=seed)])],
                     cmd=["/bin/sh"])


def committed(ctrd: Containerd, ns: str) -> set[str]:
    out = ctrd.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]
    return {line.split()[0] for line in out if line.split()[-1] == "Committed"}


def unpacked(ctrd: Containerd, ns: str, p: Pushed) -> bool:
    for line in ctrd.ctr("images", "check", namespace=ns).stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == p.text:
            return cols[-1] == "true"
    raise AssertionError(f"{p.text} not listed by ctr images check")


def _top_chain(p: Pushed) -> str:
    from cargohold.oci.chainid import chain_id

    return str(chain_id(list(p.built.diff_ids)))


def test_status_and_evict_on_containerd(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    ns = containerd.unique_namespace("evict")
    root = tmp_path / "state"
    big = push(registry.host, on_busybox("big", 2_000_000, 8001), tmp_path / "b")
    small = push(registry.host, on_busybox("small", 300_000, 8002), tmp_path / "s")
    pinned = push(registry.host, on_busybox("pinned", 2_500_000, 8003), tmp_path / "p")
    crit = push(registry.host, on_busybox("crit", 2_600_000, 8004), tmp_path / "c")
    used = push(registry.host, on_busybox("used", 2_700_000, 8005), tmp_path / "u")
    deep = push(registry.host, ImageSpec([LayerSpec([Dir(f"d{i}"), File(f"d{i}/f", size=50_000,
                                                                         seed=8010 + i)])
                                          for i in range(3)]), tmp_path / "d")
    ch(containerd, ns, root, "pull", "--plain-http", big.text, small.text, crit.text, used.text,
       pinned.text, deep.text)
    containerd.ctr("images", "label", pinned.text, "io.cri-containerd.pinned=pinned",
                   namespace=ns)
    containerd.ctr("images", "label", crit.text, f"{LABEL_CRITICAL}=true", namespace=ns)
    containerd.ctr("containers", "create", used.text, "busy1", namespace=ns)

    st = status(containerd, ns, root)
    assert set(st) == {p.text for p in (big, small, pinned, crit, used, deep)}  # 3 records: 1
    assert all(len(i["names"]) == 3 and i["tier"] == "unpacked" for i in st.values())
    assert st[pinned.text]["pinned"] and st[crit.text]["critical"]
    assert st[used.text]["containers"] == ["busy1"]
    base_shared = st[big.text]["snapshot_bytes"] - st[big.text]["snapshot_exclusive_bytes"]
    assert base_shared > 0  # the busybox layer is shared by all five

    # Demote the lowest value (big): its own layer goes, the shared busybox layer stays.
    chains_before = committed(containerd, ns)
    ev = json.loads(ch(containerd, ns, root, "--json", "evict", "--free", "1")
                    .stdout.splitlines()[-1])
    assert [a["image"] for a in ev["actions"]] == [big.text]
    assert len(chains_before - committed(containerd, ns)) == 1
    assert not unpacked(containerd, ns, big) and unpacked(containerd, ns, small)
    # CRI still lists it (the records stay) and it still runs: ctr unpacks it again.
    assert big.text in containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split()
    run = containerd.run(big.text, "r-big", "/bin/sh", "-c", "echo ran", namespace=ns)
    assert run.stdout.strip() == "ran"
    assert unpacked(containerd, ns, big)

    assert committed(containerd, ns) == chains_before  # ctr unpacked the same chains again

    # A demotion cut short (the top chain gone, the two below kept): partial, and the next
    # evict finishes it.
    containerd.ctr("snapshots", "rm", _top_chain(deep), namespace=ns)
    assert status(containerd, ns, root)[deep.text]["tier"] == "partial"
    p = ch(containerd, ns, root, "--json", "evict", "--free", "1TB", code=13)
    assert "could not reach the target" in p.stderr
    st = status(containerd, ns, root)
    assert st[deep.text]["tier"] == "fetched" and st[deep.text]["chains"] == 0
    assert st[big.text]["tier"] == st[small.text]["tier"] == "fetched"
    for keep in (pinned, crit, used):
        assert st[keep.text]["tier"] == "unpacked" and unpacked(containerd, ns, keep)
    assert containerd.ctr("images", "check", namespace=ns).returncode == 0

    # --allow-delete: the records go and containerd's GC takes the content.
    containerd.ctr("containers", "rm", "busy1", namespace=ns)
    ch(containerd, ns, root, "--json", "evict", "--free", "1TB", "--allow-delete", code=13)
    names = set(containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split())
    assert {pinned.text, crit.text} <= names
    assert not {big.text, small.text, used.text} & names
    blobs = containerd.ctr("content", "ls", "-q", namespace=ns).stdout.split()
    assert str(big.built.layer_descriptors[1].digest) not in blobs
    assert str(pinned.built.layer_descriptors[1].digest) in blobs
