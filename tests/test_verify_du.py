"""`cargohold verify` (corrupt / truncated / missing blobs, --repair) and `cargohold du`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.units import format_size
from tests.rig.images import push
from tests.rig.needs import needs_root
from tests.rig.services import Registry
from tests.test_fetch import blob_files, cli


def one_layer(seed: int, size: int = 150_000) -> ImageSpec:
    return ImageSpec([LayerSpec([Dir("data"), File("data/blob", size=size, seed=seed)])],
                     cmd=["/bin/true"])


def blob(root: Path, digest: str) -> Path:
    alg, hexd = digest.split(":")
    return root / "content" / "blobs" / alg / hexd


def first_json(stdout: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stdout.splitlines()[0])  # type: ignore[no-any-return]


def test_verify_finds_and_repairs_damage(registry: Registry, tmp_path: Path) -> None:
    imgs = [push(registry.host, one_layer(200 + i), tmp_path / f"i{i}") for i in range(3)]
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", *(p.text for p in imgs), check=True)
    ok = cli(root, "--json", "verify", check=True)
    assert first_json(ok.stdout)["ok"] is True and first_json(ok.stdout)["images"] == 3

    flipped = str(imgs[0].built.layer_descriptors[0].digest)
    truncated = str(imgs[1].built.layer_descriptors[0].digest)
    missing = str(imgs[2].built.config_descriptor.digest)  # type: ignore[union-attr]
    _flip(blob(root, flipped), 1000)
    t = blob(root, truncated)
    os.chmod(t, 0o644)
    os.truncate(t, t.stat().st_size - 10)
    blob(root, missing).unlink()

    bad = cli(root, "verify", "--json")
    assert bad.returncode == 6, bad.stderr
    problems = first_json(bad.stdout)["problems"]
    kinds = {(p["kind"], p["digest"]) for p in problems}
    assert ("corrupt", flipped) in kinds
    assert ("truncated", truncated) in kinds
    assert ("missing", missing) in kinds
    assert {p["image"] for p in problems if p["kind"] == "incomplete"} == {p.text for p in imgs}
    for d in (flipped, truncated, missing):
        assert d in bad.stderr
    # Naming one image checks only that one.
    one = cli(root, "verify", "--json", imgs[1].text)
    assert one.returncode == 6
    assert {p["image"] for p in first_json(one.stdout)["problems"]} == {imgs[1].text}

    fixed = cli(root, "verify", "--repair", "--plain-http", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert all(p["repaired"] for p in first_json(fixed.stdout)["problems"])
    again = cli(root, "verify", "--json")
    assert again.returncode == 0, again.stderr
    assert first_json(again.stdout)["problems"] == []
    want = {str(d.digest): d.size for p in imgs for d in p.built.blobs_in_push_order()}
    assert blob_files(root) == want
    for d in want:
        assert "sha256:" + hashlib.sha256(blob(root, d).read_bytes()).hexdigest() == d


def test_du_totals_match_disk_and_count_shared_once(registry: Registry, tmp_path: Path) -> None:
    base = LayerSpec([Dir("base"), File("base/lib", size=120_000, seed=300)])
    specs = [ImageSpec([base, LayerSpec([Dir("app"), File("app/bin", size=50_000 + i, seed=301 + i)])],
                       cmd=["/bin/true"]) for i in range(2)]
    a, b = (push(registry.host, s, tmp_path / f"d{i}") for i, s in enumerate(specs))
    base_a, base_b = a.built.layer_descriptors[0], b.built.layer_descriptors[0]
    assert base_a.digest == base_b.digest  # the builder is deterministic: one shared blob
    extra = push(registry.host, one_layer(399), tmp_path / "x")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", a.text, b.text, extra.text, check=True)
    cli(root, "images", "rm", extra.text, check=True)  # its blobs stay until gc

    doc = first_json(cli(root, "du", "--json", check=True).stdout)
    walked = sum(p.stat().st_size for p in (root / "content" / "blobs").rglob("*") if p.is_file())
    totals = doc["totals"]
    assert totals["content_bytes"] == walked
    assert totals["referenced_bytes"] + totals["unreferenced_bytes"] == walked
    assert totals["unreferenced_bytes"] == extra.built.total_size()
    assert {u["digest"] for u in doc["unreferenced"]} == {
        str(d.digest) for d in extra.built.blobs_in_push_order()}
    assert totals["shared_content_bytes"] == base_a.size  # counted once
    assert totals["referenced_bytes"] == (
        a.built.total_size() + b.built.total_size() - base_a.size)
    rows = {r["name"]: r for r in doc["images"]}
    assert set(rows) == {a.text, b.text}
    for pushed in (a, b):
        r = rows[pushed.text]
        assert r["content_bytes"] == pushed.built.total_size()
        assert r["content_shared_bytes"] == base_a.size
        assert r["content_exclusive_bytes"] == pushed.built.total_size() - base_a.size
    assert sum(r["content_exclusive_bytes"] for r in rows.values()) + base_a.size == (
        totals["referenced_bytes"])

    only = first_json(cli(root, "du", "--json", a.text, check=True).stdout)
    assert [r["name"] for r in only["images"]] == [a.text]
    assert only["images"][0]["content_shared_bytes"] == base_a.size
    assert only["selected"] == {"images": 1, "content_bytes": a.built.total_size(),
                                "snapshot_bytes": 0, "total_bytes": a.built.total_size()}
    table = cli(root, "du", check=True).stdout
    assert a.text in table and "unreferenced" in table

    # Issue 14, 9: `du REF` totals the images named, not the store.
    named = cli(root, "du", a.text, check=True)
    assert named.stdout.splitlines()[-1] == (
        f"total of the 1 image named: content {format_size(a.built.total_size())} + "
        f"snapshots 0 B = "
        f"{format_size(a.built.total_size())} (shared bytes once)")
    assert f"the whole store: content {format_size(walked)}" in named.stderr
    both = first_json(cli(root, "du", "--json", a.text, b.text, check=True).stdout)
    assert both["selected"]["content_bytes"] == totals["referenced_bytes"]

def _flip(f: Path, at: int) -> None:
    os.chmod(f, 0o644)
    with open(f, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_one_corrupt_blob_is_one_problem(registry: Registry, tmp_path: Path) -> None:
    img = push(registry.host, one_layer(410), tmp_path / "i")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", img.text, check=True)
    _flip(blob(root, str(img.built.layer_descriptors[0].digest)), 1000)
    p = cli(root, "verify")
    assert p.returncode == 6, p.stderr
    assert "1 images checked: 1 problem" in p.stdout and "error: 1 problem in" in p.stderr
    j = first_json(cli(root, "verify", "--json").stdout)
    assert j["problem_count"] == 1 and len(j["problems"]) == 2  # corrupt + incomplete


def test_create_from_a_corrupt_fetched_layer_is_an_integrity_error(
        registry: Registry, tmp_path: Path) -> None:
    img = push(registry.host, one_layer(411), tmp_path / "i")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", img.text, check=True)
    layer = img.built.layer_descriptors[0]
    _flip(blob(root, str(layer.digest)), layer.size // 2)
    p = cli(root, "create", img.text, "c1")
    assert p.returncode == 6, p.stderr
    assert "damaged in the store" in p.stderr and "verify --repair" in p.stderr
    assert "Traceback" not in p.stderr
    cli(root, "verify", "--repair", "--plain-http", check=True)
    cli(root, "create", img.text, "c1", check=True)


def test_du_counts_ingests(registry: Registry, tmp_path: Path) -> None:
    from cargohold.store.embedded.store import EmbeddedStore

    img = push(registry.host, one_layer(412), tmp_path / "i")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", img.text, check=True)
    with EmbeddedStore(root) as s, s.content.writer("half-done", total=10_000) as w:
        w.write(b"x" * 4096)  # never committed: an interrupted download
    doc = first_json(cli(root, "du", "--json", check=True).stdout)
    t = doc["totals"]
    assert t["ingest_bytes"] == 4096 and t["ingests"] == 1
    assert t["total_bytes"] == t["content_bytes"] + t["snapshot_bytes"] + 4096
    assert "ingests" in cli(root, "du", check=True).stdout


def test_verify_trusted_blobs_are_size_checked_only(registry: Registry, tmp_path: Path) -> None:
    """``trusted`` (blobs the store verified on commit moments before, as bake passes them)
    skips the re-hash, not the size check."""
    from cargohold.maintain.verify import verify
    from cargohold.store.open import LocalStore

    img = push(registry.host, one_layer(300), tmp_path / "i")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", img.text, check=True)
    layer = str(img.built.layer_descriptors[0].digest)
    f = blob(root, layer)
    _flip(f, 1000)
    with LocalStore(root) as store:
        kinds = {(p.kind, p.digest) for p in verify(store, [img.text], jobs=2)}
        assert ("corrupt", layer) in kinds
        assert verify(store, [img.text], trusted={layer}) == []
        os.truncate(f, f.stat().st_size - 10)
        kinds = {(p.kind, p.digest) for p in verify(store, [img.text], trusted={layer})}
        assert ("truncated", layer) in kinds


def _config_labels(root: Path, digest: str) -> dict[str, str]:
    from cargohold.oci.digest import Digest
    from cargohold.store.embedded import EmbeddedStore

    with EmbeddedStore(root) as s:
        return dict(s.content.info(Digest.parse(digest)).labels)


def _committed(root: Path) -> set[str]:
    from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
    from cargohold.store.interfaces import KIND_COMMITTED

    with EmbeddedSnapshotter(root) as sn:
        return {i.name for i in sn.walk() if i.kind == KIND_COMMITTED}


@needs_root
def test_repair_of_a_pulled_config_keeps_its_snapshot_label(
    registry: Registry, tmp_path: Path
) -> None:
    """Issue 14, defect 13: repairing a damaged config blob must keep its
    containerd.io/gc.ref.snapshot.* label (else the next gc deletes the unpacked
    snapshots), and verify must notice a pulled image whose label is gone."""
    pushed = push(registry.host, one_layer(450), tmp_path / "p")
    root = tmp_path / "store"
    cli(root, "pull", "--plain-http", pushed.text, check=True)
    config = str(pushed.built.config_descriptor.digest)  # type: ignore[union-attr]
    labels = _config_labels(root, config)
    key = "containerd.io/gc.ref.snapshot.overlayfs"
    assert key in labels
    snaps = _committed(root)
    assert labels[key] in snaps

    # A corrupt config blob: repaired, with every label it had.
    f = blob(root, config)
    os.chmod(f, 0o644)
    f.write_bytes(f.read_bytes().replace(b"{", b"[", 1))
    bad = cli(root, "verify", "--json")
    assert bad.returncode == 6
    fixed = cli(root, "verify", "--repair", "--plain-http", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert _config_labels(root, config) == labels
    assert cli(root, "verify").returncode == 0
    cli(root, "gc", check=True)
    assert _committed(root) == snaps  # gc kept the image's snapshots

    # The label lost some other way: verify says so (exit 6), --repair puts it back.
    from cargohold.oci.digest import Digest
    from cargohold.store.embedded import EmbeddedStore

    with EmbeddedStore(root) as s:
        s.content.update(Digest.parse(config), {key: None})
    lost = cli(root, "verify", "--json")
    assert lost.returncode == 6, lost.stderr
    kinds = {(p["kind"], p["digest"]) for p in first_json(lost.stdout)["problems"]}
    assert kinds == {("snapshot_unreferenced", config)}
    assert "verify --repair" in lost.stderr
    fixed = cli(root, "verify", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert [p["repaired"] for p in first_json(fixed.stdout)["problems"]] == [True]
    assert _config_labels(root, config) == labels
    cli(root, "gc", check=True)
    assert _committed(root) == snaps

    # A label naming another chain while the image's own is committed: unreferenced too.
    with EmbeddedStore(root) as s:
        s.content.update(Digest.parse(config), {key: "sha256:" + "0" * 64})
    wrong = cli(root, "verify", "--json")
    assert wrong.returncode == 6  # the image's own chain is committed: the label is mended
    assert {p["kind"] for p in first_json(wrong.stdout)["problems"]} == {"snapshot_unreferenced"}
