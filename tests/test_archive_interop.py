"""`cargohold import` / `export` against real tools: Debian's skopeo and umoci, and a real
docker-registry; and `bake --from` with the registry stopped.

* ``skopeo copy docker://... oci:DIR:tag``, ``oci-archive:`` and ``docker-archive:`` (also a
  multi-image docker-archive, as ``docker save a b`` writes) -> ``cargohold import --unpack``:
  the mounted root file system equals the one of a ``pull`` of the same image from the
  registry, entry by entry;
* ``cargohold export`` -> ``skopeo inspect oci-archive:`` and ``umoci unpack`` read it;
* export / import round trips in every output form (directory, tar, tar.gz, tar.zst);
* a directory of archives (k3s style) imported twice: the second time nothing is read;
* a spec exported from one store and baked with ``--from`` into a fresh one with the registry
  stopped: same digests, same ``du`` as a bake from the registry.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from cargohold.imagebuild import samples
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.conftest import Registry
from tests.rig.cli import last_json, run_cli
from tests.rig.images import Pushed, push, rootfs_images, special_layers
from tests.rig.services import require_binary, start_registry
from tests.test_rootfs_vs_containerd import (
    Tree,
    assert_same_tree,
    mount_point,
    record_tree,
    without,
)


def skopeo(*args: str) -> None:
    exe = require_binary("skopeo", "skopeo")
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"skopeo {args}: {p.stdout}{p.stderr}"


def to_skopeo(pushed: Pushed, dest: str) -> None:
    skopeo("copy", "--src-tls-verify=false", f"docker://{pushed.text}", dest)


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    w = tmp_path_factory.mktemp("archive-images")
    return {
        "busybox": push(registry.host, samples.busybox(), w / "bb", repo="arch/busybox"),
        "whiteouts": push(registry.host, rootfs_images(w)["whiteouts"], w / "wo",
                          repo="arch/whiteouts"),
        # docker-archive holds no zstd layers (skopeo refuses): these all gzip, Docker media.
        "specials": push(registry.host, ImageSpec(
            [dataclasses.replace(x, compression="gzip") for x in special_layers()
             if isinstance(x, LayerSpec)], name="arch/specials", media="docker"),
            w / "sp", repo="arch/specials"),
    }


def mounted_tree(root: Path, ref: str, mnt: Path, name: str) -> Tree:
    run_cli(root, "create", ref, name)
    with mount_point(mnt):
        run_cli(root, "mount", name, str(mnt))
        try:
            return without(record_tree(mnt), mtimes=frozenset({"/"}))
        finally:
            run_cli(root, "umount", str(mnt))


@pytest.mark.parametrize("transport", ["oci", "oci-archive", "docker-archive"])
def test_skopeo_output_imports_to_the_same_rootfs(images: dict[str, Pushed], tmp_path: Path,
                                                   transport: str) -> None:
    src = images["specials" if transport == "docker-archive" else "whiteouts"]
    reg_root = tmp_path / "from-registry"
    run_cli(reg_root, "pull", "--plain-http", src.text)
    expected = mounted_tree(reg_root, src.text, tmp_path / "m1", "c1")

    name = "example.com/air/whiteouts:v1"
    target = {
        "oci": (f"oci:{tmp_path / 'layout'}:v1", tmp_path / "layout"),
        "oci-archive": (f"oci-archive:{tmp_path / 'x.tar'}:v1", tmp_path / "x.tar"),
        "docker-archive": (f"docker-archive:{tmp_path / 'd.tar'}:{name}", tmp_path / "d.tar"),
    }[transport]
    to_skopeo(src, target[0])
    root = tmp_path / "imported"
    args = ["--base-name", "example.com/air/whiteouts"] if transport != "docker-archive" else []
    p = run_cli(root, "--json", "import", "--unpack", *args, str(target[1]))
    summary = last_json(p)
    assert [i["name"] for i in summary["images"]] == [name]
    assert summary["images"][0]["unpack"][0]["chains_total"] == len(src.built.diff_ids)
    got = mounted_tree(root, name, tmp_path / "m2", "c2")
    assert_same_tree(expected, got, ("registry pull", f"{transport} import"))
    run_cli(root, "verify")


def test_multi_image_docker_archive(images: dict[str, Pushed], tmp_path: Path) -> None:
    """Two skopeo docker-archives merged into one, as `docker save a b` writes it."""
    entries: list[object] = []
    merged = tmp_path / "both.tar"
    with tarfile.open(merged, "w") as out:
        seen: set[str] = set()
        for i, key in enumerate(["busybox", "specials"]):
            one = tmp_path / f"{key}.tar"
            to_skopeo(images[key], f"docker-archive:{one}:example.com/multi/{key}:{i}")
            with tarfile.open(one) as tf:
                for m in tf:
                    f = tf.extractfile(m) if m.isfile() else None
                    if m.name == "manifest.json":
                        assert f is not None
                        entries += json.load(f)
                    elif m.name not in seen and m.name != "repositories":
                        seen.add(m.name)
                        out.addfile(m, f)
        data = json.dumps(entries).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        out.addfile(ti, io.BytesIO(data))
    root = tmp_path / "s"
    names = [i["name"] for i in last_json(run_cli(root, "--json", "import", str(merged)))["images"]]
    assert names == ["example.com/multi/busybox:0", "example.com/multi/specials:1"]
    p = run_cli(root, "run", "--rm", "example.com/multi/busybox:0", "--", "echo", "air-gapped")
    assert p.stdout.strip() == "air-gapped"


@pytest.mark.parametrize("suffix", ["", ".tar", ".tar.gz", ".tar.zst"])
def test_export_import_round_trip(images: dict[str, Pushed], tmp_path: Path,
                                  suffix: str) -> None:
    a = tmp_path / "a"
    refs = [images["busybox"].text, images["whiteouts"].text]
    run_cli(a, "fetch", "--plain-http", *refs)
    out = tmp_path / f"export{suffix}"
    s = last_json(run_cli(a, "--json", "export", *refs, "-o", str(out)))
    assert s["images"] == refs
    b = tmp_path / "b"
    got = last_json(run_cli(b, "--json", "import", str(out)))["images"]
    assert {(i["name"], i["digest"]) for i in got} == {
        (p.text, str(p.built.digest)) for p in images.values() if p.text in refs}
    run_cli(b, "verify")
    # Importing the same archive again copies nothing and keeps the records.
    again = last_json(run_cli(b, "--json", "import", "--force", str(out)))["images"]
    assert all(i["record"] == "unchanged" for i in again)


def test_export_is_read_by_skopeo_and_umoci(images: dict[str, Pushed], tmp_path: Path) -> None:
    src = images["busybox"]
    a = tmp_path / "a"
    run_cli(a, "fetch", "--plain-http", src.text)
    run_cli(a, "export", src.text, "-o", str(tmp_path / "bb.tar"))
    exe = require_binary("skopeo", "skopeo")
    p = subprocess.run([exe, "inspect", "--raw", f"oci-archive:{tmp_path / 'bb.tar'}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["config"]["digest"] == str(
        src.built.config_descriptor.digest)  # type: ignore[union-attr]
    run_cli(a, "export", src.text, "-o", str(tmp_path / "layout"))
    umoci = require_binary("umoci", "umoci")
    bundle = tmp_path / "bundle"
    p = subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'layout'}:v1", str(bundle)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.path.isfile(bundle / "rootfs" / "bin" / "busybox")
    assert json.loads((bundle / "config.json").read_text())["ociVersion"]


def test_directory_of_archives_is_imported_once(images: dict[str, Pushed],
                                                tmp_path: Path) -> None:
    a = tmp_path / "a"
    bb, wo = images["busybox"].text, images["whiteouts"].text
    run_cli(a, "fetch", "--plain-http", bb, wo)
    agent = tmp_path / "agent-images"
    agent.mkdir()
    run_cli(a, "export", bb, "-o", str(agent / "busybox.tar"))
    run_cli(a, "export", wo, "-o", str(agent / "whiteouts.tar.zst"))
    (agent / "notes.txt").write_text("not an archive, not read\n")
    b = tmp_path / "b"
    first = last_json(run_cli(b, "--json", "import", str(agent)))
    assert sorted(i["name"] for i in first["images"]) == sorted([bb, wo])
    second = last_json(run_cli(b, "--json", "import", str(agent)))
    assert second["images"] == [] and all(x["skipped"] for x in second["archives"])
    # A record removed (or a file changed) makes that archive count again.
    run_cli(b, "images", "rm", bb)
    third = last_json(run_cli(b, "--json", "import", str(agent)))
    assert [i["name"] for i in third["images"]] == [bb]


def test_bake_from_export_with_the_registry_stopped(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "registry")
    try:
        w = tmp_path / "w"
        refs = [push(reg.host, samples.busybox(), w / "bb", repo="spec/busybox").text,
                push(reg.host, samples.tiny("spec/tiny"), w / "t", repo="spec/tiny").text]
        spec = tmp_path / "cache.toml"
        spec.write_text('store = "embedded"\nbudget = "1GiB"\n' + "".join(
            f'[[image]]\nref = "{r}"\n' + ('critical = true\n' if i == 0 else "")
            for i, r in enumerate(refs)))
        online = tmp_path / "online"
        run_cli(online, "bake", "--plain-http", str(spec))
        run_cli(online, "export", "--spec", str(spec), "-o", str(tmp_path / "spec.tar.gz"))
    finally:
        reg.stop()
    offline = tmp_path / "offline"
    plan = last_json(run_cli(offline, "plan", "--json", str(spec), "--from",
                             str(tmp_path / "spec.tar.gz")))
    assert {i["name"] for i in plan["images"]} == set(refs)
    run_cli(offline, "bake", str(spec), "--from", str(tmp_path / "spec.tar.gz"))

    def digests(root: Path) -> dict[str, str]:
        return {i["name"]: i["digest"]
                for i in last_json(run_cli(root, "--json", "images", "ls"))["images"]}

    assert digests(offline) == digests(online)
    du_online = last_json(run_cli(online, "--json", "du"))
    du_offline = last_json(run_cli(offline, "--json", "du"))
    assert du_offline["totals"] == du_online["totals"]
    # An image the archive lacks is a clear error, not a network fetch.
    spec.write_text(spec.read_text() + '[[image]]\nref = "example.com/not/there:1"\n')
    p = run_cli(tmp_path / "third", "bake", str(spec), "--from", str(tmp_path / "spec.tar.gz"),
                check=False)
    assert p.returncode == 12, (p.stdout, p.stderr)
    assert "example.com/not/there:1: not in the archive" in p.stdout + p.stderr


def test_export_fetch_and_bake_from_with_allow_network(images: dict[str, Pushed],
                                                       tmp_path: Path) -> None:
    bb, wo = images["busybox"].text, images["whiteouts"].text
    a = tmp_path / "a"
    out = tmp_path / "bb.tar"
    run_cli(a, "export", "--fetch", "--plain-http", bb, "-o", str(out))  # no record before
    spec = tmp_path / "images.txt"
    spec.write_text(f"{bb}\n{wo}\n")
    p = run_cli(tmp_path / "b", "bake", str(spec), "--from", str(out), check=False)
    assert p.returncode == 12 and f"{wo}: not in the archive" in p.stdout + p.stderr
    run_cli(tmp_path / "c", "bake", str(spec), "--from", str(out), "--allow-network",
            "--plain-http")
    got = {i["name"]: i["digest"] for i in last_json(run_cli(tmp_path / "c", "--json",
                                                             "images", "ls"))["images"]}
    assert got == {bb: str(images["busybox"].built.digest),
                   wo: str(images["whiteouts"].built.digest)}
