"""The builder's multi-platform index, pushed by cargohold's push code, read back with plain
HTTP requests (no cargohold code on the read side): every digest and byte as built."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest

from cargohold.imagebuild import samples
from cargohold.oci import mediatypes as mt
from tests.rig.images import push_index
from tests.rig.services import Registry

ACCEPT = ", ".join(mt.MANIFEST_ACCEPT)


def get(url: str, accept: str = ACCEPT) -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read(), {k.lower(): v for k, v in r.headers.items()}


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_multi_platform_index_reads_back_exactly(registry: Registry, tmp_path: Path,
                                                 media: str) -> None:
    specs = samples.multiarch_images(media=media)  # type: ignore[arg-type]
    pushed = push_index(registry.host, specs, tmp_path, media=media)
    idx = pushed.built
    base = f"{registry.url}/v2/{pushed.ref.path}"

    body, headers = get(f"{base}/manifests/{pushed.ref.tag}")
    assert body == idx.read(idx.root.digest)
    assert headers["docker-content-digest"] == str(idx.root.digest)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == str(idx.root.digest)
    want_type = mt.OCI_INDEX if media == "oci" else mt.DOCKER_MANIFEST_LIST
    assert headers["content-type"] == want_type

    doc = json.loads(body)
    plats = [(m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant", ""))
             for m in doc["manifests"]]
    assert plats == [("linux", "amd64", ""), ("linux", "arm64", "v8"), ("linux", "arm", "v7")]
    for entry, child in zip(doc["manifests"], idx.manifests, strict=True):
        assert entry["digest"] == str(child.root.digest)
        mbody, mh = get(f"{base}/manifests/{entry['digest']}")
        assert mbody == child.read(child.root.digest)
        assert mh["docker-content-digest"] == entry["digest"]
        manifest = json.loads(mbody)
        for d in [manifest["config"], *manifest["layers"]]:
            blob, _ = get(f"{base}/blobs/{d['digest']}", accept="*/*")
            assert len(blob) == d["size"]
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == d["digest"]
