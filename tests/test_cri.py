"""What kubelet sees of images `cargohold --store containerd fetch` wrote into ``k8s.io``.

A containerd of this module's own with its CRI plugin enabled (no CNI: the plugin logs that
pod networking is not set up, its image service works regardless), asked through the CRI
``runtime.v1.ImageService`` gRPC API -- the calls kubelet makes -- with the API taken from
the containerd binary itself (tests/rig/cri.py; Debian ships no cri-api proto and no
crictl, so crictl itself is not run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.imagebuild import samples
from cargohold.oci.descriptor import Platform
from tests.rig import cri
from tests.rig.containerd import CRI_PLUGIN, Containerd, start_containerd
from tests.rig.images import Pushed, push, push_index
from tests.rig.needs import missing
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]
K8S_NAMESPACE = "k8s.io"
LINUX_AMD64 = Platform("linux", "amd64")
#: Bound of the waits for CRI's image cache, which follows containerd's image events
#: asynchronously (never reached when things work).
WAIT = 60.0


@pytest.fixture(scope="module")
def cri_containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    ctrd = start_containerd(tmp_path_factory.mktemp("cri"), cri=True)
    try:
        ctrd.namespace = K8S_NAMESPACE
        plugin_id = CRI_PLUGIN.rsplit(".", 1)[1]
        rows = [line.split() for line in ctrd.ctr("plugins", "ls").stdout.splitlines()]
        status = [r[-1] for r in rows if len(r) >= 3 and r[0] == "io.containerd.grpc.v1"
                  and r[1] == plugin_id]
        if status != ["ok"]:
            missing(f"containerd's CRI plugin did not start ({status}):\n{ctrd.log_text()}")
        yield ctrd
    finally:
        ctrd.cleanup()


@pytest.fixture(scope="module")
def cri_api(cri_containerd: Containerd) -> cri.CriApi:
    try:
        return cri.load(cri_containerd.binary)
    except cri.CriApiUnavailable as e:
        missing(str(e))
        raise


@pytest.fixture
def images(cri_containerd: Containerd, cri_api: cri.CriApi) -> Iterator[cri.ImageService]:
    with cri.ImageService(cri_api, cri_containerd.address) as svc:
        yield svc


def cargohold(ctrd: Containerd, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--store", "containerd", "--address", ctrd.address, "--namespace",
         K8S_NAMESPACE, "--no-progress", *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), check=False,
    )
    assert p.returncode == 0, f"cargohold {' '.join(args)} exited {p.returncode}:\n{p.stderr}"
    return p


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something truthy (CRI's image cache is updated from
    containerd's events, after the record was written)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"CRI never showed {what}")
        time.sleep(0.05)


def listed(svc: cri.ImageService, image_id: str) -> list[Any]:
    return [i for i in svc.list_images() if i.id == image_id]


def config_digest(pushed: Pushed) -> str:
    """CRI's image ID: the config digest (of the linux/amd64 image of an index)."""
    config = pushed.built.image_for(LINUX_AMD64).config_descriptor
    assert config is not None
    return str(config.digest)


def expected_size(pushed: Pushed) -> int:
    """containerd's image size for linux/amd64: index (if any), manifest, config, layers."""
    b = pushed.built
    m = b.image_for(LINUX_AMD64)
    assert m.config_descriptor is not None
    size = m.root.size + m.config_descriptor.size + sum(d.size for d in m.layer_descriptors)
    return size + (b.root.size if b.is_index else 0)


def check_kubelet_view(svc: cri.ImageService, pushed: Pushed) -> None:
    """ListImages and ImageStatus (by tag, digest reference and ID) as kubelet uses them."""
    image_id = config_digest(pushed)
    by_digest = f"{pushed.ref.name}@{pushed.built.root.digest}"
    (img,) = wait_for(f"{pushed.text} in ListImages", lambda: listed(svc, image_id))
    assert list(img.repo_tags) == [pushed.text]
    assert list(img.repo_digests) == [by_digest]
    assert img.size == expected_size(pushed)
    for name in (pushed.text, by_digest, image_id):
        status = svc.image_status(name)
        assert status is not None, f"ImageStatus({name}) found nothing"
        assert status.id == image_id
        assert list(status.repo_tags) == [pushed.text]
        assert list(status.repo_digests) == [by_digest]


def test_fetched_image_is_listed_and_found_by_tag_digest_and_id(
    cri_containerd: Containerd, images: cri.ImageService, registry: Registry, tmp_path: Path
) -> None:
    pushed = push(registry.host, samples.busybox(), tmp_path / "img")
    other = f"{pushed.ref.name}:not-fetched"
    assert images.image_status(pushed.text) is None  # kubelet would pull it

    cargohold(cri_containerd, "fetch", "--plain-http", "--pin", pushed.text)

    check_kubelet_view(images, pushed)
    assert images.image_status(other) is None


def test_index_image_survives_restart_and_follows_images_rm(
    cri_containerd: Containerd, images: cri.ImageService, registry: Registry, tmp_path: Path
) -> None:
    pushed = push_index(registry.host, samples.multiarch_images(), tmp_path / "img")
    image_id = config_digest(pushed)
    cargohold(cri_containerd, "fetch", "--plain-http", "--platform", "linux/amd64", pushed.text)
    check_kubelet_view(images, pushed)

    # A node booting from a baked disk: CRI rebuilds its image cache from containerd's
    # records at startup.
    cri_containerd.restart()
    check_kubelet_view(images, pushed)

    names = [pushed.text, f"{pushed.ref.name}@{pushed.built.root.digest}", image_id]
    cargohold(cri_containerd, "images", "rm", *names)
    wait_for(f"{pushed.text} gone from ListImages", lambda: not listed(images, image_id))
    for name in names:
        assert images.image_status(name) is None


def committed_snapshots(ctrd: Containerd) -> dict[str, str]:
    """Every snapshot of k8s.io's overlayfs snapshotter: key -> kind."""
    rows = [x.split() for x in ctrd.ctr("snapshots", "ls").stdout.splitlines()[1:]]
    return {r[0]: r[-1] for r in rows if r}


def test_pulled_image_is_unpacked_for_cri_which_does_not_unpack_again(
    cri_containerd: Containerd, images: cri.ImageService, registry: Registry, tmp_path: Path
) -> None:
    """cargohold's own applier wrote the snapshots: when kubelet asks CRI to pull the image
    (a pod needs it), CRI finds every layer unpacked and makes no snapshot of its own."""
    pushed = push(registry.host, samples.small_images()["deleter"], tmp_path / "img")
    certs = cri_containerd.base / "certs.d" / registry.host
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    out = cargohold(cri_containerd, "--json", "pull", "--plain-http", pushed.text).stdout
    unpack = json.loads(out.strip().splitlines()[-1])["images"][0]["unpack"][0]
    assert any(unpack["phases"].values()), unpack  # cargohold's applier, not containerd's
    check_kubelet_view(images, pushed)
    before = committed_snapshots(cri_containerd)
    assert set(before.values()) == {"Committed"} and len(before) == 2, before

    assert images.pull_image(pushed.text) == config_digest(pushed)

    assert committed_snapshots(cri_containerd) == before
    line = next(x.split() for x in cri_containerd.ctr("images", "check").stdout.splitlines()
                if x.split()[:1] == [pushed.text])
    assert line[-1] == "true", line
