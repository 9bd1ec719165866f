"""`cargohold bench REF`: fetch-only vs pull in scratch stores, against a real docker-registry
(images built and pushed by cargohold's own code), on the embedded store and on a real
containerd. Timings are only checked to be positive."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from cargohold.cli.bench_cmd import DROP_CACHES
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.measure.calibration import load_calibration
from tests.rig.cli import last_json, run_cli
from tests.rig.containerd import Containerd
from tests.rig.images import push
from tests.rig.services import Registry

cli = run_cli


def check_report(out: dict[str, Any], *, store: str, layers: int) -> None:
    assert out["event"] == "bench" and out["store"] == store
    assert out["platform"] == "linux/amd64"
    fetch, create, pull, disk = out["fetch"], out["first_create"], out["pull"], out["disk"]
    assert fetch["seconds"] > 0 and fetch["bytes"] > 0 and fetch["bytes_per_second"] > 0
    assert fetch["bytes"] == fetch["bytes_total"] and fetch["cold"] is True
    assert create["seconds"] > 0 and create["unpack_seconds"] > 0
    assert create["seconds"] >= create["unpack_seconds"]
    assert create["layers"] == layers and create["unpacked_bytes"] > 0
    assert create["tar_bytes"] > 0 and create["unpack_throughput"] > 0
    assert pull["seconds"] > 0 and pull["bytes"] == fetch["bytes"] and pull["cold"] is True
    # The pull's own phases (issue 14, 11).
    assert pull["fetch_seconds"] > 0 and pull["unpack_seconds"] > 0
    # (each is rounded to 4 decimals on its own)
    assert pull["fetch_seconds"] + pull["unpack_seconds"] <= pull["seconds"] + 2e-4
    # Each step starts settled: synced, the page cache dropped where permitted.
    settled = out["settled"]
    assert [x["before"] for x in settled] == ["the fetch", "the first create", "the pull"]
    for x in settled:
        assert x["sync_seconds"] >= 0
        assert x["dropped_caches"] is (os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK))
        assert x["dropped_caches"] or x["note"]
    fo, pd = disk["fetch_only"], disk["pull"]
    assert fo["snapshot_bytes"] == 0 and fo["content_bytes"] > 0
    assert pd["content_bytes"] == fo["content_bytes"]
    assert pd["snapshot_bytes"] > 0
    # The same image unpacked in both scratch stores: about the same size.
    assert abs(pd["snapshot_bytes"] - create["unpacked_bytes"]) <= pd["snapshot_bytes"] // 10
    assert fo["total_bytes"] < pd["total_bytes"]
    assert disk["saved_bytes"] == pd["snapshot_bytes"] and 0 < disk["saved_percent"] < 100
    assert out["penalty_seconds"] == create["seconds"]
    assert out["verdict"].startswith("fetch-only saves ")
    cal = out["calibration"]
    assert cal["source"] == "bench" and cal["store"] == store
    assert cal["sample_bytes"] == create["unpacked_bytes"] and cal["unpack_throughput"] > 0


def test_bench_embedded(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, samples.small_images()["app-a"], tmp_path / "img")
    root = tmp_path / "store"
    out = last_json(cli(root, "--json", "bench", "--plain-http", pushed.text))
    check_report(out, store="embedded", layers=2)
    assert out["name"] == pushed.text and out["digest"] == str(pushed.built.digest)
    assert out["kept"] == []
    cal = load_calibration(root)
    assert cal is not None and cal.source == "bench"
    assert cal.unpack_throughput == out["calibration"]["unpack_throughput"]
    # Scratch stores are gone, and the user's store was never opened.
    assert sorted(p.name for p in root.iterdir()) == ["calibration.json", "lock"]

    # Text output, --keep: both scratch stores stay, marked, with what they measured.
    p = cli(root, "bench", "--plain-http", "--platform", "linux/amd64", "--keep", pushed.text)
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{pushed.text}  linux/amd64  embedded store")
    assert lines[1].split() == ["STEP", "WALL", "BYTES", "RATE", "DISK"]
    assert lines[2].startswith("fetch (content only)")
    assert lines[3].startswith("first create (lazy unpack)")
    assert lines[4].startswith("pull (fetch + unpack)")
    assert lines[-2].startswith("fetch-only saves ") and "first start pays" in lines[-2]
    assert lines[-1].startswith("each step started after a sync")
    assert "fetch " in lines[4] and " + unpack " in lines[4]
    assert "before the pull: synced" in p.stderr
    # stderr names the fetch-only store first, then the pulled one.
    kept = [Path(x.removeprefix("kept: ")) for x in p.stderr.splitlines()
            if x.startswith("kept: ")]
    assert len(kept) == 2 and sorted(d.parent for d in kept) == sorted((root / "tmp").iterdir())
    assert all((d.parent / "KEEP").exists() and (d / "metadata.db").exists() for d in kept)
    first = last_json(cli(kept[0], "--json", "containers", "ls"))["containers"]
    assert [c["name"] for c in first] == ["bench"]
    du = last_json(cli(kept[1], "--json", "du"))
    assert du["totals"]["snapshot_bytes"] > 0 and du["images"][0]["name"] == pushed.text


def test_bench_missing_image_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    p = cli(root, "bench", "--plain-http", f"{registry.host}/never/pushed:v1", check=False)
    assert p.returncode == 4, p.stderr
    assert not (root / "tmp").exists()
    assert load_calibration(root) is None


def _unique_two_layers() -> ImageSpec:
    """A two-layer image no other test has: containerd shares blobs across namespaces, so
    a sample another test fetched into the session's containerd would make the bench's
    "cold" fetch transfer nothing."""
    seed = secrets.randbits(30)
    return ImageSpec([LayerSpec([Dir("a"), File("a/x", size=300_000, seed=seed)]),
                      LayerSpec([Dir("b"), File("b/y", size=150_000, seed=seed + 1)])],
                     cmd=["/bin/true"])


def test_bench_containerd(registry: Registry, containerd: Containerd, tmp_path: Path) -> None:
    pushed = push(registry.host, _unique_two_layers(), tmp_path / "img")
    root = tmp_path / "root"
    ns = containerd.unique_namespace("user")
    opts = ["--store", "containerd", "--address", containerd.address, "--namespace", ns]
    out = last_json(cli(root, *opts, "--json", "bench", "--plain-http", pushed.text))
    check_report(out, store="containerd", layers=2)
    assert out["snapshotter"] == "overlayfs"
    cal = load_calibration(root)
    assert cal is not None and cal.store == "containerd" and cal.source == "bench"
    namespaces = containerd.ctr("namespaces", "ls", "-q").stdout.split()
    assert not [n for n in namespaces if n.startswith("cargohold-bench-")], namespaces
    assert ns not in namespaces  # the user's namespace was never used
    assert not (root / "tmp").exists()
