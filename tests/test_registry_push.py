"""push_image: ordering, indexes, failures, and the real image builder's BuiltImage."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import BinaryIO

import pytest

from cargohold.errors import NotFoundError
from cargohold.imagebuild.entries import File
from cargohold.imagebuild.image import LayerSpec, build_image
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.registry.push import PushableImage, push_image
from tests.rig.faultproxy import FaultProxy
from tests.rig.services import Registry
from tests.test_registry_client import HandImage, Sink, hand_image, make_client, ref_for

pytestmark = pytest.mark.registry


class HandIndex:
    """An index over two hand images (PushableImage)."""

    def __init__(self, images: list[HandImage]) -> None:
        self.blobs: dict[Digest, bytes] = {}
        for im in images:
            self.blobs.update(im.blobs)
        entries = []
        for i, im in enumerate(images):
            d = im.root.to_json()
            d["platform"] = Platform("linux", ["amd64", "arm64"][i]).to_json()
            entries.append(d)
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}).encode()
        digest = Digest.from_bytes(body)
        self.blobs[digest] = body
        self.root = Descriptor(mt.OCI_INDEX, digest, len(body))
        self.order = [d for im in images for d in im.order] + [self.root]

    def blobs_in_push_order(self) -> list[Descriptor]:
        return list(self.order)

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blobs[digest])


def test_index_push_order(registry: Registry) -> None:
    proxy = FaultProxy(registry.host)
    try:
        a, b = hand_image(b"amd64 layer"), hand_image(b"arm64 layer")
        idx = HandIndex([a, b])
        ref = ref_for(proxy.host, tag="multi")
        root = push_image(make_client(), ref, idx, jobs=3)
        assert root.digest == idx.root.digest and root.media_type == mt.OCI_INDEX
        puts = [r.path for r in proxy.seen("PUT", "/manifests/")]
        # children by digest first, the index last, by tag
        assert puts[-1].endswith("/manifests/multi")
        assert {p.rsplit("/", 1)[1] for p in puts[:-1]} == {str(a.root.digest), str(b.root.digest)}
        # every blob went up before the first manifest
        first_manifest = next(i for i, r in enumerate(proxy.requests) if r.method == "PUT" and "/manifests/" in r.path)
        blob_puts = [i for i, r in enumerate(proxy.requests) if r.method == "PUT" and "/blobs/uploads/" in r.path]
        assert len(blob_puts) == 4 and max(blob_puts) < first_manifest
        c = make_client()
        assert c.resolve(ref_for(registry.host, ref.repository, "multi")).digest == idx.root.digest
    finally:
        proxy.stop()


def test_failure_in_a_blob_is_raised(registry: Registry) -> None:
    img = hand_image(b"will fail")

    class Broken(HandImage):
        def open(self, digest: Digest) -> BinaryIO:
            if digest == img.layer.digest:
                raise NotFoundError(f"blob {digest} is gone")
            return super().open(digest)

    broken = Broken(img.blobs, img.root, img.layer, img.config, img.order)
    ref = ref_for(registry.host)
    with pytest.raises(NotFoundError):
        push_image(make_client(), ref, broken)
    with pytest.raises(NotFoundError):
        make_client().resolve(ref)  # the manifest never went up


def test_built_image_from_the_builder(registry: Registry, tmp_path: Path) -> None:
    layer_spec = LayerSpec([File("hello.txt", b"hello"), File("big.bin", size=3_000_000, seed=4)])
    built = build_image([layer_spec], workdir=tmp_path / "img")
    image: PushableImage = built
    ref = ref_for(registry.host)
    assert push_image(make_client(), ref, image, chunked=True).digest == built.root.digest
    c = make_client()
    desc = c.resolve(ref)
    assert c.fetch_manifest(ref, desc) == built.read(built.root.digest)
    layer = built.layer_descriptors[0]
    sink = Sink()
    c.download_blob(ref, layer, sink)
    assert bytes(sink.buf) == built.read(layer.digest)
