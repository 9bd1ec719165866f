"""`cargohold import` of hostile and broken archives: each one a clear error with its
documented exit code, no image record, and nothing already stored lost.

The archives are crafted here from a tiny image built by cargohold's builder (no registry
needed). Before each bad import the store holds a good image; afterwards ``images ls`` lists
exactly that image and ``verify`` passes.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import File
from cargohold.imagebuild.image import BuiltImage, LayerSpec
from cargohold.oci.digest import Digest
from tests.rig.cli import last_json, run_cli

GOOD_NAME = "example.com/good/app:1"
BAD_NAME = "example.com/bad/app:1"


def layout_members(built: BuiltImage, name: str) -> dict[str, bytes]:
    """The files of an OCI layout holding ``built`` as ``name``."""
    members: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    digests = [built.root.digest, built.config_descriptor.digest,  # type: ignore[union-attr]
               *(d.digest for d in built.layer_descriptors)]
    for d in digests:
        members[f"blobs/{d.algorithm}/{d.hex}"] = built.read(d)
    entry = {**built.root.to_json(),
             "annotations": {"io.containerd.image.name": name,
                             "org.opencontainers.image.ref.name": "1"}}
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    return members


def write_tar(path: Path, members: dict[str, bytes],
              extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        if extra is not None:
            extra(tf)
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return samples.tiny("bad/tiny").build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    spec = dataclasses.replace(samples.tiny("bad/other"),
                               layers=[LayerSpec([File("other.txt", b"other\n")])])
    return spec.build(tmp_path_factory.mktemp("other"))


@pytest.fixture
def store(tmp_path: Path, other: BuiltImage) -> Path:
    """A store that already holds a good image (which no bad import may damage)."""
    root = tmp_path / "store"
    good = write_tar(tmp_path / "good.tar", layout_members(other, GOOD_NAME))
    run_cli(root, "import", str(good))
    return root


def assert_untouched(root: Path) -> None:
    names = run_cli(root, "images", "ls").stdout
    assert GOOD_NAME in names and BAD_NAME not in names, names
    run_cli(root, "verify")


def bad_import(root: Path, path: Path, code: int, *words: str) -> str:
    p = run_cli(root, "import", str(path), check=False)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    assert_untouched(root)
    return p.stderr


def _link(name: str, target: str, *, hard: bool = False) -> Callable[[tarfile.TarFile], None]:
    def add(tf: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        ti.linkname = target
        tf.addfile(ti)
    return add


def test_member_with_dotdot_is_hostile(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    m["blobs/../../evil"] = b"x"
    bad_import(store, write_tar(tmp_path / "a.tar", m), 10, "escapes the archive")


def test_member_with_absolute_path_is_hostile(store: Path, built: BuiltImage,
                                              tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    m["/etc/evil"] = b"x"
    bad_import(store, write_tar(tmp_path / "a.tar", m), 10, "absolute path")


@pytest.mark.parametrize("target", ["../../../etc/passwd", "/etc/passwd"])
def test_symlink_escape_is_hostile(store: Path, built: BuiltImage, tmp_path: Path,
                                   target: str) -> None:
    m = layout_members(built, BAD_NAME)
    layer = built.layer_descriptors[0].digest
    del m[f"blobs/sha256/{layer.hex}"]
    path = write_tar(tmp_path / "a.tar", m, _link(f"blobs/sha256/{layer.hex}", target))
    bad_import(store, path, 10, "points outside the archive")


def test_symlink_escape_in_a_layout_directory(store: Path, built: BuiltImage,
                                              tmp_path: Path) -> None:
    d = tmp_path / "layout"
    for name, data in layout_members(built, BAD_NAME).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    layer = d / "blobs" / "sha256" / built.layer_descriptors[0].digest.hex
    secret = tmp_path / "secret"
    secret.write_bytes(layer.read_bytes())  # even the right bytes: outside is outside
    layer.unlink()
    layer.symlink_to(secret)
    bad_import(store, d, 10, "leaving the layout")


def test_index_names_a_blob_the_archive_lacks(store: Path, built: BuiltImage,
                                              tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    del m[f"blobs/sha256/{built.layer_descriptors[0].digest.hex}"]
    bad_import(store, write_tar(tmp_path / "a.tar", m), 4, "lacks layer")


def test_blob_with_wrong_bytes(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    key = f"blobs/sha256/{built.layer_descriptors[0].digest.hex}"
    m[key] = bytes(len(m[key]))  # same size, other bytes
    bad_import(store, write_tar(tmp_path / "a.tar", m), 6, "digest")


def test_blob_with_wrong_bytes_in_a_gzip_stream(store: Path, built: BuiltImage,
                                                tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    key = f"blobs/sha256/{built.layer_descriptors[0].digest.hex}"
    m[key] = bytes(len(m[key]))
    plain = write_tar(tmp_path / "a.tar", m)
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    bad_import(store, gz, 6, "digest")


def test_blob_with_wrong_size(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    key = f"blobs/sha256/{built.layer_descriptors[0].digest.hex}"
    m[key] = m[key] + b"tail"
    bad_import(store, write_tar(tmp_path / "a.tar", m), 6, "bytes")


def test_truncated_tar(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    path = write_tar(tmp_path / "a.tar", layout_members(built, BAD_NAME))
    with tarfile.open(path) as tf:
        cut = tf.getmember("index.json").offset_data + 10  # the last member, cut short
    path.write_bytes(path.read_bytes()[:cut])
    bad_import(store, path, 2, "truncated or corrupt")


def test_truncated_gzip(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    plain = write_tar(tmp_path / "a.tar", layout_members(built, BAD_NAME))
    data = gzip.compress(plain.read_bytes())
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(data[: len(data) - 40])
    bad_import(store, gz, 2, "truncated or corrupt")


def test_decompression_bomb_stops_at_the_reserve(store: Path, built: BuiltImage,
                                                 tmp_path: Path) -> None:
    """A gzip tar whose member inflates to 1 GiB of zeros (about 1 MB compressed), with a
    reserve that leaves only 256 MiB to write: refused before the disk fills."""
    bomb = 1 << 30
    gz = tmp_path / "bomb.tar.gz"
    with open(gz, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as g, \
            tarfile.open(fileobj=g, mode="w|") as tf:
        ti = tarfile.TarInfo(f"blobs/sha256/{'0' * 64}")
        ti.size = bomb
        tf.addfile(ti, Zeros(bomb))
    st = os.statvfs(store)
    reserve = max(0, st.f_bavail * st.f_frsize - (256 << 20))
    p = run_cli(store, "import", str(gz), check=False, env={"CARGOHOLD_RESERVE": str(reserve)})
    assert p.returncode == 9, (p.stdout, p.stderr)
    assert "reserve" in p.stderr and "Traceback" not in p.stderr
    assert_untouched(store)
    ingests = list((store / "content" / "ingest").glob("*/data"))
    assert sum(f.stat().st_size for f in ingests) == 0


class Zeros:
    """A reader of ``n`` zero bytes (a bomb's payload without holding it)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_manifest_json_names_a_missing_layer(store: Path, built: BuiltImage,
                                             tmp_path: Path) -> None:
    cfg = built.read(built.config_descriptor.digest)  # type: ignore[union-attr]
    members = {
        "cfg.json": cfg,
        "manifest.json": json.dumps([{"Config": "cfg.json", "RepoTags": [BAD_NAME],
                                      "Layers": ["abc/layer.tar"]}]).encode(),
    }
    bad_import(store, write_tar(tmp_path / "d.tar", members), 4, "abc/layer.tar")


def test_duplicate_names_to_different_digests(store: Path, built: BuiltImage,
                                              other: BuiltImage, tmp_path: Path) -> None:
    a = write_tar(tmp_path / "a.tar", layout_members(built, BAD_NAME))
    b = write_tar(tmp_path / "b.tar", layout_members(other, BAD_NAME))
    p = run_cli(store, "import", str(a), str(b), check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "points at two different images" in p.stderr
    assert_untouched(store)


def test_unknown_media_type(store: Path, built: BuiltImage, tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    doc = json.loads(m["index.json"])
    doc["manifests"][0]["mediaType"] = "application/vnd.example.thing+json"
    m["index.json"] = json.dumps(doc).encode()
    bad_import(store, write_tar(tmp_path / "a.tar", m), 3, "unsupported media type")


def test_not_an_archive(store: Path, tmp_path: Path) -> None:
    f = tmp_path / "notes.tar"
    f.write_text("these are not the images you are looking for\n" * 30)
    bad_import(store, f, 2, "not an image archive")


def test_image_without_a_name_needs_base_name(store: Path, built: BuiltImage,
                                              tmp_path: Path) -> None:
    m = layout_members(built, BAD_NAME)
    doc = json.loads(m["index.json"])
    del doc["manifests"][0]["annotations"]
    m["index.json"] = json.dumps(doc).encode()
    path = write_tar(tmp_path / "a.tar", m)
    err = bad_import(store, path, 2, "has no name", "--base-name")
    assert str(path) in err
    p = run_cli(store, "import", "--base-name", "example.com/named", str(path))
    assert f"example.com/named@{built.root.digest}" in p.stdout


def test_bare_tag_with_base_name(tmp_path: Path, built: BuiltImage) -> None:
    m = layout_members(built, BAD_NAME)
    doc = json.loads(m["index.json"])
    doc["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "v7"}
    m["index.json"] = json.dumps(doc).encode()
    path = write_tar(tmp_path / "a.tar", m)
    p = run_cli(tmp_path / "s", "import", str(path), check=False)
    assert p.returncode == 2 and "bare tag(s) v7" in p.stderr
    p = run_cli(tmp_path / "s", "import", "--base-name", "example.com/team/app", str(path))
    assert "example.com/team/app:v7" in p.stdout


def test_docker_save_legacy_with_shared_layer_symlink(tmp_path: Path, built: BuiltImage) -> None:
    """`docker save` (legacy): layer dirs, a symlinked duplicate layer, repositories."""
    layer = built.layer_descriptors[0]
    tar_bytes = gzip.decompress(built.read(layer.digest))
    cfg = json.loads(built.read(built.config_descriptor.digest))  # type: ignore[union-attr]
    diff = str(Digest.from_bytes(tar_bytes))
    cfg["rootfs"]["diff_ids"] = [diff, diff]
    cfg_bytes = json.dumps(cfg).encode()
    cfg_hex = Digest.from_bytes(cfg_bytes).hex
    members = {
        "aaa/VERSION": b"1.0",
        "aaa/layer.tar": tar_bytes,
        f"{cfg_hex}.json": cfg_bytes,
        "manifest.json": json.dumps([{"Config": f"{cfg_hex}.json", "RepoTags": ["legacy:1"],
                                      "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode(),
        "repositories": b'{"legacy":{"1":"bbb"}}',
    }
    path = write_tar(tmp_path / "save.tar", members, _link("bbb/layer.tar", "../aaa/layer.tar"))
    root = tmp_path / "s"
    p = run_cli(root, "--json", "import", str(path))
    img = last_json(p)["images"][0]
    assert img["name"] == "docker.io/library/legacy:1"
    assert img["media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    inspect = run_cli(root, "--json", "images", "inspect", "docker.io/library/legacy:1").stdout
    assert "application/vnd.docker.image.rootfs.diff.tar" in inspect
    run_cli(root, "verify")
