"""`cargohold import` of archive shapes built here: multi-platform indexes, Docker 25+
`docker save` output, truncated zstd, and the memory bound of streaming (the archive is
never loaded whole: peak RSS stays flat for a 256 MiB blob, plain tar and gzip stream)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from cargohold.imagebuild import samples
from cargohold.imagebuild.image import build_index
from tests.rig.cli import TEST_ENV, last_json, run_cli
from tests.test_archive_bad_input import Zeros, layout_members, write_tar


@pytest.fixture(scope="module")
def multiarch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    w = tmp_path_factory.mktemp("multi")
    images = [s.build(w / f"m{i}") for i, s in enumerate(samples.multiarch_images())]
    idx = build_index(images, workdir=w / "index")
    members: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    for img in [idx, *images]:
        for d in [img.root, *( [img.config_descriptor] if img.config_descriptor else []),
                  *img.layer_descriptors]:
            src = idx if idx.has(d.digest) else img
            members[f"blobs/sha256/{d.digest.hex}"] = src.read(d.digest)
    name = "example.com/multi/app:2"
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
        {**idx.root.to_json(), "annotations": {"io.containerd.image.name": name}}]}).encode()
    return write_tar(w / "multi.tar", members), name


def test_multi_platform_index_selects_platforms(multiarch: tuple[Path, str],
                                                tmp_path: Path) -> None:
    path, name = multiarch
    one = last_json(run_cli(tmp_path / "a", "--json", "import", "--platform", "linux/arm64",
                            str(path)))["images"][0]
    assert (one["name"], one["platforms"]) == (name, ["linux/arm64/v8"])
    every = last_json(run_cli(tmp_path / "b", "--json", "import", "--all-platforms",
                              str(path)))["images"][0]
    assert len(every["platforms"]) == 3
    run_cli(tmp_path / "b", "verify")
    # Exported again with one platform: the index digest stays, one manifest goes along.
    out = tmp_path / "arm.tar"
    run_cli(tmp_path / "b", "export", name, "--platform", "linux/arm/v7", "-o", str(out))
    def blobs(p: Path) -> int:
        with tarfile.open(p) as tf:
            return sum(1 for n in tf.getnames() if n.startswith("blobs/sha256/"))

    assert blobs(out) < blobs(path)
    again = last_json(run_cli(tmp_path / "c", "--json", "import", "--platform", "linux/arm/v7",
                              str(out)))["images"][0]
    assert again["digest"] == every["digest"]
    p = run_cli(tmp_path / "d", "import", "--platform", "linux/arm64", str(out), check=False)
    assert p.returncode == 4, p.stderr


def test_docker25_save_names_from_manifest_json(tmp_path: Path) -> None:
    """Docker 25+: an OCI layout plus manifest.json; index entries without names take
    RepoTags, matched by config digest."""
    built = samples.tiny("d25/tiny").build(tmp_path / "b")
    m = layout_members(built, "unused")
    doc = json.loads(m["index.json"])
    del doc["manifests"][0]["annotations"]
    m["index.json"] = json.dumps(doc).encode()
    cfg = built.config_descriptor
    assert cfg is not None
    m["manifest.json"] = json.dumps([{
        "Config": f"blobs/sha256/{cfg.digest.hex}", "RepoTags": ["team/tiny:25"],
        "Layers": [f"blobs/sha256/{d.digest.hex}" for d in built.layer_descriptors]}]).encode()
    got = last_json(run_cli(tmp_path / "s", "--json", "import",
                            str(write_tar(tmp_path / "d25.tar", m))))["images"]
    assert [(i["name"], i["digest"]) for i in got] == [
        ("docker.io/team/tiny:25", str(built.root.digest))]


def test_truncated_zstd(tmp_path: Path) -> None:
    built = samples.tiny("zst/tiny").build(tmp_path / "b")
    plain = write_tar(tmp_path / "a.tar", layout_members(built, "example.com/z/t:1"))
    data = zstandard.ZstdCompressor().compress(plain.read_bytes())
    path = tmp_path / "a.tar.zst"
    path.write_bytes(data[: len(data) // 2])
    p = run_cli(tmp_path / "s", "import", str(path), check=False)
    assert p.returncode == 2 and "truncated or corrupt" in p.stderr, p.stderr
    assert "example.com/z/t" not in run_cli(tmp_path / "s", "images", "ls").stdout


#: cargohold's main, then its own peak RSS (VmHWM of its address space since exec) on stderr.
#: Not the ru_maxrss that wait4 reports: exec keeps the forking process's high-water mark,
#: so a child of a large pytest process would report pytest's size (see bench/common.py).
_MEASURED_MAIN = (
    "import atexit, sys\n"
    "def _hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('peak-rss-kib ' + line.split()[1] + '\\n')\n"
    "atexit.register(_hwm)\n"
    "from cargohold.cli.main import main\n"
    "sys.argv = ['cargohold', *sys.argv[1:]]\n"
    "main()\n"
)


def _peak_rss(root: Path, *args: str) -> int:
    p = subprocess.run([sys.executable, "-c", _MEASURED_MAIN, "--root", str(root), *args],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, **TEST_ENV})
    assert p.returncode == 0, p.stderr
    kib = [int(x.split()[1]) for x in p.stderr.splitlines() if x.startswith("peak-rss-kib ")]
    assert kib, p.stderr
    return kib[-1] * 1024


@pytest.mark.parametrize("compression", ["tar", "gzip"])
def test_memory_does_not_grow_with_the_archive(tmp_path: Path, compression: str) -> None:
    """A 256 MiB layer blob (zeros: the import copies, it does not unpack) in an OCI tar:
    the importing process stays far below the blob's size."""
    size = 256 << 20
    h = hashlib.sha256()
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(chunk)
    layer_digest = f"sha256:{h.hexdigest()}"
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    cfg_digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{cfg_digest}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": size}]}).encode()
    man_digest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{man_digest}", "size": len(manifest),
        "annotations": {"io.containerd.image.name": "example.com/big/zeros:1"}}]}).encode()
    path = tmp_path / ("big.tar" if compression == "tar" else "big.tar.gz")
    with open(path, "wb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) \
            if compression == "gzip" else raw
        with tarfile.open(fileobj=stream, mode="w|") as tf:
            for name, data in (("index.json", index), (f"blobs/sha256/{cfg_digest}", config),
                               (f"blobs/sha256/{man_digest}", manifest)):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo(f"blobs/sha256/{layer_digest.split(':')[1]}")
            ti.size = size
            tf.addfile(ti, Zeros(size))
        if stream is not raw:
            stream.close()
    peak = _peak_rss(tmp_path / "s", "import", str(path))
    assert peak < 120 << 20, f"peak RSS {peak >> 20} MiB for a {size >> 20} MiB blob"
    run_cli(tmp_path / "s", "verify")


def test_export_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    built = samples.tiny("exp/tiny").build(tmp_path / "b")
    root = tmp_path / "s"
    run_cli(root, "import", str(write_tar(tmp_path / "a.tar",
                                          layout_members(built, "example.com/e/t:1"))))
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "x.tar", tmp_path / "file" / "layout"):
        p = run_cli(root, "export", "example.com/e/t:1", "-o", str(target), check=False)
        assert p.returncode == 2 and "cannot write" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    p = run_cli(root, "export", "example.com/e/missing:1", "-o", str(tmp_path / "m.tar"),
                check=False)
    assert p.returncode == 4 and "--fetch" in p.stderr, p.stderr
