"""cargohold.imagebuild: entries -> tar -> compressed blobs -> config/manifest/index."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.errors import CargoholdError, InvalidInputError, NotFoundError
from cargohold.imagebuild import (
    EMPTY_GZIP_LAYER,
    EMPTY_GZIP_LAYER_DIGEST,
    EMPTY_TAR,
    EMPTY_TAR_DIGEST,
    BlockDevice,
    CharDevice,
    Compression,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    LayerSpec,
    Media,
    Opaque,
    Raw,
    RawLayer,
    Symlink,
    TarFormat,
    Whiteout,
    build_image,
    build_index,
    compress,
    compress_bytes,
    entries_from_directory,
    generate,
    generated_bytes,
    iter_tar,
    samples,
    schema1_manifest,
    tamper_diff_ids,
    tamper_layer_digest,
    tamper_layer_size,
    tamper_omit_blob,
    tar_bytes,
    write_tar,
)
from cargohold.imagebuild.image import BuiltImage
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Platform
from cargohold.oci.digest import Digest
from tests.rig.needs import missing


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def member_data(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def decompress(blob: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        out = []
        while blob:
            obj = zstandard.ZstdDecompressor().decompressobj()
            out.append(obj.decompress(blob))
            blob = obj.unused_data
        return b"".join(out)
    return blob


def count_frames(blob: bytes, compression: str) -> int:
    n = 0
    while blob:
        obj = (
            zstandard.ZstdDecompressor().decompressobj()
            if compression == "zstd"
            else zlib.decompressobj(31)
        )
        obj.decompress(blob)
        assert obj.eof
        blob = obj.unused_data
        n += 1
    return n


XATTRS = {"user.comment": b"hello", "security.capability": b"\x01\x00\x00\x02\xff\x00"}

ALL_KINDS: list[Entry] = [
    Dir("etc", mode=0o750, uid=1, gid=2, mtime=1_700_000_000),
    File("etc/conf", b"key=value\n", mode=0o600, uid=1000, gid=1001, mtime=1_600_000_000),
    File("etc/caps", b"x", xattrs=XATTRS),
    File("bin/tool", mode=0o4755, size=5000, seed=3),
    Symlink("etc/link", "../bin/tool", uid=5, gid=6),
    Hardlink("etc/hard", "etc/conf", mode=0o600),
    Whiteout("usr/gone"),
    Whiteout("rootfile"),
    Opaque("var/cache"),
    Fifo("run/fifo", mode=0o620),
    CharDevice("dev/null", 1, 3),
    BlockDevice("dev/sda", 8, 0, mode=0o640),
]


# --------------------------------------------------------------------------- empty layer


def test_empty_gzip_layer_is_the_well_known_blob() -> None:
    assert len(EMPTY_GZIP_LAYER) == 32
    assert sha256(EMPTY_GZIP_LAYER) == EMPTY_GZIP_LAYER_DIGEST
    assert EMPTY_GZIP_LAYER_DIGEST == (
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    )
    assert gzip.decompress(EMPTY_GZIP_LAYER) == EMPTY_TAR == bytes(1024)
    assert sha256(EMPTY_TAR) == EMPTY_TAR_DIGEST
    assert members(EMPTY_TAR) == []
    assert tar_bytes([]) == EMPTY_TAR


# --------------------------------------------------------------------------- tar writer


def test_tar_members_have_exact_fields() -> None:
    data = tar_bytes(ALL_KINDS)
    got = {m.name: m for m in members(data)}
    assert list(got) == [
        "etc",
        "etc/conf",
        "etc/caps",
        "bin/tool",
        "etc/link",
        "etc/hard",
        "usr/.wh.gone",
        ".wh.rootfile",
        "var/cache/.wh..wh..opq",
        "run/fifo",
        "dev/null",
        "dev/sda",
    ]
    d = got["etc"]
    assert (d.type, d.mode, d.uid, d.gid, d.mtime) == (tarfile.DIRTYPE, 0o750, 1, 2, 1_700_000_000)
    f = got["etc/conf"]
    assert (f.type, f.mode, f.uid, f.gid, f.mtime, f.size) == (
        tarfile.REGTYPE,
        0o600,
        1000,
        1001,
        1_600_000_000,
        10,
    )
    assert (f.uname, f.gname) == ("", "")
    assert member_data(data, "etc/conf") == b"key=value\n"
    caps = got["etc/caps"]
    xattrs = {
        k.removeprefix("SCHILY.xattr."): v.encode("utf-8", "surrogateescape")
        for k, v in caps.pax_headers.items()
        if k.startswith("SCHILY.xattr.")
    }
    assert xattrs == XATTRS
    tool = got["bin/tool"]
    assert tool.mode == 0o4755 and tool.size == 5000
    assert member_data(data, "bin/tool") == generated_bytes(3, 5000)
    link = got["etc/link"]
    assert (link.type, link.linkname, link.mode, link.uid, link.gid) == (
        tarfile.SYMTYPE,
        "../bin/tool",
        0o777,
        5,
        6,
    )
    hard = got["etc/hard"]
    assert (hard.type, hard.linkname, hard.size) == (tarfile.LNKTYPE, "etc/conf", 0)
    for wh in ("usr/.wh.gone", ".wh.rootfile", "var/cache/.wh..wh..opq"):
        assert got[wh].type == tarfile.REGTYPE and got[wh].size == 0
    assert got["run/fifo"].type == tarfile.FIFOTYPE and got["run/fifo"].mode == 0o620
    null = got["dev/null"]
    assert (null.type, null.devmajor, null.devminor, null.mode) == (tarfile.CHRTYPE, 1, 3, 0o666)
    sda = got["dev/sda"]
    assert (sda.type, sda.devmajor, sda.devminor, sda.mode) == (tarfile.BLKTYPE, 8, 0, 0o640)


def test_tar_layout_is_blocks_then_two_zero_blocks() -> None:
    data = tar_bytes([File("a", b"x" * 700), Dir("d")])
    # header + 2 data blocks + header + end-of-archive; no padding to a 10 KiB record
    assert len(data) == 512 * 4 + 1024
    assert data.endswith(bytes(1024))
    assert data[512 * 4 - 512 : 512 * 4 - 412].rstrip(b"\0") == b"d/"
    # ustar magic and empty uname/gname in a plain header
    assert data[257:265] == b"ustar\x0000"
    assert data[265:329] == bytes(64)


def test_same_entries_same_bytes_and_iter_tar_matches() -> None:
    a = tar_bytes(ALL_KINDS)
    b = tar_bytes(list(ALL_KINDS))
    assert a == b
    assert b"".join(iter_tar(ALL_KINDS)) == a
    sink = io.BytesIO()
    assert write_tar(ALL_KINDS, sink) == len(a)
    assert sink.getvalue() == a
    assert tar_bytes([*ALL_KINDS[1:], ALL_KINDS[0]]) != a  # order is kept, not sorted


LONG = "deep/" + "/".join(f"component{i:03d}" for i in range(20)) + "/file.txt"
LONG_TARGET = "/" + "t" * 150
UNICODE = "ünïcödé/файл-名前.txt"


def test_long_and_unicode_names_pax() -> None:
    entries: list[Entry] = [File(LONG, b"long"), Symlink("ln", LONG_TARGET), File(UNICODE, b"u")]
    data = tar_bytes(entries, format="pax")
    got = members(data)
    assert [m.name for m in got] == [LONG, "ln", UNICODE]
    assert got[0].pax_headers["path"] == LONG
    assert got[1].linkname == LONG_TARGET and got[1].pax_headers["linkpath"] == LONG_TARGET
    assert got[2].pax_headers["path"] == UNICODE
    assert b"././@PaxHeader" in data and b"././@LongLink" not in data
    assert member_data(data, LONG) == b"long"


def test_long_and_unicode_names_gnu() -> None:
    entries: list[Entry] = [File(LONG, b"long"), Symlink("ln", LONG_TARGET), File(UNICODE, b"u")]
    data = tar_bytes(entries, format="gnu")
    got = members(data)
    assert [m.name for m in got] == [LONG, "ln", UNICODE]
    assert got[1].linkname == LONG_TARGET
    assert all(not m.pax_headers for m in got)
    assert b"././@LongLink" in data and b"././@PaxHeader" not in data
    # the first header is the L (long name) entry, with GNU magic
    assert data[:13] == b"././@LongLink" and data[156:157] == b"L"
    assert data[257:265] == b"ustar  \x00"
    assert UNICODE.encode() in data  # raw UTF-8 in the name field, no extension


def test_ustar_uses_prefix_and_refuses_what_does_not_fit() -> None:
    mid = "deep/" + "/".join(f"component{i:03d}" for i in range(12)) + "/file.txt"
    assert 100 < len(mid) < 256
    data = tar_bytes([File(mid, b"x")], format="ustar")
    assert [m.name for m in members(data)] == [mid]
    assert b"././@" not in data
    assert data[345:500].rstrip(b"\0") != b""  # the prefix field is used
    with pytest.raises(InvalidInputError, match="too long"):
        tar_bytes([File("x" * 101, b"")], format="ustar")
    with pytest.raises(InvalidInputError, match="too long"):
        tar_bytes([File(LONG, b"")], format="ustar")
    with pytest.raises(InvalidInputError, match="xattrs"):
        tar_bytes([File("a", b"", xattrs={"user.a": b"b"})], format="ustar")
    with pytest.raises(InvalidInputError, match="xattrs"):
        tar_bytes([File("a", b"", xattrs={"user.a": b"b"})], format="gnu")
    with pytest.raises(InvalidInputError, match="does not fit"):
        tar_bytes([File("a", b"", uid=1 << 22)], format="ustar")


def test_big_numbers_pax_records_and_gnu_base256() -> None:
    entry = File("big", b"x", uid=3_000_000, gid=4_000_000, mtime=1 << 34)
    pax = tar_bytes([entry], format="pax")
    (m,) = members(pax)
    assert (m.uid, m.gid, m.mtime) == (3_000_000, 4_000_000, 1 << 34)
    assert m.pax_headers["uid"] == "3000000" and m.pax_headers["mtime"] == str(1 << 34)
    gnu = tar_bytes([entry], format="gnu")
    (g,) = members(gnu)
    assert (g.uid, g.gid, g.mtime) == (3_000_000, 4_000_000, 1 << 34)
    assert gnu[108] & 0x80  # uid field in base-256
    assert not g.pax_headers


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
            min_size=1,
            max_size=120,
        ).filter(lambda s: s not in (".", "..")),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    fmt=st.sampled_from(["pax", "gnu"]),
    body=st.binary(max_size=2000),
)
def test_any_name_round_trips(names: list[str], fmt: TarFormat, body: bytes) -> None:
    paths = [f"dir/{n}" for n in names]
    data = tar_bytes([File(p, body) for p in paths], format=fmt)
    assert len(data) % 512 == 0
    got = members(data)
    assert [m.name for m in got] == paths
    assert member_data(data, paths[-1]) == body


# --------------------------------------------------------------------------- hostile entries


def test_hostile_entries_are_written_verbatim() -> None:
    entries: list[Entry] = [
        File("../escape", b"1"),
        File("/etc/passwd", b"2"),
        Symlink("etc", "/etc"),
        File("etc/shadow", b"through the link"),
        Hardlink("shadow", "/etc/shadow"),
        Hardlink("up", "../../outside"),
        Dir("/abs-dir"),
        Raw("benign", b"0", b"x", pax={"path": "../pax-escape"}),
        Raw("weird", b"Z", b"", mode=0o7777),
        Raw(b"raw-\xff-bytes", b"0", b"y"),
    ]
    data = tar_bytes(entries)
    got = members(data)
    assert [(m.name, m.type, m.linkname) for m in got] == [
        ("../escape", tarfile.REGTYPE, ""),
        ("/etc/passwd", tarfile.REGTYPE, ""),
        ("etc", tarfile.SYMTYPE, "/etc"),
        ("etc/shadow", tarfile.REGTYPE, ""),
        ("shadow", tarfile.LNKTYPE, "/etc/shadow"),
        ("up", tarfile.LNKTYPE, "../../outside"),
        ("/abs-dir", tarfile.DIRTYPE, ""),
        ("../pax-escape", tarfile.REGTYPE, ""),
        ("weird", b"Z", ""),
        ("raw-\udcff-bytes", tarfile.REGTYPE, ""),
    ]
    # the header of the PAX-renamed member still says "benign"
    assert b"benign\0" in data
    assert data[:10] == b"../escape\0"


def test_raw_size_lie_and_hostile_samples() -> None:
    data = tar_bytes([Raw("liar", b"0", b"short", size=1 << 20)])
    assert len(data) == 512 + 512 + 1024  # content as given, header claims 1 MiB
    assert data[124:136] == b"%011o\0" % (1 << 20)
    for name, entries in samples.hostile_entries().items():
        assert tar_bytes(entries).endswith(bytes(1024)), name


# --------------------------------------------------------------------------- generated content


def test_generated_content_is_deterministic_and_streams_by_position() -> None:
    a = generated_bytes(7, 3 << 20)
    assert a == generated_bytes(7, 3 << 20)
    assert generated_bytes(8, 1 << 20) != a[: 1 << 20]
    assert generated_bytes(7, 100) == a[:100]  # prefix-stable
    middle = b"".join(generate(7, 1 << 20, start=(1 << 20) - 1000))
    assert middle == a[(1 << 20) - 1000 : (2 << 20) - 1000]
    assert all(len(c) <= 1 << 20 for c in generate(7, 3 << 20))


def test_generated_content_compresses_like_binaries() -> None:
    data = generated_bytes(11, 16 << 20)
    gz = len(data) / len(compress_bytes(data, "gzip"))
    zs = len(data) / len(compress_bytes(data, "zstd"))
    assert 1.7 < gz < 3.5, gz
    assert 1.7 < zs < 3.5, zs
    assert len(set(data[: 4 << 20])) == 256  # not text only


def test_entry_validation() -> None:
    with pytest.raises(InvalidInputError):
        File("a", b"content", size=10)
    with pytest.raises(InvalidInputError):
        File("a", size=-1)
    with pytest.raises(InvalidInputError):
        Raw("a", b"00")
    with pytest.raises(InvalidInputError, match="format"):
        tar_bytes([], format="zip")  # type: ignore[arg-type]


def test_large_layer_memory_stays_flat(tmp_path: Path) -> None:
    """A 200 MB generated file through tar + gzip + sha256 without holding it."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from cargohold.imagebuild import File, LayerSpec, build_image, entries\n"
        "entries._pool()\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "img = build_image([LayerSpec([File('big.bin', size=200_000_000, seed=5)])],\n"
        "                  workdir=Path(sys.argv[1]))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(base, peak, img.layer_descriptors[0].size)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    base_kb, peak_kb, blob_size = (int(x) for x in out.split())
    assert blob_size > 40_000_000  # the layer really was written
    assert peak_kb - base_kb < 48 * 1024, f"RSS grew by {(peak_kb - base_kb) // 1024} MiB"


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_round_trip_and_diff_id(tmp_path: Path, compression: Compression) -> None:
    entries = [*ALL_KINDS, File("data.bin", size=3_000_000, seed=9)]
    img = build_image(
        [LayerSpec(entries, compression=compression)],
        workdir=tmp_path,
    )
    (desc,) = img.layer_descriptors
    blob = img.read(desc.digest)
    assert sha256(blob) == str(desc.digest) and len(blob) == desc.size
    tar = tar_bytes(entries)
    assert decompress(blob, compression) == tar
    assert str(img.diff_ids[0]) == sha256(tar)
    assert img.config_json()["rootfs"] == {"type": "layers", "diff_ids": [sha256(tar)]}
    assert mt.layer_compression(desc.media_type) == compression
    if compression == "gzip":
        assert blob[:4] == b"\x1f\x8b\x08\x00"  # no FNAME/FEXTRA flags
        assert blob[4:8] == bytes(4)  # mtime 0
    if compression == "none":
        assert desc.digest == img.diff_ids[0]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_multi_frame_streams_decode(tmp_path: Path, compression: Compression) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(tar_bytes([File("f", size=2_000_000, seed=1), File("g", b"tail")]))
    one = tmp_path / "one"
    many = tmp_path / "many"
    compress(src, one, compression)
    compress(src, many, compression, frames=5)
    assert count_frames(one.read_bytes(), compression) == 1
    assert count_frames(many.read_bytes(), compression) == 5
    assert decompress(many.read_bytes(), compression) == src.read_bytes()
    again = tmp_path / "again"
    compress(src, again, compression, frames=5)
    assert again.read_bytes() == many.read_bytes()
    # a pre-made multi-frame blob imported as a layer gets the diff_id of all frames
    imported = build_image([many], workdir=tmp_path / "raw")
    assert str(imported.diff_ids[0]) == sha256(src.read_bytes())
    assert mt.layer_compression(imported.layer_descriptors[0].media_type) == compression
    # the same through a layer spec: a frame per 500 kB of tar
    img = build_image(
        [
            LayerSpec(
                [File("f", size=2_000_000, seed=1)], compression=compression, frame_size=500_000
            )
        ],
        workdir=tmp_path / "img",
    )
    blob = img.read(img.layer_descriptors[0].digest)
    assert count_frames(blob, compression) == 5  # 2_001_920 tar bytes / 500_000
    assert sha256(decompress(blob, compression)) == str(img.diff_ids[0])


def test_zlib_engine_matches_content(tmp_path: Path) -> None:
    data = generated_bytes(2, 500_000)
    a = compress_bytes(data, "gzip", gzip_engine="zlib")
    assert gzip.decompress(a) == data
    assert a == compress_bytes(data, "gzip", gzip_engine="zlib")
    assert a[4:8] == bytes(4) and a[3] == 0


# --------------------------------------------------------------------------- images


def _spec_layers() -> list[LayerSpec]:
    return [
        LayerSpec([Dir("a"), File("a/x", b"x" * 1000, mode=0o755)]),
        LayerSpec([File("a/big", size=1_500_000, seed=4)], compression="zstd"),
        LayerSpec([Whiteout("a/x")], compression="none"),
    ]


def test_build_is_deterministic(tmp_path: Path) -> None:
    def build(workdir: Path) -> BuiltImage:
        return build_image(
            _spec_layers(), workdir=workdir, cmd=["sh"], env={"A": "1"}, labels={"k": "v"}
        )

    one = build(tmp_path / "1")
    two = build(tmp_path / "2")
    assert one.root == two.root
    assert one.blobs_in_push_order() == two.blobs_in_push_order()
    for d in one.blobs_in_push_order():
        assert one.read(d.digest) == two.read(d.digest)
    # a different label changes the config and manifest but not the layers
    three = build_image(_spec_layers(), workdir=tmp_path / "3", labels={"k": "w"})
    assert three.layer_descriptors == one.layer_descriptors
    assert three.root.digest != one.root.digest


def test_build_is_deterministic_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from cargohold.imagebuild import samples\n"
        "print(samples.small_images()['app-b'].build(Path(sys.argv[1])).digest)\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / seed)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
        digests.add(out)
    digests.add(str(samples.small_images()["app-b"].build(tmp_path / "here").digest))
    assert len(digests) == 1, digests


@pytest.mark.parametrize(
    ("media", "compression", "layer_type", "manifest_type", "config_type"),
    [
        ("oci", "gzip", mt.OCI_LAYER_GZIP, mt.OCI_MANIFEST, mt.OCI_CONFIG),
        ("oci", "zstd", mt.OCI_LAYER_ZSTD, mt.OCI_MANIFEST, mt.OCI_CONFIG),
        ("oci", "none", mt.OCI_LAYER, mt.OCI_MANIFEST, mt.OCI_CONFIG),
        ("docker", "gzip", mt.DOCKER_LAYER_GZIP, mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG),
        ("docker", "zstd", mt.OCI_LAYER_ZSTD, mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG),
        ("docker", "none", mt.DOCKER_LAYER, mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG),
    ],
)
def test_manifest_media_types(
    tmp_path: Path,
    media: Media,
    compression: Compression,
    layer_type: str,
    manifest_type: str,
    config_type: str,
) -> None:
    img = build_image(
        [LayerSpec([File("f", b"x")], compression=compression)],
        workdir=tmp_path,
        media=media,
        platform=Platform("linux", "arm64", "v8"),
        entrypoint=["/f"],
        working_dir="/w",
        user="1:2",
    )
    assert img.root.media_type == manifest_type
    doc = img.json()
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == manifest_type
    assert doc["config"]["mediaType"] == config_type
    assert [layer["mediaType"] for layer in doc["layers"]] == [layer_type]
    assert doc["layers"][0]["digest"] == str(img.layer_descriptors[0].digest)
    assert doc["config"]["digest"] == str(img.config_descriptor.digest)  # type: ignore[union-attr]
    cfg = img.config_json()
    assert (cfg["os"], cfg["architecture"], cfg["variant"]) == ("linux", "arm64", "v8")
    assert cfg["config"] == {"Entrypoint": ["/f"], "WorkingDir": "/w", "User": "1:2"}
    assert len(cfg["history"]) == 1 and cfg["created"] == "1970-01-01T00:00:00Z"
    # canonical JSON: what is stored is exactly the compact sorted encoding
    raw = img.read(img.root.digest)
    assert (
        raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_layer_media_can_differ_from_image_media(tmp_path: Path) -> None:
    img = build_image(
        [
            LayerSpec([File("a", b"a")], media="docker"),
            LayerSpec([File("b", b"b")], media_type=mt.OCI_LAYER_ND_GZIP),
        ],
        workdir=tmp_path,
    )
    assert [d.media_type for d in img.layer_descriptors] == [
        mt.DOCKER_LAYER_GZIP,
        mt.OCI_LAYER_ND_GZIP,
    ]
    assert img.root.media_type == mt.OCI_MANIFEST


def _check_push_order(img: BuiltImage) -> None:
    order = img.blobs_in_push_order()
    pos = {d.digest: i for i, d in enumerate(order)}
    assert len(pos) == len(order), "duplicates in push order"
    for d in order:
        assert img.path(d.digest).stat().st_size == d.size
        if mt.is_manifest(d.media_type):
            doc = img.json(d.digest)
            for ref in [doc["config"], *doc["layers"]]:
                assert pos[Digest.parse(ref["digest"])] < pos[d.digest]
        if mt.is_index(d.media_type):
            for ref in img.json(d.digest)["manifests"]:
                assert pos[Digest.parse(ref["digest"])] < pos[d.digest]
    assert order[-1].digest == img.root.digest


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_index_has_one_entry_per_platform(tmp_path: Path, media: Media) -> None:
    specs = samples.multiarch_images(media=media)
    images = [s.build(tmp_path) for s in specs]
    idx = build_index(images, workdir=tmp_path, media=media)
    want = mt.OCI_INDEX if media == "oci" else mt.DOCKER_MANIFEST_LIST
    assert idx.root.media_type == want and idx.is_index
    doc = idx.json()
    assert doc["mediaType"] == want and doc["schemaVersion"] == 2
    assert [e["platform"] for e in doc["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "arm", "os": "linux", "variant": "v7"},
    ]
    assert [e["digest"] for e in doc["manifests"]] == [str(i.digest) for i in images]
    assert [e["mediaType"] for e in doc["manifests"]] == [i.root.media_type for i in images]
    assert len({i.digest for i in images}) == 3
    assert idx.image_for(Platform("linux", "arm", "v7")) is images[2]
    _check_push_order(idx)
    order = idx.blobs_in_push_order()
    # shared base layer once; kinds grouped: layers, configs, manifests, index
    kinds = [mt.kind(d.media_type) for d in order]
    assert kinds == sorted(kinds, key=["layer", "config", "manifest", "index"].index)
    assert kinds.count("layer") == 4 and kinds.count("manifest") == 3


def test_blob_store_dedupes_shared_layers(tmp_path: Path) -> None:
    imgs = {k: v.build(tmp_path) for k, v in samples.small_images().items()}
    base = imgs["app-a"].layer_descriptors[0].digest
    assert imgs["app-b"].layer_descriptors[0].digest == base
    assert imgs["app-docker"].layer_descriptors[0].digest == base
    assert imgs["app-docker"].layer_descriptors[0].media_type == mt.DOCKER_LAYER_GZIP
    assert imgs["tiny"].total_size() < 10_000
    assert 1_000_000 < imgs["app-b"].total_size() < 5_000_000
    stored = list((tmp_path / "blobs" / "sha256").iterdir())
    total = {d.digest for i in imgs.values() for d in i.blobs_in_push_order()}
    assert len(stored) == len(total)
    for img in imgs.values():
        _check_push_order(img)


def test_raw_layers_are_imported(tmp_path: Path) -> None:
    first = build_image(_spec_layers(), workdir=tmp_path / "a")
    paths = [first.path(d.digest) for d in first.layer_descriptors]
    again = build_image(
        [paths[0], RawLayer(paths[1]), RawLayer(paths[2], compression="none")],
        workdir=tmp_path / "b",
    )
    assert again.layer_descriptors == first.layer_descriptors
    assert again.diff_ids == first.diff_ids
    assert again.root == first.root  # same layers, same default history: same image
    tagged = build_image(
        [RawLayer(paths[0], diff_id=Digest.from_bytes(b"claimed"))], workdir=tmp_path / "c"
    )
    assert tagged.diff_ids == (Digest.from_bytes(b"claimed"),)


def test_directory_tree_becomes_entries(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "sub" / "exec").chmod(0o751)
    (root / "sub" / "deeper" / "big").write_bytes(generated_bytes(1, 3_000_000))
    os.link(root / "a.txt", root / "sub" / "a-hard")
    (root / "sub" / "ln").symlink_to("../a.txt")
    os.mkfifo(root / "fifo")
    os.utime(root / "a.txt", (1_000_000, 1_000_000))

    entries = list(entries_from_directory(root, "opt/app", mtime=None))
    names = [getattr(e, "path", None) for e in entries]
    assert names[:2] == ["opt", "opt/app"]
    assert names[2:] == [
        "opt/app/a.txt",
        "opt/app/fifo",
        "opt/app/sub",
        "opt/app/sub/a-hard",
        "opt/app/sub/deeper",
        "opt/app/sub/deeper/big",
        "opt/app/sub/exec",
        "opt/app/sub/ln",
    ]
    data = tar_bytes(entries)
    got = {m.name: m for m in members(data)}
    assert got["opt/app/sub/a-hard"].type == tarfile.LNKTYPE
    assert got["opt/app/sub/a-hard"].linkname == "opt/app/a.txt"
    assert got["opt/app/sub/ln"].linkname == "../a.txt"
    assert got["opt/app/fifo"].type == tarfile.FIFOTYPE
    assert got["opt/app/sub/exec"].mode == 0o751
    assert got["opt/app/a.txt"].mtime == 1_000_000
    big = root / "sub" / "deeper" / "big"
    assert member_data(data, "opt/app/sub/deeper/big") == big.read_bytes()
    # files are referenced, not loaded
    (file_entry,) = [e for e in entries if isinstance(e, File) and e.path.endswith("big")]
    assert file_entry.source == big and file_entry.content == b""
    # fixed mtimes make the tar reproducible
    fixed = tar_bytes(entries_from_directory(root, "opt/app", mtime=0))
    assert fixed == tar_bytes(entries_from_directory(root, "opt/app", mtime=0))
    assert {m.mtime for m in members(fixed)} == {0}


def test_source_file_that_shrinks_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"12345")
    entry = File("f", size=10, source=src)
    with pytest.raises(InvalidInputError, match="shrank"):
        tar_bytes([entry])


# --------------------------------------------------------------------------- broken images


def test_tamper_layer_size(tmp_path: Path) -> None:
    img = build_image(_spec_layers(), workdir=tmp_path)
    bad = tamper_layer_size(img, 1, delta=7)
    assert bad.root.digest != img.root.digest
    assert bad.json()["layers"][1]["size"] == img.layer_descriptors[1].size + 7
    assert bad.layer_descriptors[1].size == img.layer_descriptors[1].size + 7
    # what gets pushed is the real blob with its real size
    pushed = {d.digest: d.size for d in bad.blobs_in_push_order()}
    assert pushed[img.layer_descriptors[1].digest] == img.layer_descriptors[1].size
    assert bad.blobs_in_push_order()[-1].digest == bad.root.digest


def test_tamper_layer_digest(tmp_path: Path) -> None:
    img = build_image(_spec_layers(), workdir=tmp_path)
    swapped = tamper_layer_digest(img, 0)
    layer0 = swapped.json()["layers"][0]
    assert layer0["digest"] == EMPTY_GZIP_LAYER_DIGEST and layer0["size"] == 32
    assert Digest.parse(EMPTY_GZIP_LAYER_DIGEST) in {
        d.digest for d in swapped.blobs_in_push_order()
    }
    # the blob downloads fine but its diff_id is not the config's
    assert sha256(gzip.decompress(swapped.read(EMPTY_GZIP_LAYER_DIGEST))) != str(
        swapped.diff_ids[0]
    )
    ghost = Digest.from_bytes(b"no such blob")
    missing = tamper_layer_digest(img, 0, digest=ghost)
    assert missing.json()["layers"][0]["digest"] == str(ghost)
    assert ghost not in {d.digest for d in missing.blobs_in_push_order()}


def test_tamper_diff_ids_and_omit(tmp_path: Path) -> None:
    img = build_image(_spec_layers(), workdir=tmp_path)
    fewer = tamper_diff_ids(img, drop=1)
    assert len(fewer.config_json()["rootfs"]["diff_ids"]) == 2 == len(fewer.diff_ids)
    assert len(fewer.json()["layers"]) == 3
    assert fewer.json()["config"]["digest"] == str(fewer.config_descriptor.digest)  # type: ignore[union-attr]
    more = tamper_diff_ids(img, add=2)
    assert len(more.config_json()["rootfs"]["diff_ids"]) == 5
    wrong = tamper_diff_ids(img, replace_at={0: Digest.from_bytes(b"x")})
    assert wrong.diff_ids[0] == Digest.from_bytes(b"x") and wrong.diff_ids[1:] == img.diff_ids[1:]
    _check_push_order(fewer)

    gone = img.layer_descriptors[2].digest
    omitted = tamper_omit_blob(img, gone)
    assert omitted.root == img.root
    assert gone not in {d.digest for d in omitted.blobs_in_push_order()}
    assert len(omitted.blobs_in_push_order()) == len(img.blobs_in_push_order()) - 1
    # omission inside an index child carries to the index
    idx = build_index([omitted], workdir=tmp_path)
    assert gone not in {d.digest for d in idx.blobs_in_push_order()}


@pytest.mark.parametrize("signed", [False, True])
def test_schema1_manifest(tmp_path: Path, signed: bool) -> None:
    img = schema1_manifest(tmp_path, signed=signed)
    want = mt.DOCKER_SCHEMA1_SIGNED if signed else mt.DOCKER_SCHEMA1
    assert img.root.media_type == want
    doc = img.json()
    assert doc["schemaVersion"] == 1 and doc["fsLayers"][0]["blobSum"] == EMPTY_GZIP_LAYER_DIGEST
    assert ("signatures" in doc) is signed
    order = img.blobs_in_push_order()
    assert [d.digest for d in order] == [Digest.parse(EMPTY_GZIP_LAYER_DIGEST), img.root.digest]
    with pytest.raises(CargoholdError):
        mt.refuse_unsupported_manifest(img.root.media_type)


# --------------------------------------------------------------------------- samples


def test_busybox_sample(tmp_path: Path) -> None:
    if not samples.BUSYBOX_PATH.is_file():
        msg = "busybox-static is not installed (apt-get install busybox-static)"
        missing(msg)
    img = samples.busybox().build(tmp_path)
    tar = gzip.decompress(img.read(img.layer_descriptors[0].digest))
    got = {m.name: m for m in members(tar)}
    assert got["bin/busybox"].size == samples.BUSYBOX_PATH.stat().st_size
    assert got["bin/busybox"].mode == 0o755
    assert got["bin/sh"].issym() and got["bin/sh"].linkname == "busybox"
    assert got["tmp"].mode == 0o1777
    assert member_data(tar, "bin/busybox") == samples.BUSYBOX_PATH.read_bytes()
    assert img.config_json()["config"]["Cmd"] == ["sh"]


def test_busybox_sample_names_the_package_when_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as err:
        samples.busybox_layer(tmp_path / "no-busybox")
    assert "busybox-static" in err.value.hint_text()
    not_static = tmp_path / "script"
    not_static.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(InvalidInputError, match="statically linked"):
        samples.busybox_layer(not_static)


def test_big_and_critical_samples_are_specs(tmp_path: Path) -> None:
    spec = samples.big_image(6_000_000, layers=2)
    assert len(spec.layers) == 2
    total = 0
    for layer in spec.layers:
        assert isinstance(layer, LayerSpec)
        total += sum(e.content_size() for e in layer.iter_entries() if isinstance(e, File))
    assert total == 6_000_000
    img = spec.build(tmp_path)
    assert len(img.diff_ids) == 2
    assert 1_500_000 < sum(d.size for d in img.layer_descriptors) < 4_000_000
    crit = samples.critical_image().build(tmp_path)
    assert crit.total_size() < 1_000_000
    assert crit.config_json()["config"]["Labels"] == {"io.cargohold.sample": "critical"}
