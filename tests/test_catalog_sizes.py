"""The planner's unpacked sizes match what the snapshots take on disk, for both layouts: an
overlay snapshot holds its own layer, a flat (full-copy) one every layer below it too."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.bake.catalog import resolve_spec
from cargohold.bake.spec import parse_spec
from cargohold.imagebuild import samples
from cargohold.maintain.du import disk_usage
from cargohold.registry.client import RegistryClient
from cargohold.store.embedded import EmbeddedStore
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
from cargohold.unpack.applier import EmbeddedApplier
from cargohold.unpack.image import Unpacker
from tests.rig.images import push
from tests.rig.needs import require_root
from tests.rig.services import Registry
from tests.test_fetch import cli


@pytest.mark.parametrize("backend", ["overlay", "flat"])
def test_measured_chain_sizes_add_up_to_the_snapshots_on_disk(
    registry: Registry, tmp_path: Path, backend: str
) -> None:
    if backend == "overlay":
        require_root("overlay")
    pushed = push(registry.host, samples.small_images()["app-b"], tmp_path / "img")  # 2 layers
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", pushed.text, check=True)
    spec = parse_spec(f'[[image]]\nref = "{pushed.text}"\n')
    with EmbeddedStore(root) as store, \
            EmbeddedSnapshotter(root, backend=backend) as sn:  # type: ignore[arg-type]
        with Unpacker(store.content, sn, EmbeddedApplier(), jobs=2) as unpacker:
            unpacker.unpack(store.images.get(pushed.text).target)
        client = RegistryClient(plain_http=True)
        try:
            (entry,) = resolve_spec(spec, client, store=store, snapshots=sn)
        finally:
            client.close()
        usage = disk_usage(store, [pushed.text], snapshots=sn)
    assert entry.measured_chains == 2
    (row,) = usage.images
    planned = sum(size for _, size in entry.image.chains)
    assert planned == row.snapshot_bytes > 0
    assert [c for c, _ in entry.present_chains] == [c for c, _ in entry.image.chains]
    sizes = [size for _, size in entry.image.chains]
    if backend == "flat":
        assert sizes[1] > sizes[0]  # the top chain's copy includes the base layer's files
