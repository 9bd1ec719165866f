"""`cargohold --store containerd warm` against a real containerd: bake's labels, ready for
`ctr run`, a concurrent `ctr run` of the same image, a missing layer blob, a containerd
restart mid-warm, SIGTERM mid-unpack, the free-space floor on a small loop-mounted root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.oci.chainid import chain_ids
from tests.rig.cli import CLI, TEST_ENV, last_json
from tests.rig.containerd import Containerd, start_containerd
from tests.rig.images import Pushed, push
from tests.rig.services import Registry
from tests.test_warm import fetch_spec, many_files_image, random_image, small_fs  # noqa: F401


def ch(ctrd: Containerd, ns: str, root: Path, *args: str, check: bool = True,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [*CLI, "--root", str(root), "--store", "containerd", "--address", ctrd.address,
         "--namespace", ns, *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **TEST_ENV})
    if check and p.returncode != 0:
        raise AssertionError(f"cargohold {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def popen(ctrd: Containerd, ns: str, root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "--root", str(root), "--store", "containerd", "--address", ctrd.address,
         "--namespace", ns, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **TEST_ENV})


def bake_fetch_only(ctrd: Containerd, ns: str, root: Path, tmp: Path,
                    images: list[tuple[Pushed, float]]) -> None:
    ch(ctrd, ns, root, "bake", "--plain-http", str(fetch_spec(tmp / f"{ns}.toml", images)))


def snapshots(ctrd: Containerd, ns: str) -> dict[str, str]:
    """key -> kind."""
    rows = [x.split() for x in ctrd.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:]]
    return {r[0]: r[-1] for r in rows if r}


def chains(p: Pushed) -> list[str]:
    return [str(c) for c in chain_ids(list(p.built.diff_ids))]


def is_unpacked(ctrd: Containerd, ns: str, p: Pushed) -> bool:
    out = ctrd.ctr("images", "check", namespace=ns).stdout
    line = [x.split() for x in out.splitlines()[1:] if x.split()[:1] == [p.text]]
    assert len(line) == 1, out
    return line[0][-1] == "true"


def test_warm_into_containerd_then_ctr_run_unpacks_nothing(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    from cargohold.imagebuild import samples

    busy = push(registry.host, samples.busybox(), tmp_path / "busy")
    other = push(registry.host, random_image(61, 500_000, layers=2), tmp_path / "o")
    ns = containerd.unique_namespace("warm")
    root = tmp_path / "root"
    bake_fetch_only(containerd, ns, root, tmp_path, [(busy, 5.0), (other, 1.0)])
    assert not is_unpacked(containerd, ns, busy) and snapshots(containerd, ns) == {}

    p = ch(containerd, ns, root, "--json", "warm", "--wait=30")
    s = last_json(p)
    assert s["images_warmed"] == 2 and s["order"] == [busy.text, other.text], s
    assert is_unpacked(containerd, ns, busy) and is_unpacked(containerd, ns, other)
    want = set(chains(busy)) | set(chains(other))
    assert snapshots(containerd, ns) == dict.fromkeys(want, "Committed")
    # No lease left behind.
    assert containerd.ctr("leases", "ls", namespace=ns).stdout.splitlines()[1:] == []

    again = ch(containerd, ns, root, "warm")
    assert again.stdout.strip() == "nothing to do: 2 images already unpacked"
    run = containerd.run(busy.text, "warm-run", "/bin/sh", "-c", "echo warm", namespace=ns)
    assert run.stdout.strip() == "warm"
    assert snapshots(containerd, ns) == dict.fromkeys(want, "Committed")


def test_warm_and_a_concurrent_ctr_run_of_the_same_image_both_succeed(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    from cargohold.imagebuild import samples
    from cargohold.imagebuild.image import ImageSpec, LayerSpec

    base = samples.busybox()
    # busybox plus layers slow to apply: the two unpacks overlap.
    extra = many_files_image(71, 3000, 3)
    spec = ImageSpec([*base.layers, *extra.layers], cmd=["/bin/sh"])
    assert all(isinstance(x, LayerSpec) for x in spec.layers)
    img = push(registry.host, spec, tmp_path / "img")
    ns = containerd.unique_namespace("warmrace")
    root = tmp_path / "root"
    bake_fetch_only(containerd, ns, root, tmp_path, [(img, 1.0)])

    warm = popen(containerd, ns, root, "warm")
    run = subprocess.Popen(
        [containerd.ctr_binary, "--address", containerd.address, "-n", ns, "run", "--rm",
         img.text, "race-run", "/bin/sh", "-c", "echo raced"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w_out, w_err = warm.communicate(timeout=300)
    r_out, r_err = run.communicate(timeout=300)
    log = containerd.log_text()[-4000:]  # for a failure's diagnosis
    assert warm.returncode == 0, w_out + w_err + log
    assert run.returncode == 0 and r_out.strip() == "raced", r_out + r_err + log
    assert is_unpacked(containerd, ns, img)
    # One set of snapshots: the chain IDs, committed; nothing half-applied left.
    assert snapshots(containerd, ns) == dict.fromkeys(chains(img), "Committed")
    assert "nothing to do" in ch(containerd, ns, root, "warm").stdout


def test_missing_layer_blob_in_containerd_fails_that_image_others_warmed(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    imgs = [push(registry.host, random_image(80 + i, 200_000), tmp_path / f"i{i}")
            for i in range(3)]
    ns = containerd.unique_namespace("warmmiss")
    root = tmp_path / "root"
    bake_fetch_only(containerd, ns, root, tmp_path, [(p, 1.0) for p in imgs])
    layer = str(imgs[0].built.layer_descriptors[0].digest)
    containerd.ctr("content", "rm", layer, namespace=ns)

    p = ch(containerd, ns, root, "warm", check=False)
    assert p.returncode == 12, p.stdout + p.stderr
    assert f"{imgs[0].text}: layer {layer}" in p.stderr and "not in the content store" in p.stderr
    assert "Traceback" not in p.stderr
    assert [is_unpacked(containerd, ns, x) for x in imgs] == [False, True, True]
    assert not [k for k in snapshots(containerd, ns) if k.startswith("extract-")]


def _wait_for_extract(ctrd: Containerd, ns: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(k.startswith("extract-") for k in snapshots(ctrd, ns)):
            return
        time.sleep(0.01)
    raise AssertionError(f"no layer was seen being applied (warm exited {proc.poll()})")


def test_containerd_restart_mid_warm_clear_error_and_rerun_leaves_no_half_snapshot(
    registry: Registry, fresh_containerd: Containerd, tmp_path: Path
) -> None:
    ctrd = fresh_containerd
    imgs = [push(registry.host, many_files_image(90 + i, 3000, 3), tmp_path / f"i{i}")
            for i in range(2)]
    ns = ctrd.unique_namespace("warmrestart")
    root = tmp_path / "root"
    bake_fetch_only(ctrd, ns, root, tmp_path, [(p, 1.0) for p in imgs])

    warm = popen(ctrd, ns, root, "warm")
    _wait_for_extract(ctrd, ns, warm)
    # containerd goes away mid-unpack and comes back only after warm has given up.
    ctrd.stop()
    out, err = warm.communicate(timeout=300)
    ctrd.restart()
    if warm.returncode == 0:
        pytest.fail(f"warm finished before containerd went away:\n{out}\n{err}")
    assert warm.returncode == 7, out + err
    assert "containerd" in err and "unavailable" in err, err
    assert "Traceback" not in err

    p = ch(ctrd, ns, root, "warm")
    assert "warmed" in p.stdout
    # The half-applied snapshot of the first run was held by its lease, released (with it)
    # by the next command as its owner is dead (cargohold.leasing).
    assert all(is_unpacked(ctrd, ns, x) for x in imgs)
    want = set(chains(imgs[0])) | set(chains(imgs[1]))
    assert snapshots(ctrd, ns) == dict.fromkeys(want, "Committed")
    assert "nothing to do" in ch(ctrd, ns, root, "warm").stdout


def test_sigterm_on_containerd_removes_the_half_snapshot(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    img = push(registry.host, many_files_image(99, 3000, 4), tmp_path / "img")
    ns = containerd.unique_namespace("warmterm")
    root = tmp_path / "root"
    bake_fetch_only(containerd, ns, root, tmp_path, [(img, 1.0)])
    warm = popen(containerd, ns, root, "warm")
    _wait_for_extract(containerd, ns, warm)
    warm.send_signal(signal.SIGTERM)
    out, err = warm.communicate(timeout=300)
    if warm.returncode == 0:
        pytest.fail(f"warm finished before SIGTERM arrived:\n{out}\n{err}")
    assert warm.returncode == 130, out + err
    assert "Traceback" not in err
    assert not [k for k in snapshots(containerd, ns) if k.startswith("extract-")]
    assert not is_unpacked(containerd, ns, img)
    ch(containerd, ns, root, "warm")
    assert snapshots(containerd, ns) == dict.fromkeys(chains(img), "Committed")


@pytest.fixture
def small_containerd(small_fs: Path) -> Iterator[Containerd]:  # noqa: F811
    ctrd = start_containerd(small_fs / "containerd")
    yield ctrd
    ctrd.cleanup()


def test_full_file_system_stops_at_the_floor_nothing_corrupted(
    registry: Registry, small_containerd: Containerd, small_fs: Path, tmp_path: Path  # noqa: F811
) -> None:
    ctrd = small_containerd
    imgs = [push(registry.host, random_image(110 + i, 8_000_000), tmp_path / f"i{i}")
            for i in range(4)]
    ns = ctrd.unique_namespace("warmfull")
    root = tmp_path / "root"
    bake_fetch_only(ctrd, ns, root, tmp_path,
                    list(zip(imgs, [4.0, 3.0, 2.0, 1.0], strict=True)))
    st = os.statvfs(small_fs)
    floor = st.f_bavail * st.f_frsize - 20_000_000
    p = ch(ctrd, ns, root, "--json", "warm", "--keep-free", str(floor))
    s: dict[str, Any] = last_json(p)
    assert s["images_warmed"] == 2, s
    assert [c["name"] for c in s["cold"]] == [imgs[2].text, imgs[3].text]
    assert s["keep_free_path"].startswith(str(small_fs))
    assert [is_unpacked(ctrd, ns, x) for x in imgs] == [True, True, False, False]
    assert not [k for k in snapshots(ctrd, ns) if k.startswith("extract-")]
    ch(ctrd, ns, root, "verify")
    # Fill the disk for real: what fits is warmed, the rest stays cold, nothing is broken.
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - 4_000_000))
        f.flush()
        os.fsync(f.fileno())
    p = ch(ctrd, ns, root, "--json", "warm", "--keep-free", "1MB", check=False)
    assert p.returncode in (0, 9), p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    s = last_json(p) if p.returncode == 0 else json.loads(p.stdout.splitlines()[-2])
    assert s["cold"], s
    assert not [k for k in snapshots(ctrd, ns) if k.startswith("extract-")]
    ch(ctrd, ns, root, "verify")
    filler.unlink()
    ch(ctrd, ns, root, "warm")
    assert all(is_unpacked(ctrd, ns, x) for x in imgs)


def test_wait_for_containerd_before_warming(
    registry: Registry, fresh_containerd: Containerd, tmp_path: Path
) -> None:
    """Boot order: warm starts before containerd answers; --wait holds it until it does."""
    ctrd = fresh_containerd
    img = push(registry.host, random_image(131, 300_000), tmp_path / "img")
    ns = ctrd.unique_namespace("warmwait")
    root = tmp_path / "root"
    bake_fetch_only(ctrd, ns, root, tmp_path, [(img, 1.0)])
    ctrd.stop()

    p = ch(ctrd, ns, root, "warm", "--wait=0.5", check=False)
    assert p.returncode == 7, p.stdout + p.stderr
    assert "containerd did not answer within 0.5 s" in p.stderr and "Traceback" not in p.stderr
    p = ch(ctrd, ns, root, "warm", check=False)  # no --wait: at once
    assert p.returncode == 7 and "unavailable" in p.stderr, p.stderr

    warm = popen(ctrd, ns, root, "warm", "--wait")
    assert warm.stderr is not None
    line = warm.stderr.readline()
    assert line.startswith("waiting for containerd at "), line
    ctrd.restart()
    out, err = warm.communicate(timeout=300)
    assert warm.returncode == 0, out + err
    assert "warmed 1 images" in out
    assert is_unpacked(ctrd, ns, img)


def test_keep_free_without_the_snapshots_file_system_is_evicts_error(
    containerd: Containerd, tmp_path: Path
) -> None:
    """A snapshotter containerd does not name (here: one it lacks) leaves --keep-free no file
    system to measure: warm fails as evict does (invalid input, exit 2), nothing warmed."""
    ns = containerd.unique_namespace("warmnofs")
    root = tmp_path / "root"
    env = {**os.environ, **TEST_ENV, "CARGOHOLD_SNAPSHOTTER": "nosuch"}
    runs = {}
    for cmd in (["warm", "--keep-free", "10%"], ["warm", "--keep-free", "1GiB"],
                ["evict", "--keep-free", "10%"]):
        p = subprocess.run(
            [*CLI, "--root", str(root), "--store", "containerd", "--address",
             containerd.address, "--namespace", ns, *cmd],
            capture_output=True, text=True, timeout=300, env=env)
        assert "Traceback" not in p.stderr, p.stderr
        runs[" ".join(cmd)] = p
    errs = {k: p.stderr.splitlines()[0] for k, p in runs.items()}
    assert {p.returncode for p in runs.values()} == {2}, errs
    assert len(set(errs.values())) == 1, errs
    assert "--keep-free needs the store's file system" in errs["warm --keep-free 10%"]
    assert "hint: run warm on the machine containerd runs on" in runs["warm --keep-free 1GiB"].stderr
