"""The image graph walk (cargohold.images.walk) over images built by cargohold.imagebuild."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cargohold.errors import CargoholdError, NotFoundError, UnsupportedError
from cargohold.imagebuild import samples
from cargohold.imagebuild.image import BuiltImage, build_index
from cargohold.images.walk import (
    SkipDesc,
    by_platform,
    image_graph,
    read_verified_blob,
    walk,
)
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.store.embedded import EmbeddedStore


def _multiarch(tmp_path: Path) -> BuiltImage:
    images = [spec.build(tmp_path / f"m{i}") for i, spec in
              enumerate(samples.multiarch_images())]
    return build_index(images, workdir=tmp_path / "index")


def _files(img: BuiltImage):  # type: ignore[no-untyped-def]
    def fetch(desc: Descriptor) -> bytes | None:
        p = img.path(desc.digest)
        return p.read_bytes() if p.exists() else None

    return fetch


def test_index_with_several_platforms_walks_the_selected_manifests(tmp_path: Path) -> None:
    img = _multiarch(tmp_path)
    arm = Platform("linux", "arm64", "v8")
    g = image_graph(img.root, _files(img), select=by_platform([arm], what="ref"))
    assert g.index is not None and len(g.index.manifests) == 3
    ((mdesc, m),) = g.manifests
    assert mdesc.platform is not None and str(mdesc.platform) == "linux/arm64/v8"
    assert m.config == img.manifests[1].config_descriptor
    assert g.layers == list(img.manifests[1].layer_descriptors)
    assert set(g.blobs()) == {str(d) for d in [
        img.root.digest, mdesc.digest, m.config.digest, *(x.digest for x in m.layers)]}

    every = image_graph(img.root, _files(img))
    assert [d.digest for d, _ in every.manifests] == [c.root.digest for c in img.manifests]
    assert len(every.configs) == 3
    assert image_graph(img.root, _files(img), limit=1).manifests == every.manifests[:1]

    with pytest.raises(NotFoundError, match=r"^ref: no manifest for platform linux/s390x"):
        image_graph(img.root, _files(img),
                    select=by_platform([Platform("linux", "s390x")], what="ref"))


def test_a_single_manifest_is_its_own_graph(tmp_path: Path) -> None:
    one = samples.multiarch_images()[0].build(tmp_path / "one")
    g = image_graph(one.root, _files(one))
    assert g.index is None and [d for d, _ in g.manifests] == [one.root]
    assert g.configs == [one.config_descriptor]


def test_nested_index_is_refused_or_skipped(tmp_path: Path) -> None:
    inner = _multiarch(tmp_path)
    extra = samples.multiarch_images()[0].build(tmp_path / "x")
    outer = build_index([inner, extra], workdir=tmp_path / "outer")
    with pytest.raises(UnsupportedError, match=r"^ref: nested index .* is not supported"):
        image_graph(outer.root, _files(outer), what="ref")
    g = image_graph(outer.root, _files(outer), nested="skip")
    assert [d.digest for d, _ in g.manifests] == [extra.root.digest]


def test_missing_blobs_are_skipped_and_noted(tmp_path: Path) -> None:
    img = _multiarch(tmp_path)
    gone = img.manifests[0].root
    (img.manifests[0].path(gone.digest)).unlink()
    g = image_graph(img.root, _files(img))
    assert [d.digest for d in g.missing] == [gone.digest]
    assert [d.digest for d, _ in g.manifests] == [c.root.digest for c in img.manifests[1:]]
    root_gone = image_graph(img.root, lambda d: None)
    assert root_gone.missing == [img.root] and root_gone.manifests == []


def test_a_blob_with_the_wrong_digest_is_not_read_and_broken_blobs_are_reported(
    tmp_path: Path,
) -> None:
    img = _multiarch(tmp_path)
    root = tmp_path / "store"
    with EmbeddedStore(root) as store:
        for d in [img.root, *(c.root for c in img.manifests)]:
            data = img.path(d.digest).read_bytes()
            with store.content.writer(f"w-{d.digest.hex}") as w:
                w.write(data)
                w.commit(len(data), d.digest)
        # The second manifest's stored bytes change (same size): its digest is wrong now.
        bad = img.manifests[1].root
        f = root / "content" / "blobs" / bad.digest.algorithm / bad.digest.hex
        os.chmod(f, 0o644)
        data = bytearray(f.read_bytes())
        data[-2] ^= 0x01
        f.write_bytes(bytes(data))

        g = image_graph(img.root, lambda d: read_verified_blob(store.content, d))
        assert [d.digest for d in g.missing] == [bad.digest]
        assert [d.digest for d, _ in g.manifests] == [
            img.manifests[0].root.digest, img.manifests[2].root.digest]

    errors: list[tuple[Descriptor, CargoholdError]] = []
    files = _files(img)
    garbled = image_graph(img.root, lambda d: files(d) if d == img.root else b"{not json",
                          on_error=lambda d, e: errors.append((d, e)))
    assert garbled.manifests == [] and len(errors) == 3
    with pytest.raises(CargoholdError):
        image_graph(img.root, lambda d: b"{not json")


def test_walk_is_depth_first_and_skip_leaves_children_alone() -> None:
    def d(n: int) -> Descriptor:
        return Descriptor("application/x-test", Digest.from_bytes(bytes([n])), 1)

    tree = {0: [1, 4], 1: [2, 3], 4: [5]}
    seen: list[int] = []

    def handler(desc: Descriptor) -> list[Descriptor]:
        n = next(i for i in range(6) if d(i) == desc)
        seen.append(n)
        if n == 4:
            raise SkipDesc
        return [d(c) for c in tree.get(n, [])]

    walk(handler, [d(0)])
    assert seen == [0, 1, 2, 3, 4]
