"""`cargohold status` and `cargohold evict` on the embedded store: tiers, totals against the
disk, demotion lowest value first, shared chains, protected images, --allow-delete, dry run,
usage errors; and the pure eviction planner."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from cargohold.bake.plan import CostModel
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_CRI_PINNED, LABEL_CRITICAL, LABEL_PRIORITY
from cargohold.node.evict_plan import plan_evict
from cargohold.node.inventory import ImageState, Inventory
from cargohold.store.embedded.store import EmbeddedStore
from tests.rig.cli import last_json
from tests.rig.images import Pushed, push
from tests.rig.services import Registry
from tests.test_fetch import blob_files, cli


def _layer(name: str, size: int, seed: int) -> LayerSpec:
    return LayerSpec([Dir(name), File(f"{name}/data", size=size, seed=seed)])


BASE = _layer("base", 400_000, 7001)


def _image(top: str, size: int, seed: int, *, base: bool = True) -> ImageSpec:
    layers = [BASE, _layer(top, size, seed)] if base else [_layer(top, size, seed)]
    return ImageSpec(layers, cmd=["/bin/true"])


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (what a demotion frees, block rounding
    aside)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            total += st.st_size
    return total


def label(root: Path, name: str, labels: dict[str, str]) -> None:
    with EmbeddedStore(root, create=False) as s:
        img = s.images.get(name)
        s.images.update(replace(img, labels={**img.labels, **labels}))


def status(root: Path, *refs: str) -> dict[str, Any]:
    p = cli(root, "--json", "status", *refs, check=True)
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def summary_of(p: Any) -> dict[str, Any]:
    docs = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    found: dict[str, Any] = next(d for d in docs if d.get("event") == "summary")
    return found


def tiers(root: Path) -> dict[str, str]:
    return {i["name"]: i["tier"] for i in status(root)["images"]}


def _pull_set(registry: Registry, tmp_path: Path) -> tuple[Path, dict[str, Pushed]]:
    imgs = {
        "big": push(registry.host, _image("big", 900_000, 7002), tmp_path / "big"),
        "small": push(registry.host, _image("small", 120_000, 7003), tmp_path / "small"),
        "crit": push(registry.host, _image("crit", 1_000_000, 7004, base=False), tmp_path / "c"),
        "pinned": push(registry.host, _image("pin", 1_100_000, 7005, base=False), tmp_path / "p"),
        "used": push(registry.host, _image("used", 1_200_000, 7006, base=False), tmp_path / "u"),
        "fetched": push(registry.host, _image("fetched", 50_000, 7007, base=False),
                        tmp_path / "f"),
    }
    root = tmp_path / "store"
    pulled = [p.text for k, p in imgs.items() if k != "fetched"]
    cli(root, "pull", "--plain-http", *pulled, check=True)
    cli(root, "fetch", "--plain-http", imgs["fetched"].text, check=True)
    label(root, imgs["crit"].text, {LABEL_CRITICAL: "true", LABEL_PRIORITY: "9"})
    label(root, imgs["pinned"].text, {LABEL_CRI_PINNED: "pinned"})
    cli(root, "create", imgs["used"].text, "web1", check=True)
    return root, imgs


def test_status_and_evict_on_the_embedded_store(registry: Registry, tmp_path: Path) -> None:
    root, imgs = _pull_set(registry, tmp_path)
    doc = status(root)
    by = {i["name"]: i for i in doc["images"]}
    assert by[imgs["fetched"].text]["tier"] == "fetched"
    assert {by[imgs[k].text]["tier"] for k in ("big", "small", "crit", "pinned", "used")} == {
        "unpacked"}
    assert by[imgs["crit"].text]["critical"] is True and by[imgs["crit"].text]["priority"] == 9
    assert by[imgs["pinned"].text]["pinned"] is True
    assert by[imgs["used"].text]["containers"] == ["web1"]
    # The base chain is shared by big and small: exclusive < total for both.
    for k in ("big", "small"):
        row = by[imgs[k].text]
        assert 0 < row["snapshot_exclusive_bytes"] < row["snapshot_bytes"]
    # Totals equal an on-disk walk: every blob file once, every snapshot's usage once.
    totals = doc["totals"]
    assert totals["content_bytes"] == sum(blob_files(root).values())
    assert totals["tiers"] == {"unpacked": 5, "partial": 0, "fetched": 1, "absent": 0}
    du = json.loads(cli(root, "--json", "du", check=True).stdout)["totals"]
    assert totals["snapshot_bytes"] == du["snapshot_bytes"]
    absent = status(root, "example.invalid/none:1")["images"]
    assert absent[0]["tier"] == "absent"

    # Dry run: says what would go, changes nothing.
    before = tiers(root)
    snaps = root / "snapshots"
    disk0 = tree_bytes(snaps)
    dry = cli(root, "evict", "--free", "1", "--dry-run", check=True)
    assert f"would demote {imgs['big'].text}" in dry.stdout
    assert tiers(root) == before and tree_bytes(snaps) == disk0

    # One byte asked: the lowest value goes first (the biggest unpack of priority 1), and
    # only its own layer: the base stays for small.
    out = cli(root, "--json", "evict", "--free", "1", check=True)
    ev = last_json(out)
    assert [a["image"] for a in ev["actions"]] == [imgs["big"].text]
    assert len(ev["outcomes"][0]["removed_chains"]) == 1
    after = tiers(root)
    assert after[imgs["big"].text] == "fetched" and after[imgs["small"].text] == "unpacked"
    freed_on_disk = disk0 - tree_bytes(snaps)
    assert 900_000 <= freed_on_disk < 900_000 + 400_000  # its layer, not the shared base

    # Everything that may go: small (with the base now), never critical, pinned or in use.
    p = cli(root, "--json", "evict", "--free", "1TB")
    assert p.returncode == 13, p.stderr
    assert "could not reach the target" in p.stderr
    after = tiers(root)
    assert after[imgs["small"].text] == "fetched"
    for k in ("crit", "pinned", "used"):
        assert after[imgs[k].text] == "unpacked", k
    err = last_json(p)
    assert err["event"] == "error" and err["exit_code"] == 13
    kept = {k["image"]: k["reason"] for k in summary_of(p)["kept"]}
    assert kept[imgs["crit"].text] == "critical" and kept[imgs["pinned"].text] == "pinned"
    assert kept[imgs["used"].text].startswith("in use by containers/web1")
    left_chains = status(root)["images"]
    assert sum(i["chains"] for i in left_chains) == 3  # crit, pinned, used: one layer each
    assert cli(root, "verify", check=False).returncode == 0

    # A demoted image unpacks again on its next container (the lazy path).
    created = cli(root, "create", imgs["big"].text, "again", check=True)
    assert "unpacked 2 layers" in created.stderr + created.stdout
    assert tiers(root)[imgs["big"].text] == "unpacked"
    cli(root, "containers", "rm", "again", check=True)

    # --allow-delete: whole images go (records, then gc takes their content).
    blobs_before = set(blob_files(root))
    p = cli(root, "--json", "evict", "--free", "1TB", "--allow-delete")
    assert p.returncode == 13
    left = {i["name"] for i in status(root)["images"]}
    assert left == {imgs["crit"].text, imgs["pinned"].text, imgs["used"].text}
    gone = {str(imgs["fetched"].built.layer_descriptors[0].digest),
            str(imgs["small"].built.layer_descriptors[1].digest)}
    assert gone <= blobs_before and not gone & set(blob_files(root))


def test_evict_usage_errors(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    img = push(registry.host, _image("u", 10_000, 7010, base=False), tmp_path / "i")
    cli(root, "fetch", "--plain-http", img.text, check=True)
    for args in (["--keep-free", "150%"], ["--free", "-3GB"], ["--keep-free", "0%"],
                 ["--free", "1GB", "--keep-free", "5%"], [], ["--keep-free", "lots"]):
        p = cli(root, "evict", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr
    missing = cli(tmp_path / "typo", "status")
    assert missing.returncode == 4 and "typo" in missing.stderr
    assert not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- the planner, pure


ONE_BYTE_PER_SECOND = CostModel(unpack_throughput=1.0, per_image_overhead=0.0)


def _state(name: str, chains: list[str], *, prio: float = 1.0, size: int = 0,
           **kw: Any) -> ImageState:
    return ImageState(names=[name], digest=name, tier="unpacked", priority=prio,
                      stacks=[chains], chains=list(chains), snapshot_bytes=size, **kw)


def _inv(images: list[ImageState], sizes: dict[str, int],
         busy: set[str] | None = None) -> Inventory:
    users: dict[str, list[str]] = {}
    for i in images:
        for c in i.chains:
            users.setdefault(c, []).append(i.digest)
    return Inventory(images, 0, sum(sizes.values()), sizes, users, busy or set())


def test_plan_orders_by_value_and_respects_shared_chains() -> None:
    sizes = {"b": 100, "a1": 50, "a2": 500, "c1": 10}
    a = _state("a", ["b", "a1"], size=150)           # value 1/150
    big = _state("big", ["b", "a2"], size=600)       # value 1/600: first
    imp = _state("imp", ["c1"], prio=0.001, size=10)  # value 1e-4: before both
    inv = _inv([a, big, imp], sizes)
    plan = plan_evict(inv, 1, model=ONE_BYTE_PER_SECOND)
    assert [x.image.name for x in plan.actions] == ["imp"]
    plan = plan_evict(inv, 20, model=ONE_BYTE_PER_SECOND)
    assert [(x.image.name, x.chains) for x in plan.actions] == [
        ("imp", ["c1"]), ("big", ["a2"])]
    assert plan.planned_bytes == 510
    # Asking for everything: a goes with the shared base once big is gone.
    plan = plan_evict(inv, 10_000, model=ONE_BYTE_PER_SECOND)
    assert [(x.image.name, x.chains) for x in plan.actions] == [
        ("imp", ["c1"]), ("big", ["a2"]), ("a", ["a1", "b"])]
    assert not plan.reaches_target and plan.planned_bytes == sum(sizes.values())


def test_plan_never_touches_protected_or_busy_chains() -> None:
    sizes = {"x": 10, "y": 20, "z": 30, "w": 40}
    imgs = [_state("crit", ["x"], critical=True), _state("pin", ["y"], pinned=True),
            _state("used", ["z"], users=["ctr1"]), _state("base-of-ctr", ["w"])]
    plan = plan_evict(_inv(imgs, sizes, busy={"w"}), 10_000)
    assert plan.actions == []
    reasons = {i.name: r for i, r in plan.kept}
    assert reasons["crit"] == "critical" and reasons["pin"] == "pinned"
    assert reasons["used"].startswith("in use by ctr1")
    assert "shared" in reasons["base-of-ctr"]
    # Deleting still never takes them.
    assert plan_evict(_inv(imgs[:3], sizes), 10_000, allow_delete=True).actions == []


def test_plan_deletes_only_when_allowed_and_after_demotions() -> None:
    sizes = {"a": 100}
    a = _state("a", ["a"], size=100, content_bytes=1000, content_exclusive=1000)
    f = ImageState(names=["f"], digest="f", tier="fetched", content_bytes=500,
                   content_exclusive=500)
    inv = _inv([a, f], sizes)
    assert [x.action for x in plan_evict(inv, 200).actions] == ["demote"]
    plan = plan_evict(inv, 700, allow_delete=True, model=ONE_BYTE_PER_SECOND)
    assert next((x.action, x.image.name) for x in plan.actions) == ("demote", "a")
    assert ("delete", "f") in [(x.action, x.image.name) for x in plan.actions]
    assert plan.reaches_target
    assert plan_evict(inv, 0).actions == []


def test_plan_demotes_images_of_one_layer_stack_together() -> None:
    """Two images with the same layers (a registry image and its import, a rebuilt tag)
    share every chain: neither may go alone, both go together, the bytes count once."""
    sizes = {"b": 100, "t": 50}
    one = _state("one", ["b", "t"], size=150)
    two = _state("two", ["b", "t"], size=150)
    plan = plan_evict(_inv([one, two], sizes), 1, model=ONE_BYTE_PER_SECOND)
    assert sorted(a.image.name for a in plan.actions) == ["one", "two"]
    assert all(a.chains == ["t", "b"] for a in plan.actions)
    assert plan.planned_bytes == 150


def test_plan_prices_what_warm_would_unpack_again() -> None:
    """A small layer of its own on a big shared base is cheap to warm again: the image with
    the big layer of its own goes first (warm's order, reversed)."""
    sizes = {"base": 10_000, "a": 10, "b": 5_000}
    a = _state("a", ["base", "a"], size=10_010, snapshot_exclusive=10)
    b = _state("b", ["base", "b"], size=15_000, snapshot_exclusive=5_000)
    plan = plan_evict(_inv([a, b], sizes), 1, model=ONE_BYTE_PER_SECOND)
    assert [x.image.name for x in plan.actions] == ["b"]


def test_evict_keeps_the_chains_an_unpack_in_progress_commits_on(
    registry: Registry, tmp_path: Path
) -> None:
    """Overlay layers are prepared without a parent; the `containerd.io/snapshot.ref` label
    ties them to the chain they become, whose parents must stay (warm and the evict timer
    run at the same time on a node)."""
    from cargohold.oci.chainid import chain_ids
    from cargohold.store.embedded.snapshots import EmbeddedSnapshotter

    big = push(registry.host, _image("big", 300_000, 7021), tmp_path / "big")
    small = push(registry.host, _image("small", 100_000, 7022), tmp_path / "small")
    root = tmp_path / "store"
    cli(root, "pull", "--plain-http", big.text, small.text, check=True)
    cli(root, "evict", "--free", "1", check=True)  # big goes: its own layer
    assert tiers(root)[big.text] == "fetched"
    base, top = (str(c) for c in chain_ids(list(big.built.diff_ids)))
    sn = EmbeddedSnapshotter(root)
    try:  # what an unpack of big's top layer holds while it runs
        sn.prepare("extract-test-1", labels={"containerd.io/snapshot.ref": top})
    finally:
        sn.close()
    doc = status(root)
    assert {i["name"]: i for i in doc["images"]}[big.text]["users"] == ["extract-test-1"]
    p = cli(root, "--json", "evict", "--free", "1TB")
    assert p.returncode == 13, p.stderr
    assert tiers(root)[small.text] == "fetched"  # its own layer went ...
    sn = EmbeddedSnapshotter(root)
    try:
        assert sn.stat(base).kind == "committed"  # ... the base big's commit needs stayed
    finally:
        sn.close()
