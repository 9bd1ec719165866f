"""`cargohold calibrate` and the calibration file the planner reads.

The CLI runs as a subprocess against a real store (and a real containerd); the user's store
is filled from a real docker-registry first, so the tests can check it is left alone.
Timings are only checked to be positive.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cargohold.bake.plan import DEFAULT_MODEL
from cargohold.cli.main import main
from cargohold.errors import InvalidInputError
from cargohold.imagebuild import samples
from cargohold.measure import calibration as calmod
from cargohold.measure.calibration import (
    Calibration,
    calibration_path,
    cost_model,
    load_calibration,
    save_calibration,
)
from cargohold.measure.unpack_speed import synthetic_image
from cargohold.oci.digest import Digest
from cargohold.store.containerd import ContainerdStore
from cargohold.store.embedded import EmbeddedStore
from cargohold.store.embedded.snapshots import EmbeddedSnapshotter
from cargohold.store.interfaces import active_lease
from tests.rig.cli import last_json, run_cli
from tests.rig.containerd import Containerd
from tests.rig.images import push
from tests.rig.services import Registry

cli = run_cli


def sample_cal(**kw: Any) -> Calibration:
    base: dict[str, Any] = dict(unpack_throughput=180.3e6, per_image_overhead=0.02,
                                source="calibrate", store="embedded",
                                measured_at="2024-05-01T12:00:00Z", sample_bytes=64_000_000)
    base.update(kw)
    return Calibration(**base)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (for quick checks): exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def store_state(root: Path) -> dict[str, Any]:
    """What the user's store holds: image records, blobs with labels, snapshots (read in
    this process, after the CLI exited)."""
    with EmbeddedStore(root) as store, EmbeddedSnapshotter(root) as sn:
        images = sorted((i.name, str(i.target.digest), dict(i.labels))
                        for i in store.images.list())
        blobs = sorted((str(b.digest), b.size, dict(b.labels)) for b in store.content.walk())
        snaps = sorted((i.name, i.kind, i.parent, dict(i.labels)) for i in sn.walk())
    return {"images": images, "blobs": blobs, "snapshots": snaps}


# ------------------------------------------------------------------ the file


def test_calibration_round_trip_and_cost_model(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert load_calibration(root) is None
    model, cal = cost_model(root)
    assert model is DEFAULT_MODEL and cal is None

    first = sample_cal()
    save_calibration(root, first)  # creates the root
    assert calibration_path(root) == root / "calibration.json"
    assert load_calibration(root) == first
    doc = json.loads(calibration_path(root).read_text())
    assert doc == first.to_json()

    second = sample_cal(unpack_throughput=95e6, per_image_overhead=0.0, source="bench",
                        store="containerd", sample_bytes=1)
    save_calibration(root, second)
    assert load_calibration(root) == second
    model, cal = cost_model(root)
    assert cal == second
    assert model.unpack_throughput == 95e6 and model.per_image_overhead == 0.0
    assert model.skip_latency == DEFAULT_MODEL.skip_latency
    assert model.skip_bandwidth == DEFAULT_MODEL.skip_bandwidth
    assert sorted(p.name for p in root.iterdir()) == ["calibration.json"]  # no temp files


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path
    old = sample_cal()
    save_calibration(root, old)

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calmod.os, "replace", boom)
    with pytest.raises(OSError):
        save_calibration(root, sample_cal(unpack_throughput=1.0))
    monkeypatch.undo()
    assert load_calibration(root) == old  # the old file is whole
    assert sorted(p.name for p in root.iterdir()) == ["calibration.json"]  # temp removed


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe",
    b"[1, 2]",
    b'{"unpack_throughput": 1e6}',
    json.dumps({**sample_cal().to_json(), "unpack_throughput": -1}).encode(),
    json.dumps({**sample_cal().to_json(), "unpack_throughput": "fast"}).encode(),
    json.dumps({**sample_cal().to_json(), "per_image_overhead": -0.1}).encode(),
    json.dumps({**sample_cal().to_json(), "source": "guess"}).encode(),
    json.dumps({**sample_cal().to_json(), "measured_at": "yesterday"}).encode(),
    json.dumps({**sample_cal().to_json(), "measured_at": "2024-05-01T12:00:00"}).encode(),
    json.dumps({**sample_cal().to_json(), "sample_bytes": 1.5}).encode(),
])
def test_corrupt_calibration_names_the_file(tmp_path: Path, content: bytes) -> None:
    calibration_path(tmp_path).write_bytes(content)
    with pytest.raises(InvalidInputError) as e:
        load_calibration(tmp_path)
    assert str(calibration_path(tmp_path)) in e.value.message
    with pytest.raises(InvalidInputError):
        cost_model(tmp_path)


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    doc = {**sample_cal().to_json(), "future_field": [1, 2]}
    calibration_path(tmp_path).write_text(json.dumps(doc))
    assert load_calibration(tmp_path) == sample_cal()


def test_synthetic_image_is_deterministic_and_mixed(tmp_path: Path) -> None:
    a = synthetic_image(20_000_000).build(tmp_path / "a")
    b = synthetic_image(20_000_000).build(tmp_path / "b")
    assert a.digest == b.digest
    assert len(a.layer_descriptors) == 2
    sizes = [e.size for layer in synthetic_image(20_000_000).layers
             for e in layer.iter_entries()  # type: ignore[union-attr]
             if getattr(e, "size", None) is not None]
    assert sum(sizes) == 20_000_000
    assert min(sizes) < 16 << 10 and max(sizes) >= 4 << 20


# ------------------------------------------------------------------ the command


def test_calibrate_embedded_leaves_user_store_alone(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    pushed = push(registry.host, samples.small_images()["app-a"], tmp_path / "img")
    cli(root, "pull", "--plain-http", pushed.text)
    before = store_state(root)
    assert before["snapshots"] and before["images"]
    # A killed run's scratch directory (lock free, no KEEP) is cleaned up; a kept one stays.
    stale = root / "tmp" / "calibrate-killed"
    stale.mkdir(parents=True)
    (stale / "scratch.lock").touch()
    (stale / "store").mkdir()
    kept = root / "tmp" / "bench-kept"
    kept.mkdir()
    (kept / "KEEP").touch()

    p = cli(root, "--json", "calibrate", "--size", "3MB", "--runs", "2")
    out = last_json(p)
    assert out["event"] == "calibration"
    assert out["source"] == "calibrate" and out["store"] == "embedded"
    assert out["unpack_throughput"] > 0 and out["per_image_overhead"] >= 0
    assert out["sample_bytes"] >= 3_000_000 and out["runs"] == 2
    assert len(out["seconds"]) == 2 and all(s > 0 for s in out["seconds"])
    assert out["path"] == str(root / "calibration.json")
    cal = load_calibration(root)
    assert cal is not None and cal.unpack_throughput == out["unpack_throughput"]

    assert store_state(root) == before
    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["bench-kept"]

    text = cli(root, "calibrate", "--size", "1MB", "--runs", "1")
    assert text.stdout.startswith("unpack throughput: "), text.stdout
    # "1 run)" or, when the tiny image's unpack took >= 10 ms, "1 run; 0.02 s of it
    # per-image overhead)": both are right; the test must not depend on the machine's load.
    assert " MB/s (" in text.stdout
    assert re.search(r"1 run(; [0-9.]+ s of it per-image overhead)?\)", text.stdout), text.stdout
    assert "saved to" in text.stderr
    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["bench-kept"]
    assert store_state(root) == before


def test_calibrate_keeps_the_reserve(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    monkeypatch.setenv("CARGOHOLD_RESERVE", "1000PB")
    code, _, err = in_process(capsys, "--root", str(root), "calibrate", "--size", "2MB")
    assert code == 9, err
    assert "reserve" in err
    assert not calibration_path(root).exists()
    assert not (root / "tmp").exists()


def test_calibrate_refuses_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for size in ("10kB", "lots", "64M"):
        code, _, err = in_process(capsys, "--root", str(tmp_path), "calibrate", "--size", size)
        assert code == 2, (size, err)
    assert not calibration_path(tmp_path).exists()


def test_calibrate_containerd(registry: Registry, containerd: Containerd,
                              tmp_path: Path) -> None:
    root = tmp_path / "root"
    ns = containerd.unique_namespace("user")
    opts = ["--store", "containerd", "--address", containerd.address, "--namespace", ns]
    pushed = push(registry.host, samples.tiny(), tmp_path / "img")
    cli(root, *opts, "fetch", "--plain-http", pushed.text)

    def state() -> tuple[str, ...]:
        return tuple(containerd.ctr(*what, namespace=ns).stdout for what in (
            ("images", "ls", "-q"), ("content", "ls", "-q"), ("snapshots", "ls")))

    before = state()
    # A killed run's namespace (with a blob under an unexpiring lease), recorded in its
    # scratch directory: the next run clears and deletes it.
    stale_ns = "cargohold-bench-killed0123"
    with ContainerdStore(containerd.address, stale_ns) as cs:
        token = active_lease.set(cs.leases.create(lease_id="killed").id)
        try:
            data = b"stale content"
            digest = Digest.from_bytes(data)
            with cs.content.writer("stale", total=len(data), expected=digest) as w:
                w.write(data)
                w.commit(len(data), digest)
        finally:
            active_lease.reset(token)
    assert containerd.ctr("content", "ls", "-q", namespace=stale_ns).stdout.strip()
    stale = root / "tmp" / "bench-killed"
    stale.mkdir(parents=True)
    (stale / "scratch.lock").touch()
    (stale / "containerd-namespace").write_text(json.dumps(
        {"address": containerd.address, "namespace": stale_ns, "snapshotter": "overlayfs"}))

    out = last_json(cli(root, *opts, "--json", "calibrate", "--size", "2MB", "--runs", "1"))
    assert out["store"] == "containerd" and out["unpack_throughput"] > 0
    assert out["sample_bytes"] >= 2_000_000  # each layer's own usage
    assert out["snapshotter"] == "overlayfs"
    cal = load_calibration(root)
    assert cal is not None and cal.store == "containerd" and cal.source == "calibrate"

    namespaces = containerd.ctr("namespaces", "ls", "-q").stdout.split()
    assert ns in namespaces
    assert not [n for n in namespaces if n.startswith("cargohold-")], namespaces
    assert state() == before
    assert not (root / "tmp").exists()
