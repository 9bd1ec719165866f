"""`cargohold warm` on the embedded store against a real registry: bake's labels, the WSPT
order, idempotence, a missing layer blob, SIGTERM mid-unpack, the free-space floor."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_CRITICAL, LABEL_PRIORITY
from cargohold.measure.calibration import Calibration, save_calibration
from cargohold.store.embedded import EmbeddedStore
from tests.rig.cli import CLI, TEST_ENV, last_json, run_cli
from tests.rig.images import Pushed, push
from tests.rig.needs import require_root
from tests.rig.services import Registry


def random_image(seed: int, size: int, layers: int = 1) -> ImageSpec:
    """Random data: the unpacked size is about the compressed one."""
    return ImageSpec(
        [LayerSpec([Dir(f"d{i}"), File(f"d{i}/blob", size=size // layers, seed=seed * 10 + i)])
         for i in range(layers)],
        cmd=["/bin/true"],
    )


def many_files_image(seed: int, files: int, layers: int) -> ImageSpec:
    """Many small files per layer: slow to apply (metadata-bound), quick to build."""
    return ImageSpec(
        [LayerSpec([Dir(f"l{i}"),
                    *(File(f"l{i}/f{j}", size=512, seed=seed * 100_000 + i * files + j)
                      for j in range(files))],
                   compression="none")
         for i in range(layers)],
        cmd=["/bin/true"],
    )


def fetch_spec(path: Path, images: list[tuple[Pushed, float]]) -> Path:
    lines: list[str] = []
    for p, prio in images:
        lines += ["[[image]]", f'ref = "{p.text}"', 'mode = "fetch"', f"priority = {prio}", ""]
    path.write_text("\n".join(lines))
    return path


def slow_calibration(root: Path) -> None:
    """1 MB/s and no per-image overhead: expected seconds proportional to the bytes."""
    save_calibration(root, Calibration(unpack_throughput=1e6, per_image_overhead=0.0,
                                       source="calibrate", store="embedded",
                                       measured_at="2026-01-01T00:00:00Z", sample_bytes=1))


def events(p: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.stdout.splitlines() if x.strip()]


def unpacked(root: Path) -> dict[str, bool]:
    p = run_cli(root, "--json", "images", "ls")
    doc = json.loads(p.stdout)
    rows = doc["images"] if isinstance(doc, dict) else doc
    return {r["name"]: bool(r["unpacked"]) for r in rows}


def extract_snapshots(root: Path) -> list[str]:
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT key FROM snapshots WHERE key LIKE 'extract-%'")]
    finally:
        con.close()


def test_bake_labels_records_and_warm_goes_most_valuable_first(
    registry: Registry, tmp_path: Path
) -> None:
    # (size, priority): ratios priority/MB = 0.33, 5, 10, 3 -> c, b, d, a.
    sizes = {"a": (3_000_000, 1), "b": (200_000, 1), "c": (1_000_000, 10), "d": (3_000_000, 9)}
    pushed = {k: push(registry.host, random_image(i + 1, size), tmp_path / k)
              for i, (k, (size, _)) in enumerate(sizes.items())}
    root = tmp_path / "root"
    slow_calibration(root)
    spec = fetch_spec(tmp_path / "cache.toml",
                      [(pushed[k], float(prio)) for k, (_, prio) in sizes.items()])
    run_cli(root, "bake", "--plain-http", str(spec))

    with EmbeddedStore(root) as store:
        labels = {i.name: dict(i.labels) for i in store.images.list()}
    for k, (_, prio) in sizes.items():
        assert labels[pushed[k].text][LABEL_PRIORITY] == f"{prio:g}"
        assert labels[pushed[k].text][LABEL_CRITICAL] == "false"
    assert not any(unpacked(root).values())

    p = run_cli(root, "--json", "warm")
    ev = events(p)
    plan = next(e for e in ev if e["event"] == "plan")
    assert [i["name"] for i in plan["images"]] == [pushed[k].text for k in "cbda"]
    started = [e["name"] for e in ev if e["event"] == "image_started"]
    assert started == [pushed[k].text for k in "cbda"]
    s = ev[-1]
    assert s["event"] == "summary" and s["images_warmed"] == 4 and not s["nothing_to_do"]
    assert s["bytes"] >= sum(size for size, _ in sizes.values())
    assert s["io_class"] == "idle" or s["io_class"].startswith("unavailable")
    assert s["nice"] >= 10
    assert all(unpacked(root).values())

    again = run_cli(root, "warm")
    assert again.stdout.strip() == "nothing to do: 4 images already unpacked", again.stdout
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    run_cli(root, "warm", "--metrics-textfile", str(textfile))
    prom = (textfile / "cargohold.prom").read_text()
    assert 'cargohold_last_run_success{command="warm"} 1.0' in prom, prom
    assert "cargohold_images_pending_warm 0.0" in prom, prom
    # A spec names what to warm (and gives the priorities); unknown images are skipped.
    listed = tmp_path / "list.txt"
    listed.write_text(f"{pushed['a'].text}\n{registry.host}/never/fetched:1\n")
    p = run_cli(root, "--json", "warm", str(listed))
    s = last_json(p)
    assert s["nothing_to_do"] and s["images_warmed"] == 0
    assert sorted(x["reason"] for x in s["skipped"]) == [
        "already unpacked", "not fetched (no image record)"]


def test_missing_layer_blob_fails_that_image_others_warmed(
    registry: Registry, tmp_path: Path
) -> None:
    imgs = [push(registry.host, random_image(20 + i, 300_000), tmp_path / f"i{i}")
            for i in range(3)]
    root = tmp_path / "root"
    run_cli(root, "bake", "--plain-http",
            str(fetch_spec(tmp_path / "c.toml", [(p, 1.0) for p in imgs])))
    broken = imgs[1]
    layer = str(broken.built.layer_descriptors[0].digest)
    run_cli(root, "content", "rm", layer)

    p = run_cli(root, "warm", check=False)
    assert p.returncode == 12, p.stdout + p.stderr
    assert f"{broken.text}: layer {layer}" in p.stderr
    assert "is not in the content store" in p.stderr
    assert "Traceback" not in p.stderr
    state = unpacked(root)
    assert state == {imgs[0].text: True, broken.text: False, imgs[2].text: True}
    assert extract_snapshots(root) == []


def test_sigterm_removes_the_half_applied_snapshot_and_rerun_finishes(
    registry: Registry, tmp_path: Path
) -> None:
    big = push(registry.host, many_files_image(7, 4000, 4), tmp_path / "big")
    root = tmp_path / "root"
    run_cli(root, "bake", "--plain-http", str(fetch_spec(tmp_path / "c.toml", [(big, 1.0)])))

    proc = subprocess.Popen([*CLI, "--root", str(root), "--json", "warm"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "image_started":
                break
        # Catch it with a layer half applied: stop the process while an extract-* snapshot
        # exists, then terminate it.
        deadline = time.monotonic() + 120
        caught = False
        while time.monotonic() < deadline and proc.poll() is None:
            if extract_snapshots(root):
                proc.send_signal(signal.SIGSTOP)
                if extract_snapshots(root):
                    caught = True
                    break
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        assert caught, "warm finished before a layer could be caught half-applied"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert extract_snapshots(root) == []
    assert unpacked(root) == {big.text: False}

    p = run_cli(root, "warm")
    assert big.text in p.stdout and "warmed" in p.stdout
    assert unpacked(root) == {big.text: True}
    assert extract_snapshots(root) == []
    assert "nothing to do" in run_cli(root, "warm").stdout


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    """A 96 MiB ext4 on a loop device, mounted (root only)."""
    require_root("a loop-mounted file system")
    image = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_keep_free_stops_at_the_floor_nothing_corrupted(
    registry: Registry, tmp_path: Path, small_fs: Path
) -> None:
    imgs = [push(registry.host, random_image(40 + i, 8_000_000), tmp_path / f"i{i}")
            for i in range(4)]
    root = small_fs / "root"
    prios = [4.0, 3.0, 2.0, 1.0]
    run_cli(root, "bake", "--plain-http",
            str(fetch_spec(tmp_path / "c.toml", list(zip(imgs, prios, strict=True)))))
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    # Room for two images of 8 MB above the floor, not three.
    floor = free - 20_000_000
    p = run_cli(root, "--json", "warm", "--keep-free", str(floor))
    s = last_json(p)
    assert s["images_warmed"] == 2, s
    assert [c["name"] for c in s["cold"]] == [imgs[2].text, imgs[3].text]
    assert "to keep free" in s["cold"][0]["reason"]
    cold_event = next(e for e in events(p) if e["event"] == "cold")
    assert cold_event["names"] == [imgs[2].text, imgs[3].text]
    assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize >= floor
    text = run_cli(root, "warm", "--keep-free", str(floor))
    assert f"left cold {imgs[2].text}, {imgs[3].text}" in text.stderr
    assert extract_snapshots(root) == []
    run_cli(root, "verify")
    assert unpacked(root) == {imgs[0].text: True, imgs[1].text: True,
                              imgs[2].text: False, imgs[3].text: False}
    # Percentages work too; 1% lets the rest through.
    p = run_cli(root, "--json", "warm", "--keep-free", "1%")
    assert last_json(p)["images_warmed"] == 2
    run_cli(root, "verify")


def test_one_warm_per_store(tmp_path: Path) -> None:
    from cargohold.node.warm import warm_lock

    root = tmp_path / "root"
    with EmbeddedStore(root):  # an empty store (warm creates none)
        pass
    with warm_lock(root / "warm.lock"):
        p = run_cli(root, "warm", check=False)
    assert p.returncode == 8 and "another cargohold warm is running" in p.stderr, p.stderr
    assert "nothing to do: 0 images" in run_cli(root, "warm").stdout


def test_an_image_another_unpack_is_applying_is_put_back_once(
    registry: Registry, tmp_path: Path
) -> None:
    """CRI unpacking image A for a waiting container (here: an active snapshot under
    containerd's unpack key for A's chain): warm does B first, then A."""
    from cargohold.oci.chainid import chain_ids
    from cargohold.store.open import LocalStore

    a = push(registry.host, random_image(51, 200_000), tmp_path / "a")
    b = push(registry.host, random_image(52, 200_000), tmp_path / "b")
    root = tmp_path / "root"
    run_cli(root, "bake", "--plain-http",
            str(fetch_spec(tmp_path / "c.toml", [(a, 9.0), (b, 1.0)])))
    chain = str(chain_ids(list(a.built.diff_ids))[0])
    with LocalStore(root) as store:
        store.snapshots.prepare(f"extract-1733480000-abcd {chain}", "")
    p = run_cli(root, "--json", "warm")
    ev = events(p)
    plan = next(e for e in ev if e["event"] == "plan")
    assert [i["name"] for i in plan["images"]] == [a.text, b.text]
    assert [e["name"] for e in ev if e["event"] == "image_started"] == [b.text, a.text]
    assert last_json(p)["images_warmed"] == 2


def test_disk_filling_past_the_estimate_stops_with_exit_9(
    registry: Registry, tmp_path: Path, small_fs: Path
) -> None:
    """A layer whose size the blob does not tell (zstd without a content size) and that
    inflates 1000-fold: the estimate passes the floor, the applier's reserve stops the
    write. The half-applied snapshot is removed, the image left cold, nothing corrupted."""
    zeros = ImageSpec([LayerSpec([Dir("z"), File("z/zeros", content=bytes(40_000_000))],
                                 compression="zstd")], cmd=["/bin/true"])
    img = push(registry.host, zeros, tmp_path / "z")
    root = small_fs / "root"
    run_cli(root, "bake", "--plain-http", str(fetch_spec(tmp_path / "c.toml", [(img, 1.0)])))
    st = os.statvfs(small_fs)
    floor = st.f_bavail * st.f_frsize - 20_000_000
    p = run_cli(root, "warm", "--keep-free", str(floor), check=False)
    assert p.returncode == 9, p.stdout + p.stderr
    assert f"left cold {img.text}" in p.stderr and "Traceback" not in p.stderr
    assert "reached while unpacking" in p.stderr, p.stderr
    assert extract_snapshots(root) == []
    assert unpacked(root) == {img.text: False}
    run_cli(root, "verify")
    assert "warmed" in run_cli(root, "warm").stdout
