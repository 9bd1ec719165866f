"""`cargohold fetch` against a real docker-registry: records, platforms, idempotence, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cargohold import errors
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec, tamper_layer_size
from cargohold.oci.descriptor import Platform
from cargohold.oci.digest import Digest
from cargohold.store.embedded import EmbeddedStore
from tests.rig.faultproxy import Rule, running_proxy
from tests.rig.images import push, push_index
from tests.rig.needs import require_root
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]


def cli(root: Path, *args: str, check: bool = False, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CARGOHOLD_RETRIES": "2", "CARGOHOLD_BACKOFF": "0.01", **(env or {})},
    )
    if check and p.returncode != 0:
        raise AssertionError(f"cargohold {args} exited {p.returncode}:\n{p.stderr}")
    return p


def summary(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    last: dict[str, Any] = lines[-1]
    return last


def blob_files(root: Path) -> dict[str, int]:
    base = root / "content" / "blobs" / "sha256"
    if not base.exists():
        return {}
    return {f"sha256:{p.name}": p.stat().st_size for p in base.iterdir()}


def records(root: Path) -> dict[str, str]:
    with EmbeddedStore(root) as s:
        return {i.name: str(i.target.digest) for i in s.images.list()}


def small_spec(seed: int, size: int = 200_000, compression: str = "gzip") -> ImageSpec:
    return ImageSpec(
        [LayerSpec([Dir("data"), File("data/blob", size=size, seed=seed)],
                   compression=compression)],  # type: ignore[arg-type]
        cmd=["/bin/true"],
    )


def test_fetch_records_resolved_digest_and_is_idempotent(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, small_spec(1), tmp_path / "img")
    root = tmp_path / "store"
    p = cli(root, "--json", "fetch", "--plain-http", pushed.text, check=True)
    s = summary(p)
    assert s["event"] == "summary" and not s["failed"]
    (img,) = s["images"]
    assert img["digest"] == str(pushed.built.root.digest)
    assert img["record"] == "created"
    want = {str(d.digest): d.size for d in pushed.built.blobs_in_push_order()}
    assert blob_files(root) == want
    assert img["bytes_transferred"] == sum(want.values())
    assert records(root) == {pushed.text: str(pushed.built.root.digest)}
    events = [json.loads(x)["event"] for x in p.stdout.splitlines()]
    assert "resolved" in events and "blob_done" in events

    # Again: nothing transferred, and it says so.
    again = cli(root, "fetch", "--plain-http", pushed.text, check=True)
    assert "already present, nothing transferred" in again.stdout
    j = summary(cli(root, "--json", "fetch", "--plain-http", pushed.text, check=True))
    assert j["bytes_transferred"] == 0 and j["images"][0]["record"] == "unchanged"


def test_digest_ref_pins_and_images_commands(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, small_spec(2, compression="zstd"), tmp_path / "img")
    root = tmp_path / "store"
    digest = str(pushed.built.root.digest)
    by_digest = f"{pushed.ref.name}@{digest}"
    cli(root, "fetch", "--plain-http", by_digest, check=True)
    assert records(root) == {by_digest: digest}

    ls = json.loads(cli(root, "--json", "images", "ls", check=True).stdout)["images"]
    assert ls[0]["name"] == by_digest and ls[0]["complete"] is True
    assert ls[0]["size"] == pushed.built.total_size()
    assert ls[0]["platforms"] == ["linux/amd64"]

    cli(root, "images", "tag", by_digest, f"{pushed.ref.name}:pinned", check=True)
    assert set(records(root)) == {by_digest, f"{pushed.ref.name}:pinned"}
    insp = json.loads(cli(root, "images", "inspect", f"{pushed.ref.name}:pinned", check=True).stdout)
    assert insp["target"]["digest"] == digest
    assert all(b["present"] for b in insp["blobs"])

    cli(root, "images", "rm", by_digest, f"{pushed.ref.name}:pinned", check=True)
    assert records(root) == {}
    gc = json.loads(cli(root, "--json", "gc", check=True).stdout)
    assert gc["bytes_freed"] == pushed.built.total_size()
    assert blob_files(root) == {}


def test_multi_platform_index_selects_platforms(registry: Registry, tmp_path: Path) -> None:
    pushed = push_index(registry.host, samples.multiarch_images(), tmp_path / "img")
    root = tmp_path / "store"
    idx = pushed.built
    arm = idx.image_for(Platform("linux", "arm", "v7"))
    amd = idx.image_for(Platform("linux", "amd64"))
    p = cli(root, "--json", "fetch", "--plain-http", "--platform", "linux/arm/v7", pushed.text,
            check=True)
    assert summary(p)["images"][0]["platforms"] == ["linux/arm/v7"]
    have = blob_files(root)
    assert str(arm.root.digest) in have and str(amd.root.digest) not in have
    for d in arm.blobs_in_push_order():
        assert str(d.digest) in have
    # The index blob carries gc labels for every child, so gc keeps the fetched manifest.
    cli(root, "gc", check=True)
    assert str(arm.root.digest) in blob_files(root)

    p = cli(root, "--json", "fetch", "--plain-http", "--all-platforms", pushed.text, check=True)
    assert summary(p)["images"][0]["platforms"] == ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"]
    assert set(blob_files(root)) == {str(d.digest) for d in idx.blobs_in_push_order()}


def test_not_found_names_the_ref_and_writes_no_record(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, small_spec(3), tmp_path / "img")
    root = tmp_path / "store"
    missing = [
        f"{registry.host}/no/such-repo:v1",
        f"{pushed.ref.name}:no-such-tag",
        f"{pushed.ref.name}@sha256:{'0' * 64}",
    ]
    for ref in missing:
        p = cli(root, "fetch", "--plain-http", ref)
        assert p.returncode == errors.NotFoundError.exit_code, p.stderr
        assert ref.split("@")[0].split(":v1")[0] in p.stderr
    assert records(root) == {}


def test_size_lie_is_a_digest_mismatch_nothing_committed(registry: Registry, tmp_path: Path) -> None:
    built = small_spec(4).build(tmp_path / "img")
    liar = tamper_layer_size(built, 0, +100)
    pushed = push(registry.host, liar, tmp_path / "img2")
    root = tmp_path / "store"
    p = cli(root, "fetch", "--plain-http", pushed.text)
    assert p.returncode == errors.DigestMismatchError.exit_code, p.stderr
    layer = liar.layer_descriptors[0]
    assert str(layer.digest) not in blob_files(root)
    assert records(root) == {}


def test_missing_blob_no_record_other_blobs_kept(registry: Registry, tmp_path: Path) -> None:
    built = ImageSpec([
        LayerSpec([File("a", size=50_000, seed=51)]),
        LayerSpec([File("b", size=50_000, seed=52)]),
    ]).build(tmp_path / "img")
    gone = built.layer_descriptors[1]
    pushed = push(registry.host, built, tmp_path / "img2")
    # The registry refuses a manifest whose blobs it lacks, so remove the blob afterwards.
    req = urllib.request.Request(
        f"{registry.url}/v2/{pushed.ref.path}/blobs/{gone.digest}", method="DELETE")
    with urllib.request.urlopen(req) as r:
        assert r.status == 202
    root = tmp_path / "store"
    p = cli(root, "fetch", "--plain-http", pushed.text)
    assert p.returncode == errors.NotFoundError.exit_code
    assert str(gone.digest) in p.stderr
    have = blob_files(root)
    assert str(built.layer_descriptors[0].digest) in have and str(gone.digest) not in have
    assert records(root) == {}
    # The fetch's lease went with it (issue 14): the verified blobs stay on disk for a rerun
    # to reuse, and nothing keeps gc from reclaiming them.
    with EmbeddedStore(root) as s:
        assert s.leases.list() == []
    cli(root, "gc", check=True)
    assert str(built.layer_descriptors[0].digest) not in blob_files(root)


def test_registry_unreachable_is_unavailable(tmp_path: Path) -> None:
    from tests.rig.services import free_port

    p = cli(tmp_path / "store", "fetch", "--plain-http", f"127.0.0.1:{free_port()}/x/y:1")
    assert p.returncode == errors.UnavailableError.exit_code, p.stderr
    assert "127.0.0.1" in p.stderr


def test_shared_layer_downloaded_once(registry: Registry, tmp_path: Path) -> None:
    imgs = samples.small_images()
    a = push(registry.host, imgs["app-a"], tmp_path / "a")
    b = push(registry.host, imgs["app-docker"], tmp_path / "b")
    root = tmp_path / "store"
    p = cli(root, "--json", "fetch", "--plain-http", a.text, b.text, check=True)
    s = summary(p)
    union = {str(d.digest): d.size for x in (a, b) for d in x.built.blobs_in_push_order()}
    assert s["bytes_transferred"] == sum(union.values())
    starts = [json.loads(x) for x in p.stdout.splitlines() if '"blob_started"' in x]
    started = [e["digest"] for e in starts]
    assert len(started) == len(set(started)), "a shared blob was downloaded twice"


def _kill_after_first_layer(root: Path, ref: str, sig: int) -> tuple[set[str], int]:
    proc = subprocess.Popen(
        [*CLI, "--root", str(root), "--json", "fetch", "-j", "1", "--plain-http", ref],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    done: set[str] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev.get("event") == "blob_done" and ev.get("kind") == "layer":
            done.add(ev["digest"])
            proc.send_signal(sig)
            break
    rc = proc.wait(timeout=60)
    return done, rc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_fetch_resumes_without_refetching(registry: Registry, tmp_path: Path,
                                                      sig: int) -> None:
    spec = ImageSpec([LayerSpec([File(f"l{i}", size=12_000_000, seed=70 + i)]) for i in range(4)])
    pushed = push(registry.host, spec, tmp_path / "img")
    root = tmp_path / "store"
    done, rc = _kill_after_first_layer(root, pushed.text, sig)
    assert rc != 0
    if sig == signal.SIGINT:
        assert rc == errors.Interrupted.exit_code
    assert records(root) == {}
    # The store is consistent: it opens, every committed blob verifies.
    with EmbeddedStore(root) as s:
        for info in s.content.walk():
            with s.content.reader(info.digest) as r:
                assert Digest.from_bytes(r.read()) == info.digest
    p = cli(root, "--json", "fetch", "--plain-http", pushed.text, check=True)
    redone = {json.loads(x)["digest"] for x in p.stdout.splitlines() if '"blob_started"' in x}
    assert done and not (done & redone), "a finished blob was downloaded again"
    total = pushed.built.total_size()
    assert summary(p)["bytes_transferred"] < total
    assert records(root) == {pushed.text: str(pushed.built.root.digest)}


def test_disk_full_is_out_of_space_and_keeps_stored(registry: Registry, tmp_path: Path) -> None:
    require_root("mounting a small tmpfs")
    small = push(registry.host, small_spec(90, size=100_000), tmp_path / "s")
    big = push(registry.host, ImageSpec([LayerSpec([File("big", size=30_000_000, seed=91)],
                                                   compression="none")]), tmp_path / "b")
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(root)], check=True)
    try:
        cli(root, "fetch", "--plain-http", small.text, check=True)
        before = blob_files(root)
        p = cli(root, "fetch", "--plain-http", big.text)
        assert p.returncode == errors.OutOfSpaceError.exit_code, p.stderr
        assert "space" in p.stderr
        assert records(root) == {small.text: str(small.built.root.digest)}
        after = blob_files(root)
        assert all(after.get(k) == v for k, v in before.items())
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_progress_lines_off_tty_and_quiet(registry: Registry, tmp_path: Path) -> None:
    pushed = push(registry.host, small_spec(5), tmp_path / "img")
    p = cli(tmp_path / "store", "fetch", "--plain-http", pushed.text, check=True)
    assert "layer" in p.stderr and "done" in p.stderr and "elapsed" in p.stderr
    assert "\x1b[" not in p.stderr  # no live display off a TTY
    assert p.stdout.startswith(pushed.text)


def test_manifest_with_a_flipped_byte_stores_nothing(registry: Registry, tmp_path: Path) -> None:
    """A manifest of the right size and a wrong digest (issue 14, 23): exit 6, no record
    and no blob of the image; the rerun through an honest registry fetches it."""
    pushed = push(registry.host, ImageSpec([LayerSpec([File("f", b"flip\n")])]),
                  tmp_path / "img")
    root = tmp_path / "store"
    with running_proxy(registry.host) as proxy:
        proxy.add(Rule("flip_byte", method="GET", path="/manifests/sha256:", times=-1,
                       flip_at=pushed.built.root.size // 2))
        via = f"{proxy.host}/{pushed.ref.repository}:{pushed.ref.tag}"
        p = cli(root, "fetch", "--plain-http", via)
        assert p.returncode == errors.DigestMismatchError.exit_code, p.stderr
        assert str(pushed.built.root.digest) in p.stderr
        assert "Traceback" not in p.stderr
        assert records(root) == {}
        assert blob_files(root) == {}
        proxy.clear()
        cli(root, "fetch", "--plain-http", via, check=True)
    assert set(records(root).values()) == {str(pushed.built.root.digest)}
