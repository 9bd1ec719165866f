"""`cargohold --store containerd unpack` of images containerd fetched by itself.

``ctr content fetch`` (containerd 1.6) downloads the blobs *and* registers the image record,
but makes no snapshot: ``ctr images check`` says UNPACKED false. This is the fetch-only state
cargohold's own ``fetch`` produces; here containerd made it, and cargohold's ``unpack`` must
finish the job so that containerd sees a normally unpacked image: ``images check`` true,
the chain's snapshots committed under their chain IDs, the unpacker's labels on the content,
and ``ctr run`` starting the container with no unpack of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cargohold.imagebuild import samples
from cargohold.oci.chainid import chain_ids
from tests.rig.containerd import Containerd
from tests.rig.images import Pushed, push
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]


def cargohold(ctrd: Containerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--store", "containerd", "--address", ctrd.address, "--namespace", ns, *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert p.returncode == 0, f"cargohold {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def check_line(ctrd: Containerd, ns: str, ref: str) -> list[str]:
    """``ctr images check`` of ``ref``: REF TYPE DIGEST STATUS SIZE UNPACKED (split)."""
    out = ctrd.ctr("images", "check", namespace=ns).stdout
    lines = [x.split() for x in out.splitlines()[1:] if x.split()[:1] == [ref]]
    assert len(lines) == 1, out
    return lines[0]


def snapshots(ctrd: Containerd, ns: str) -> dict[str, tuple[str, str]]:
    """key -> (parent, kind) from ``ctr snapshots ls``."""
    rows = [x.split() for x in ctrd.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]]
    return {r[0]: (r[1] if len(r) == 3 else "", r[-1]) for r in rows if r}


def content_labels(ctrd: Containerd, ns: str) -> dict[str, str]:
    """digest -> labels column of ``ctr content ls``."""
    rows = ctrd.ctr("content", "ls", namespace=ns).stdout.splitlines()[1:]
    return {r.split("\t")[0]: r.split("\t")[-1] for r in rows if r.strip()}


def ctr_fetch(ctrd: Containerd, ns: str, pushed: Pushed) -> None:
    """``ctr content fetch``: content and the image record, no snapshots."""
    ctrd.ctr("content", "fetch", "--plain-http", pushed.text, namespace=ns, timeout=120)
    assert ctrd.ctr("images", "ls", "-q", namespace=ns).stdout.split() == [pushed.text]
    line = check_line(ctrd, ns, pushed.text)
    assert "complete" in line and line[-1] == "false", line
    assert snapshots(ctrd, ns) == {}


def assert_unpacked_as_containerd_does(ctrd: Containerd, ns: str, pushed: Pushed) -> list[str]:
    """Unpacked for containerd: returns the chain IDs (bottom first)."""
    line = check_line(ctrd, ns, pushed.text)
    assert "complete" in line and line[-1] == "true", line
    chains = [str(c) for c in chain_ids(list(pushed.built.diff_ids))]
    snaps = snapshots(ctrd, ns)
    assert snaps == {c: (p, "Committed") for c, p in zip(chains, ["", *chains[:-1]], strict=True)}
    labels = content_labels(ctrd, ns)
    config = pushed.built.config_descriptor
    assert config is not None
    assert f"containerd.io/gc.ref.snapshot.overlayfs={chains[-1]}" in labels[str(config.digest)]
    for layer, diff_id in zip(pushed.built.layer_descriptors, pushed.built.diff_ids, strict=True):
        assert f"containerd.io/uncompressed={diff_id}" in labels[str(layer.digest)]
    return chains


def test_ctr_fetched_busybox_unpacked_by_cargohold_runs(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    pushed = push(registry.host, samples.busybox(), tmp_path / "img")
    ns = containerd.unique_namespace("ctrfetch")
    ctr_fetch(containerd, ns, pushed)

    out = cargohold(containerd, ns, "--json", "unpack", pushed.text)
    summary = json.loads(out.stdout.splitlines()[-1])
    assert (summary["chains_total"], summary["chains_unpacked"]) == (1, 1), summary
    # cargohold's own applier wrote into containerd's snapshot (containerd's diff service
    # reports no phases).
    assert summary["phases"]["seconds_write"] > 0, summary
    chains = assert_unpacked_as_containerd_does(containerd, ns, pushed)
    assert summary["chain_id"] == chains[-1]

    # Again: nothing to do, and containerd's state is unchanged.
    again = cargohold(containerd, ns, "unpack", pushed.text)
    assert "already unpacked (1 layers)" in again.stdout, again.stdout
    assert_unpacked_as_containerd_does(containerd, ns, pushed)

    run = containerd.run(
        pushed.text, "ctrfetch-run", "/bin/sh", "-c",
        "echo unpacked by cargohold; ls /bin/busybox; cat /etc/passwd | head -1",
        namespace=ns,
    )
    assert run.stdout.splitlines() == [
        "unpacked by cargohold", "/bin/busybox", "root:x:0:0:root:/root:/bin/sh"
    ], run.stdout + run.stderr
    # The container used cargohold's snapshots: nothing was unpacked again, and --rm left
    # no snapshot behind.
    assert set(snapshots(containerd, ns)) == set(chains)


@pytest.mark.parametrize("image", ["app-b", "deleter"])
def test_ctr_fetched_layered_image_unpacked_in_chain_order(
    image: str, registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    """Two layers (gzip + zstd; whiteouts and an opaque directory): committed as a chain,
    each on its parent, as containerd's unpacker would have."""
    pushed = push(registry.host, samples.small_images()[image], tmp_path / "img")
    ns = containerd.unique_namespace("ctrfetch")
    ctr_fetch(containerd, ns, pushed)
    cargohold(containerd, ns, "unpack", pushed.text)
    chains = assert_unpacked_as_containerd_does(containerd, ns, pushed)
    assert len(chains) == 2
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    containerd.ctr("images", "mount", pushed.text, str(mnt), namespace=ns)
    try:
        assert set(snapshots(containerd, ns)) == {*chains, str(mnt)}  # a view, no unpack
        assert (mnt / "usr/bin/tool").stat().st_size == 300_000
        if image == "deleter":
            assert not (mnt / "usr/bin/tool-alias").exists()
            assert sorted(os.listdir(mnt / "usr/share/doc")) == ["NEW"]
        else:
            assert (mnt / "opt/app-b/app-b").stat().st_size == 2_500_000
    finally:
        containerd.ctr("images", "unmount", "--rm", str(mnt), namespace=ns)
