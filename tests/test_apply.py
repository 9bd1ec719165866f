"""Layer apply (the differ): formats, metadata, whiteouts, containment, disk safety."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from isal import igzip

from cargohold.errors import (
    CargoholdError,
    DigestMismatchError,
    InvalidInputError,
    OutOfSpaceError,
    UnsafeContentError,
)
from cargohold.oci import mediatypes as mt
from cargohold.oci.digest import Digest
from cargohold.unpack import fileprocess
from cargohold.unpack.apply import apply_layer
from cargohold.unpack.decompress import open_decompressed
from cargohold.unpack.layerwriter import ApplyStats, LayerWriter
from tests.rig.needs import needs_root, require_root


@pytest.fixture(autouse=True, params=["inline", "helper", "helper-behind"])
def file_helper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here three times: small files written by the thread parsing the tar; (from
    the first one on, where the target started empty) by the helper process of
    cargohold.unpack.fileprocess; and with the helper "behind" every other batch (its
    socket full), so that the parsing thread writes those batches itself."""
    monkeypatch.setenv(fileprocess.HELPER_ENV, "0" if request.param == "inline" else "always")
    if request.param == "helper-behind":
        real = fileprocess.FileProcess._try_send
        turn = [0]

        def every_other(self: fileprocess.FileProcess, payload: bytes | bytearray) -> bool:
            turn[0] += 1
            return bool(turn[0] % 2) and real(self, payload)

        monkeypatch.setattr(fileprocess.FileProcess, "_try_send", every_other)
    return str(request.param)


# ---------------------------------------------------------------- building layers


@dataclass
class E:
    """One tar entry to write: type is file, dir, symlink, link, fifo, chr, blk."""

    name: str
    type: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "link": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def make_tar(entries: list[E], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.type]
            ti.mode = e.mode if e.mode is not None else (0o755 if e.type == "dir" else 0o644)
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime
            ti.linkname = e.link
            ti.devmajor, ti.devminor = e.dev
            if e.xattrs:
                ti.pax_headers = {
                    "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.type == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def gzip_members(data: bytes, parts: int = 1) -> bytes:
    """gzip, as ``parts`` concatenated members (what pigz-like writers produce)."""
    step = max(1, len(data) // parts)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    return b"".join(igzip.compress(c, compresslevel=1) for c in chunks)


def zstd_frames(data: bytes, parts: int = 1) -> bytes:
    step = max(1, len(data) // parts)
    cctx = zstandard.ZstdCompressor(level=3)
    return b"".join(cctx.compress(data[i : i + step]) for i in range(0, len(data), step))


def sha(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def apply_bytes(
    data: bytes,
    target: Path,
    *,
    mode: str = "flat",
    media_type: str = mt.OCI_LAYER,
    diff_id: Digest | None = None,
    reserve: int = 0,
    **kw: Any,
) -> ApplyStats:
    target.mkdir(parents=True, exist_ok=True)
    with open_decompressed(io.BytesIO(data), media_type) as stream:
        return apply_layer(
            stream,
            target,
            mode=mode,  # type: ignore[arg-type]
            diff_id=diff_id,
            reserve_bytes=reserve,
            **kw,
        )


def describe(root: Path) -> dict[str, tuple[Any, ...]]:
    """A comparable picture of a tree: type, content / link target / device per path."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes())
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = ("chr", os.major(st.st_rdev), os.minor(st.st_rdev))
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo",)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def listing(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Everything under a directory with mode, size, inode and content (to watch sentinels)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        content = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p)] = (st.st_mode, st.st_size, st.st_nlink, content)
    return out


def make_sentinel(s: Path) -> Path:
    """A directory (with a file and a subdirectory) that no layer may change."""
    s.mkdir()
    (s / "shadow").write_bytes(b"root:secret\n")
    (s / "sub").mkdir()
    (s / "sub" / "keep").write_bytes(b"keep")
    return s


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A directory outside every target whose contents must never change."""
    s = make_sentinel(tmp_path / "sentinel")
    before = listing(s)
    yield s
    assert listing(s) == before, "something was written outside the target"


# ---------------------------------------------------------------- formats and compression


def _simple_layer() -> bytes:
    return make_tar(
        [
            E("etc", "dir"),
            E("etc/hostname", data=b"box\n"),
            E("usr/bin/tool", data=b"#!/bin/sh\n" * 1000, mode=0o755),
            E("big", data=os.urandom(3 << 20)),
        ]
    )


@pytest.mark.parametrize(
    ("media_type", "encode"),
    [
        (mt.OCI_LAYER, lambda d: d),
        (mt.OCI_LAYER_GZIP, lambda d: gzip_members(d, 1)),
        (mt.DOCKER_LAYER_GZIP, lambda d: gzip_members(d, 5)),  # multi-member
        (mt.OCI_LAYER_ZSTD, lambda d: zstd_frames(d, 1)),
        (mt.OCI_LAYER_ZSTD, lambda d: zstd_frames(d, 4)),  # multi-frame
        (mt.OCI_LAYER, lambda d: gzip_members(d, 2)),  # mislabelled: magic wins (containerd)
    ],
)
def test_compressions(tmp_path: Path, media_type: str, encode: Any) -> None:
    tar = _simple_layer()
    blob = encode(tar)
    stats = apply_bytes(blob, tmp_path / "t", media_type=media_type, diff_id=sha(tar))
    assert stats.diff_id == sha(tar)
    assert stats.tar_bytes == len(tar)
    assert (tmp_path / "t/etc/hostname").read_bytes() == b"box\n"
    assert (tmp_path / "t/usr/bin/tool").read_bytes() == b"#!/bin/sh\n" * 1000
    assert (tmp_path / "t/big").stat().st_size == 3 << 20
    assert stats.files == 3


def test_decompress_reports_mismatch() -> None:
    tar = _simple_layer()
    with open_decompressed(io.BytesIO(gzip_members(tar)), mt.OCI_LAYER) as s:
        assert (s.declared, s.compression, s.mismatch) == ("none", "gzip", True)
        assert s.read(10) == tar[:10]

    class Unseekable(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            return self._b.readinto(b)

    with open_decompressed(Unseekable(zstd_frames(tar, 3)), mt.OCI_LAYER_GZIP) as s:  # type: ignore[arg-type]
        assert s.compression == "zstd"
        got = b"".join(iter(lambda: s.read(1 << 20), b""))
    assert got == tar


def test_corrupt_gzip_is_invalid_input(tmp_path: Path) -> None:
    blob = bytearray(gzip_members(_simple_layer()))
    blob[40:80] = b"\xff" * 40
    with pytest.raises(InvalidInputError):
        apply_bytes(bytes(blob), tmp_path / "t", media_type=mt.OCI_LAYER_GZIP)
    with pytest.raises(InvalidInputError):
        apply_bytes(
            gzip_members(_simple_layer())[:-5000], tmp_path / "u", media_type=mt.OCI_LAYER_GZIP
        )


def test_diff_id_mismatch(tmp_path: Path) -> None:
    tar = _simple_layer()
    with pytest.raises(DigestMismatchError):
        apply_bytes(
            gzip_members(tar), tmp_path / "t", media_type=mt.OCI_LAYER_GZIP, diff_id=sha(tar + b"x")
        )


def test_diff_id_covers_trailing_bytes(tmp_path: Path) -> None:
    """The diff_id is the digest of the whole stream: what follows end-of-archive counts."""
    tar = _simple_layer() + b"\0" * (3 << 20) + b"trailing junk"  # more than one read
    stats = apply_bytes(tar, tmp_path / "a", diff_id=sha(tar))
    assert stats.tar_bytes == len(tar)
    with pytest.raises(DigestMismatchError):
        apply_bytes(tar, tmp_path / "b", diff_id=sha(tar[: -len(b"trailing junk")]))


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        apply_bytes(b"hello world, not a tar" * 100, tmp_path / "t")
    tar = _simple_layer()
    with pytest.raises(InvalidInputError):
        apply_bytes(tar[:1500], tmp_path / "u")  # truncated inside a file


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_unicode_names(tmp_path: Path, fmt: int) -> None:
    deep = "/".join(f"directory-{i:03d}" for i in range(30))  # > 300 bytes
    uni = "ünïcødé/文件-🐳.txt"
    long_target = "/" + "t" * 180
    entries = [
        E(f"{deep}/file.txt", data=b"deep"),
        E(uni, data=b"unicode"),
        E("l" * 150, "symlink", link=long_target),
        E("hard-" + "h" * 120, "link", link=f"{deep}/file.txt"),
    ]
    apply_bytes(make_tar(entries, fmt), tmp_path / "t")
    t = tmp_path / "t"
    assert (t / deep / "file.txt").read_bytes() == b"deep"
    assert (t / uni).read_bytes() == b"unicode"
    assert os.readlink(t / ("l" * 150)) == long_target
    assert os.stat(t / ("hard-" + "h" * 120)).st_ino == os.stat(t / deep / "file.txt").st_ino


def test_ustar_prefix_and_v7_dir(tmp_path: Path) -> None:
    name = "p" * 90 + "/" + "q" * 90 + "/f"
    apply_bytes(make_tar([E(name, data=b"x")], tarfile.USTAR_FORMAT), tmp_path / "t")
    assert (tmp_path / "t" / name).read_bytes() == b"x"


# ---------------------------------------------------------------- entry types and metadata


def test_hardlinks_share_inode(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E("bin/busybox", data=b"BB" * 1000, mode=0o755),
            E("bin/sh", "link", link="bin/busybox"),
            E("bin/ls", "link", link="/bin/busybox"),  # absolute link names are root-relative
            E("usr/bin/env", "link", link="./bin/../bin/busybox"),
        ]
    )
    stats = apply_bytes(tar, tmp_path / "t")
    t = tmp_path / "t"
    ino = os.stat(t / "bin/busybox").st_ino
    for p in ("bin/sh", "bin/ls", "usr/bin/env"):
        assert os.stat(t / p).st_ino == ino
    assert os.stat(t / "bin/busybox").st_nlink == 4
    assert stats.hardlinks == 3


def test_symlink_chains_and_dangling(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E("data", "dir"),
            E("data/real", data=b"real"),
            E("a", "symlink", link="b"),
            E("b", "symlink", link="data/real"),
            E("abs", "symlink", link="/data/real"),
            E("dangling", "symlink", link="/nowhere/at/all"),
            E("up", "symlink", link="../../../../etc/passwd"),
            E("loop1", "symlink", link="loop2"),
            E("loop2", "symlink", link="loop1"),
        ]
    )
    apply_bytes(tar, tmp_path / "t")
    t = tmp_path / "t"
    assert (t / "a").read_bytes() == b"real"  # a -> b -> data/real
    assert os.readlink(t / "abs") == "/data/real"  # verbatim
    assert os.readlink(t / "dangling") == "/nowhere/at/all"
    assert os.readlink(t / "up") == "../../../../etc/passwd"
    assert os.readlink(t / "loop1") == "loop2"


@needs_root
def test_modes_owners_times(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E("tmp", "dir", mode=0o1777),
            E("sgid", "dir", mode=0o2775, uid=1000, gid=1001),
            E("sgid/f", data=b"x", mode=0o640, uid=7, gid=8),
            E("bin/su", data=b"su", mode=0o4755, uid=0, gid=0),
            E("bin/ping", data=b"p", mode=0o4711, uid=1234, gid=5678),
            E("bin/wall", data=b"w", mode=0o2755, uid=0, gid=5),
            E("ro", "dir", mode=0o555, mtime=1_500_000_000),
            E("ro/inside", data=b"i", mtime=1_400_000_000.5),
            E("link", "symlink", link="bin/su", uid=33, gid=44, mtime=1_300_000_000),
        ]
    )
    apply_bytes(tar, tmp_path / "t", mode="overlay")
    t = tmp_path / "t"

    def m(p: str) -> int:
        return stat.S_IMODE(os.lstat(t / p).st_mode)

    assert m("tmp") == 0o1777
    assert m("sgid") == 0o2775
    assert m("bin/su") == 0o4755
    assert m("bin/ping") == 0o4711  # setuid survives chown (chmod comes after)
    assert m("bin/wall") == 0o2755
    assert m("ro") == 0o555
    st = os.lstat(t / "bin/ping")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.lstat(t / "sgid/f")
    assert (st.st_uid, st.st_gid) == (7, 8)
    st = os.lstat(t / "link")
    assert (st.st_uid, st.st_gid) == (33, 44)
    assert st.st_mtime == 1_300_000_000
    assert os.lstat(t / "ro").st_mtime == 1_500_000_000  # set after its children were written
    assert os.lstat(t / "ro/inside").st_mtime_ns == 1_400_000_000_500_000_000


def test_not_root_skips_ownership(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E("f", data=b"x", uid=1234, gid=5678, mode=0o4755),
            E("d", "dir", mode=0o555),
            E("d/g", data=b"y"),
        ]
    )
    stats = apply_bytes(tar, tmp_path / "t", is_root=False)
    assert stats.ownership_skipped >= 2
    assert os.lstat(tmp_path / "t/f").st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(tmp_path / "t/d").st_mode) == 0o555
    assert (tmp_path / "t/d/g").read_bytes() == b"y"


# A v2 file capability: cap_net_bind_service=ep.
CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")


@needs_root
def test_xattrs(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E(
                "f",
                data=b"x",
                mode=0o755,
                xattrs={
                    "user.comment": b"hello",
                    "security.capability": CAP_NET_BIND,
                    "trusted.thing": b"\x00\x01binary\xff",
                },
            ),
            E("d", "dir", xattrs={"user.dir": b"yes"}),
            E(
                "forged",
                "dir",
                xattrs={"trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc"},
            ),
            E("s", "symlink", link="f", xattrs={"user.nope": b"symlinks cannot hold user.*"}),
        ]
    )
    stats = apply_bytes(tar, tmp_path / "t")
    t = tmp_path / "t"
    assert os.getxattr(t / "f", "user.comment") == b"hello"
    assert os.getxattr(t / "f", "security.capability") == CAP_NET_BIND  # survives chown
    assert os.getxattr(t / "f", "trusted.thing") == b"\x00\x01binary\xff"
    assert os.getxattr(t / "d", "user.dir") == b"yes"
    assert os.listxattr(t / "forged") == []  # a layer cannot forge overlay metadata
    assert stats.xattrs_skipped == 3


def test_xattrs_not_root(tmp_path: Path) -> None:
    tar = make_tar([E("f", data=b"x", xattrs={"trusted.x": b"1", "user.u": b"2"})])
    stats = apply_bytes(tar, tmp_path / "t", is_root=False)
    assert "trusted.x" not in os.listxattr(tmp_path / "t/f")
    assert stats.xattrs_skipped >= 1


@needs_root
def test_xattr_unsupported_fs_is_dropped(tmp_path: Path) -> None:
    """xattrs the file system refuses (an unknown namespace: EOPNOTSUPP; user.* on tmpfs
    before Linux 6.6) are dropped and counted, not fatal."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        tar = make_tar([E("f", data=b"x", xattrs={"user.a": b"1", "bogus.ns": b"2"})])
        stats = apply_bytes(tar, mnt / "t")
        assert (mnt / "t/f").read_bytes() == b"x"
        assert stats.xattrs_skipped >= 1  # bogus.ns: EOPNOTSUPP everywhere
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_root
def test_fifo_and_devices(tmp_path: Path) -> None:
    tar = make_tar(
        [
            E("dev", "dir"),
            E("dev/null", "chr", mode=0o666, dev=(1, 3)),
            E("dev/loop0", "blk", mode=0o660, dev=(7, 0), gid=6),
            E("run/pipe", "fifo", mode=0o620),
        ]
    )
    apply_bytes(tar, tmp_path / "t")
    t = tmp_path / "t"
    st = os.lstat(t / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(t / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_gid == 6
    st = os.lstat(t / "run/pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


def test_devices_skipped_when_not_root(tmp_path: Path) -> None:
    tar = make_tar([E("null", "chr", dev=(1, 3)), E("p", "fifo")])
    stats = apply_bytes(tar, tmp_path / "t", is_root=False)
    assert stats.devices_skipped == 1
    assert not (tmp_path / "t/null").exists()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "t/p").st_mode)


def test_replacements_flat(tmp_path: Path) -> None:
    """An entry replaces what is there unless both are directories (then: metadata only)."""
    t = tmp_path / "t"
    apply_bytes(
        make_tar(
            [
                E("d", "dir"),
                E("d/old", data=b"o"),
                E("f", data=b"file"),
                E("g", "dir"),
                E("g/x", data=b"x"),
                E("s", "symlink", link="/x"),
            ]
        ),
        t,
    )
    apply_bytes(
        make_tar(
            [
                E("d", "dir", mode=0o700),
                E("f", "dir"),
                E("f/in", data=b"in"),
                E("g", data=b"now a file"),
                E("s", data=b"not a link"),
            ]
        ),
        t,
    )
    assert (t / "d/old").read_bytes() == b"o"  # merged
    assert stat.S_IMODE(os.lstat(t / "d").st_mode) == 0o700
    assert (t / "f/in").read_bytes() == b"in"
    assert (t / "g").read_bytes() == b"now a file"
    assert (t / "s").read_bytes() == b"not a link"


def test_same_name_twice_in_one_layer(tmp_path: Path) -> None:
    t = tmp_path / "t"
    apply_bytes(
        make_tar([E("f", data=b"one"), E("f", data=b"two"), E("h", "link", link="f")]),
        t,
        mode="overlay" if os.geteuid() == 0 else "flat",
    )
    assert (t / "f").read_bytes() == b"two"
    assert os.stat(t / "h").st_ino == os.stat(t / "f").st_ino


# ---------------------------------------------------------------- whiteouts (one layer)


@needs_root
def test_overlay_whiteout_representation(tmp_path: Path) -> None:
    t = tmp_path / "t"
    tar = make_tar(
        [
            E("a/.wh.gone", data=b""),
            E("b", "dir"),
            E("b/.wh..wh..opq"),
            E("b/new", data=b"n"),
            E("c/.wh..wh..opq"),  # opaque marker before (without) its directory entry
            E(".wh.x"),
            E("x", "dir"),  # whiteout then directory in one layer: opaque directory
            E("x/y", data=b"y"),
            E("keep", data=b"k"),
            E(".wh.keep"),  # same layer: a whiteout only hides lower layers
            E(".wh..wh.plnk"),  # AUFS metadata: ignored
        ]
    )
    stats = apply_bytes(tar, t, mode="overlay")
    st = os.lstat(t / "a/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(t / "b", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(t / "c", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(t / "x", "trusted.overlay.opaque") == b"y"
    assert (t / "keep").read_bytes() == b"k"
    assert not any(p.name.startswith(".wh.") for p in t.rglob("*"))
    assert stats.whiteouts == 3 and stats.opaques == 2


def test_flat_whiteouts(tmp_path: Path) -> None:
    t = tmp_path / "t"
    apply_bytes(
        make_tar(
            [
                E("a/f1", data=b"1"),
                E("a/f2", data=b"2"),
                E("b/x", data=b"x"),
                E("c/old", data=b"o"),
                E("c/sub/deep", data=b"d"),
                E("c/sub/deeper/z", data=b"z"),
                E("e/old", data=b"o"),
                E("e/sub/old", data=b"o"),
                E("e/sub/dir/old", data=b"o"),
            ]
        ),
        t,
    )
    apply_bytes(
        make_tar(
            [
                E("a/.wh.f1"),
                E(".wh.b"),
                E("c", "dir"),
                E("c/.wh..wh..opq"),
                E("c/new", data=b"n"),
                E("c/sub/fresh", data=b"f"),  # implicit parent c/sub: kept, its lower children go
                E(".wh.missing"),  # nothing to delete: fine
                E("n", data=b"n"),
                E(".wh.n"),  # same layer: kept
                E("e/sub/fresh", data=b"f"),  # the opaque marker comes after the new entries:
                E("e/.wh..wh..opq"),  # e/sub survives (holds a new file), its lower files do not
            ]
        ),
        t,
    )
    assert describe(t) == {
        "a": ("dir",),
        "a/f2": ("file", b"2"),
        "e": ("dir",),
        "e/sub": ("dir",),
        "e/sub/fresh": ("file", b"f"),
        "c": ("dir",),
        "c/new": ("file", b"n"),
        "c/sub": ("dir",),
        "c/sub/fresh": ("file", b"f"),
        "n": ("file", b"n"),
    }


# ---------------------------------------------------------------- containment


def _assert_unsafe(tmp_path: Path, entries: list[E], **kw: Any) -> UnsafeContentError:
    with pytest.raises(UnsafeContentError) as ei:
        apply_bytes(make_tar(entries), tmp_path / "target", **kw)
    return ei.value


@pytest.mark.parametrize("mode", ["flat", "overlay"])
def test_dotdot_escape_refused(tmp_path: Path, sentinel: Path, mode: str) -> None:
    if mode == "overlay":
        require_root("overlay")
    rel = os.path.relpath(sentinel, tmp_path / "target")
    for name in (f"{rel}/pwned", "../pwned", "a/../../pwned", "./../x"):
        with pytest.raises(UnsafeContentError):
            apply_bytes(make_tar([E(name, data=b"evil")]), tmp_path / "target", mode=mode)
    with pytest.raises(UnsafeContentError):
        apply_bytes(
            make_tar([E("ok", data=b"x"), E("h", "link", link=f"{rel}/shadow")]),
            tmp_path / "target2",
            mode=mode,
        )
    assert not (tmp_path / "pwned").exists()


def test_absolute_names_are_made_relative(tmp_path: Path, sentinel: Path) -> None:
    t = tmp_path / "target"
    apply_bytes(
        make_tar(
            [
                E(f"{sentinel}/pwned", data=b"evil"),
                E("/etc/x", data=b"x"),
                E("//double//slash", data=b"d"),
            ]
        ),
        t,
    )
    assert (t / str(sentinel).lstrip("/") / "pwned").read_bytes() == b"evil"
    assert (t / "etc/x").read_bytes() == b"x"
    assert (t / "double/slash").read_bytes() == b"d"


def test_symlink_parent_resolved_within_root(tmp_path: Path, sentinel: Path) -> None:
    """A symlink to a directory outside, then a file written through it: lands inside."""
    t = tmp_path / "target"
    rel_up = "../" * 20 + str(sentinel).lstrip("/")
    apply_bytes(
        make_tar(
            [
                E("evil", "symlink", link=str(sentinel)),
                E("evil/pwned", data=b"evil"),
                E("evil/sub/keep", data=b"overwritten?"),
                E("evil2", "symlink", link=rel_up),
                E("evil2/pwned2", data=b"evil"),
                E("usr/lib", "dir"),
                E("lib", "symlink", link="usr/lib"),
                E("lib/libc.so", data=b"libc"),  # a legitimate use: lands in usr/lib
            ]
        ),
        t,
    )
    inside = t / str(sentinel).lstrip("/")
    assert (inside / "pwned").read_bytes() == b"evil"
    assert (inside / "sub/keep").read_bytes() == b"overwritten?"
    assert (inside / "pwned2").read_bytes() == b"evil"
    assert os.readlink(t / "evil") == str(sentinel)  # the link itself is kept verbatim
    assert (t / "usr/lib/libc.so").read_bytes() == b"libc"


def test_symlink_last_component_not_followed(tmp_path: Path, sentinel: Path) -> None:
    t = tmp_path / "target"
    apply_bytes(
        make_tar(
            [
                E("f", "symlink", link=str(sentinel / "shadow")),
                E("f", data=b"mine"),
                E("d", "symlink", link=str(sentinel)),
                E("d", "dir", mode=0o700),
            ]
        ),
        t,
    )
    assert (t / "f").read_bytes() == b"mine" and not (t / "f").is_symlink()
    assert (t / "d").is_dir() and not (t / "d").is_symlink()


def test_hardlink_outside_refused(tmp_path: Path, sentinel: Path) -> None:
    cases = [
        [E("h", "link", link=str(sentinel / "shadow"))],  # absolute: root-relative, missing
        [E("evil", "symlink", link=str(sentinel)), E("h", "link", link="evil/shadow")],
        [
            E("evil", "symlink", link="../../../../../../" + str(sentinel).lstrip("/")),
            E("h", "link", link="evil/shadow"),
        ],
        [E("h", "link", link="missing")],
        [E("d", "dir"), E("h", "link", link="d")],  # directories cannot be hardlinked
        [E("h", "link", link="/")],
    ]
    for i, entries in enumerate(cases):
        with pytest.raises(UnsafeContentError):
            apply_bytes(make_tar(entries), tmp_path / f"t{i}")
    assert os.stat(sentinel / "shadow").st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink(tmp_path: Path, sentinel: Path) -> None:
    t = tmp_path / "t"
    apply_bytes(
        make_tar([E("s", "symlink", link=str(sentinel / "shadow")), E("h", "link", link="s")]), t
    )
    assert os.readlink(t / "h") == str(sentinel / "shadow")
    assert os.lstat(t / "h").st_ino == os.lstat(t / "s").st_ino


def test_symlink_loop_in_parent_refused(tmp_path: Path) -> None:
    _assert_unsafe(
        tmp_path, [E("a", "symlink", link="b"), E("b", "symlink", link="a"), E("a/x", data=b"x")]
    )


@pytest.mark.parametrize("name", [".wh..", "a/.wh...", "a/.wh."])
def test_invalid_whiteouts_refused(tmp_path: Path, name: str) -> None:
    _assert_unsafe(tmp_path, [E("a", "dir"), E("a/f", data=b"f"), E(name)])
    assert (tmp_path / "target/a/f").exists()


def test_parent_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        apply_bytes(make_tar([E("f", data=b"x"), E("f/g", data=b"y")]), tmp_path / "t")


def test_name_limits(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        apply_bytes(make_tar([E("a/" * 3000 + "f", data=b"x")]), tmp_path / "t")


# ---------------------------------------------------------------- disk safety


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced on demand."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _zeros_layer(size: int, files: int = 1) -> bytes:
    """A gzip layer of ``files`` files of zeros totalling ``size`` bytes, compressed in
    streaming fashion (never holding the uncompressed tar)."""
    out = io.BytesIO()
    each = size // files
    with (
        igzip.IGzipFile(fileobj=out, mode="wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf,
    ):
        for i in range(files):
            ti = tarfile.TarInfo(f"zeros/{i:05d}")
            ti.size = each
            tf.addfile(ti, io.BufferedReader(_Zeros(each), 1 << 20))
    return out.getvalue()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return _zeros_layer(1 << 30)  # 1 GiB of zeros, ~1 MB compressed


def test_gzip_bomb_single_file(small_fs: Path, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 8 << 20
    t0 = time.monotonic()
    with pytest.raises(OutOfSpaceError):
        apply_bytes(gzip_bomb, small_fs / "t", media_type=mt.OCI_LAYER_GZIP, reserve=16 << 20)
    assert time.monotonic() - t0 < 10  # stopped at the header, not after inflating 1 GiB
    assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize > 16 << 20


def test_bomb_of_many_files_stops_at_reserve(small_fs: Path) -> None:
    bomb = _zeros_layer(200 << 20, files=200)  # 1 MiB files: under the per-file check
    with pytest.raises(OutOfSpaceError):
        apply_bytes(bomb, small_fs / "t", media_type=mt.OCI_LAYER_GZIP, reserve=16 << 20)
    st = os.statvfs(small_fs)
    free = st.f_bavail * st.f_frsize
    assert free >= 15 << 20, f"reserve undershot: {free} bytes free"


def test_reserve_already_crossed(small_fs: Path) -> None:
    with pytest.raises(OutOfSpaceError):
        apply_bytes(make_tar([E("f", data=b"x")]), small_fs / "t", reserve=1 << 40)


def test_real_enospc_is_out_of_space(small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LayerWriter, "_space", lambda self, upcoming=0: None)
    with pytest.raises(OutOfSpaceError):
        apply_bytes(_zeros_layer(100 << 20, files=10), small_fs / "t", media_type=mt.OCI_LAYER_GZIP)


# (The applier's throughput is measured by bench/apply.py: `python -m bench.apply`.)


# ---------------------------------------------------------------- malformed and unsupported


def _raw_header(name: str, typ: bytes, payload: bytes) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = len(payload)
    return ti.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def test_extended_header_bomb_refused(tmp_path: Path) -> None:
    value = b"v" * (6 << 20)
    data = b""
    for i in range(3):  # 18 MiB of PAX records for one entry
        rec = b"SCHILY.xattr.user.a%d=" % i + value + b"\n"
        n = len(rec) + 1 + len(str(len(rec) + 9))
        data += _raw_header("././@PaxHeader", tarfile.XHDTYPE, b"%d " % n + rec)
    data += make_tar([E("f", data=b"x")])
    with pytest.raises(InvalidInputError, match="extended headers"):
        apply_bytes(data, tmp_path / "t")
    # Each on its own is fine (the xattr itself is then too big for the file system).
    one = data[: 512 + (n + 511) // 512 * 512]
    stats = apply_bytes(one + make_tar([E("f", data=b"x")]), tmp_path / "u")
    assert (tmp_path / "u/f").read_bytes() == b"x"
    assert stats.xattrs_skipped == 1


def test_gnu_sparse_unsupported(tmp_path: Path) -> None:
    from cargohold.errors import UnsupportedError

    data = _raw_header("sparse", tarfile.GNUTYPE_SPARSE, b"") + b"\0" * 1024
    with pytest.raises(UnsupportedError, match="sparse"):
        apply_bytes(data, tmp_path / "t")
    pax = b"GNU.sparse.major=1\n"
    rec = b"%d " % (len(pax) + 3) + pax
    data = _raw_header("././@PaxHeader", tarfile.XHDTYPE, rec) + make_tar([E("f", data=b"x")])
    with pytest.raises(UnsupportedError, match="sparse"):
        apply_bytes(data, tmp_path / "u")


def test_bad_checksum(tmp_path: Path) -> None:
    data = bytearray(make_tar([E("f", data=b"x")]))
    data[0] ^= 0x20  # the name changes, the checksum does not
    with pytest.raises(InvalidInputError, match="checksum"):
        apply_bytes(bytes(data), tmp_path / "t")


# ---------------------------------------------------------------- hostile headers (issue 14, 23)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One well-formed PAX record ("LEN key=value\\n", LEN counting itself)."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(body) + len(str(n)) != n:
        n = len(body) + len(str(n))
    return str(n).encode() + body


def _with_pax(records: bytes, entries: list[E]) -> bytes:
    return _raw_header("././@PaxHeader", tarfile.XHDTYPE, records) + make_tar(entries)


def _with_header_field(start: int, end: int, value: bytes) -> bytes:
    """A one-file tar whose header field [start:end] is ``value`` (checksum redone)."""
    data = bytearray(make_tar([E("f", data=b"x")]))
    data[start:end] = value
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    return bytes(data)


def _base256(n: int, width: int) -> bytes:
    """GNU base-256 (two's complement with the high bit set) in ``width`` bytes."""
    return bytes([0xFF if n < 0 else 0x80]) + (n % (1 << (8 * (width - 1)))).to_bytes(
        width - 1, "big")


@pytest.mark.parametrize("records", [
    b"abc path=x\n",                     # the length is not a number
    b"+13 path=abc\n",                   # ... nor plain digits (int() would take these)
    b"1_3 path=abc\n",
    b" 13 path=abc\n",
    b"-13 path=abc\n",
    b"0 path=x\n",                       # shorter than its own length field
    b"99 path=x\n",                      # longer than the header
    b"12 path=abcX",                     # not ended by a newline
    b"11 pathabc\n",                     # no '='
    b"path=x\n",                         # no length at all
    _pax_record(b"size", b"0_1"),        # numbers in values: plain digits too
    _pax_record(b"size", b" 1"),
    _pax_record(b"uid", b"1e3"),
    _pax_record(b"mtime", b"1.x"),
    _pax_record(b"atime", b"now"),
])
def test_malformed_pax_records_refused(tmp_path: Path, records: bytes) -> None:
    with pytest.raises(InvalidInputError, match="PAX"):
        apply_bytes(_with_pax(records, [E("f", data=b"x")]), tmp_path / "t")
    assert not (tmp_path / "t" / "f").exists()


def test_well_formed_pax_records_apply(tmp_path: Path) -> None:
    """(The records of the test above, written correctly, are accepted.)"""
    records = (_pax_record(b"path", b"renamed") + _pax_record(b"mtime", b"1700000000.5")
               + _pax_record(b"uid", b"0"))
    apply_bytes(_with_pax(records, [E("f", data=b"x")]), tmp_path / "t")
    assert (tmp_path / "t" / "renamed").read_bytes() == b"x"
    assert os.stat(tmp_path / "t" / "renamed").st_mtime_ns == 1_700_000_000_500_000_000


@pytest.mark.parametrize(("before", "records", "entry"), [
    (b"", _pax_record(b"path", b"a\0b"), E("f", data=b"x")),
    (b"", _pax_record(b"linkpath", b"t\0arget"), E("s", "symlink", link="x")),
    (_raw_header("f", tarfile.REGTYPE, b"x"), _pax_record(b"linkpath", b"f\0g"),
     E("h", "link", link="f")),
    (b"", _pax_record(b"SCHILY.xattr.user.a\0b", b"v"), E("f", data=b"x")),
])
def test_nul_bytes_in_names_refused(
    tmp_path: Path, before: bytes, records: bytes, entry: E
) -> None:
    """A NUL in a name, a link target or an xattr name is invalid input (before the fix an
    xattr name with a NUL was a ValueError: a traceback, exit 1)."""
    with pytest.raises(InvalidInputError, match="NUL"):
        apply_bytes(before + _with_pax(records, [entry]), tmp_path / "t")


def test_nul_in_a_header_name_field_ends_the_name(tmp_path: Path) -> None:
    """ustar name fields are C strings: what follows a NUL is not part of the name."""
    apply_bytes(_with_header_field(0, 4, b"f\0zz"), tmp_path / "t")
    assert os.listdir(tmp_path / "t") == ["f"]


@pytest.mark.parametrize(("data", "match"), [
    (_with_header_field(124, 136, _base256(-1, 12)), "negative entry size"),
    (_with_pax(_pax_record(b"size", b"-1"), [E("f", data=b"x")]), "negative entry size"),
    (_with_pax(_pax_record(b"size", b"-99999"), [E("f", data=b"x")]), "negative entry size"),
    (_with_header_field(108, 116, _base256(-7, 8)), "uid/gid"),
    (_with_header_field(116, 124, _base256(1 << 40, 8)), "uid/gid"),
    (_with_pax(_pax_record(b"uid", b"-5"), [E("f", data=b"x")]), "uid/gid"),
    (_with_pax(_pax_record(b"gid", b"9" * 30), [E("f", data=b"x")]), "uid/gid"),
    (_with_header_field(136, 148, _base256(1 << 80, 12)), "time out of range"),
    (_with_header_field(136, 148, _base256(-(1 << 80), 12)), "time out of range"),
    (_with_pax(_pax_record(b"mtime", b"9" * 40), [E("f", data=b"x")]), "time out of range"),
    (_with_pax(_pax_record(b"atime", b"-" + b"9" * 30), [E("f", data=b"x")]), "time out of range"),
])
def test_negative_and_out_of_range_numbers_refused(
    tmp_path: Path, data: bytes, match: str
) -> None:
    """Before the fix, uids and times out of range were OverflowErrors (tracebacks)."""
    with pytest.raises(InvalidInputError, match=match):
        apply_bytes(data, tmp_path / "t")


# ---------------------------------------------------------------- property: containment

#: Name components and link targets of generated hostile layers; "@S" stands for the
#: sentinel's absolute path, "@R" for the relative path from the target to it.
_COMPONENTS = ["a", "b", "evil", "..", ".", "", "shadow", "sub", ".wh.shadow", ".wh.sub",
               ".wh..wh..opq", ".wh.a", "@S", "@R"]
_TARGETS = ["/", "..", "../..", "../../..", "@S", "@S/shadow", "@S/sub", "@R", "@R/shadow",
            "@R/sub", "a", "evil", "evil/shadow", "/etc", "a/../../.."]

_hostile_entries = st.lists(
    st.tuples(
        st.sampled_from(["file", "dir", "symlink", "link"]),
        st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4).map("/".join),
        st.sampled_from(_TARGETS),
        st.booleans(),  # an absolute name
    ),
    min_size=1,
    max_size=12,
)


def _hostile_tar(entries: list[tuple[str, str, str, bool]], sentinel: Path, rel: str) -> bytes:
    def sub(text: str) -> str:
        return text.replace("@S", str(sentinel)).replace("@R", rel)

    out = []
    for typ, name, target, absolute in entries:
        n = sub(name)
        n = "/" + n.lstrip("/") if absolute else n
        if not n.strip("/"):
            n = "x"
        out.append(E(n, typ, data=b"evil" if typ == "file" else b"", link=sub(target)))
    return make_tar(out)


@pytest.mark.parametrize("mode", ["flat", "overlay"])
@settings(max_examples=150, deadline=None)
@given(entries=_hostile_entries)
def test_generated_hostile_tars_never_write_outside_the_target(
    mode: str, entries: list[tuple[str, str, str, bool]]
) -> None:
    """Whatever a layer holds (escaping names, links out of the root and entries through
    them, whiteouts of outside paths, hardlinks to outside files), apply either refuses it
    (a CargoholdError) or writes inside the target only: the sentinel next to it keeps its
    contents, links and inode counts, and nothing else appears next to the target."""
    if mode == "overlay":
        require_root("overlay")
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        sentinel = make_sentinel(base / "sentinel")
        before = listing(sentinel)
        target = base / "work" / "target"
        data = _hostile_tar(entries, sentinel, os.path.relpath(sentinel, target))
        with contextlib.suppress(CargoholdError):
            apply_bytes(data, target, mode=mode)
        assert listing(sentinel) == before
        assert sorted(os.listdir(base)) == ["sentinel", "work"]
        assert os.listdir(base / "work") == ["target"]


class _SlowReader:
    """A layer stream whose reads take a while (a decompressor working on a chunk); records
    whether a read is in progress, as a decompressor closed under one would crash."""

    def __init__(self) -> None:
        self.reading = False

    def read(self, size: int = -1, /) -> bytes:
        self.reading = True
        time.sleep(0.3)  # the work of one read, not a synchronisation
        self.reading = False
        return b""


def test_interrupt_while_starting_the_read_ahead_thread_stops_it_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal held while the read-ahead thread starts is raised once it has started
    (cargohold.interrupts.held). apply_layer must not return (raise) before that thread has
    stopped: its caller then closes the stream the thread reads, and a decompressor closed
    under a read in progress crashed the interpreter (SIGSEGV of an interrupted bake)."""
    import threading

    start = threading.Thread.start

    def start_then_interrupt(self: threading.Thread) -> None:
        start(self)
        if self.name == "layer-read":
            raise KeyboardInterrupt  # what held() raises for a signal that came meanwhile

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    raw = _SlowReader()
    with pytest.raises(KeyboardInterrupt):
        apply_layer(raw, tmp_path / "t", mode="flat", diff_id=None, is_root=False,
                    prefetch=True)
    assert not raw.reading
    assert not [t for t in threading.enumerate() if t.name == "layer-read"]


def test_a_file_the_helper_cannot_create_fails_the_apply_naming_it(tmp_path: Path,
                                                                   file_helper: str) -> None:
    """An error creating a small file (here a name over the file system's 255 bytes) fails
    the apply with the entry's name, whoever created the files."""
    long = "d/" + "n" * 300
    tar = make_tar([E("d", "dir"), E("d/a", data=b"1"), E(long, data=b"2"), E("d/c", data=b"3")])
    with pytest.raises(CargoholdError) as ei:
        apply_bytes(tar, tmp_path / "t")
    assert "n" * 300 in ei.value.message and "File name too long" in ei.value.message


def test_an_interrupted_apply_leaves_no_helper_running(tmp_path: Path, file_helper: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle of a layer: the helper is killed and reaped before the apply
    returns (nothing is written once the caller removes the snapshot)."""
    started: list[fileprocess.FileProcess] = []
    real = fileprocess.FileProcess.__init__

    def record(self: fileprocess.FileProcess, *, is_root: bool) -> None:
        real(self, is_root=is_root)
        started.append(self)

    monkeypatch.setattr(fileprocess.FileProcess, "__init__", record)
    entries = [E("d", "dir")] + [E(f"d/f{i}", data=b"x" * 100) for i in range(50)]
    data = make_tar(entries)

    class Cut(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() > len(data) // 2:
                raise KeyboardInterrupt
            return super().read(min(n, 4096) if n and n > 0 else 4096)

    (tmp_path / "t").mkdir()
    with pytest.raises(KeyboardInterrupt):
        apply_layer(Cut(data), tmp_path / "t", mode="flat", diff_id=None, prefetch=False)
    if file_helper != "inline":
        assert len(started) == 1
        assert started[0].proc.returncode is not None  # reaped
    else:
        assert started == []


def test_the_helper_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """kill -9 of cargohold mid-layer: the kernel kills its file helper too
    (PR_SET_PDEATHSIG), so nothing keeps writing into the snapshot it was filling."""
    # A third process keeps the parent's end of the socket open: the helper sees no end of
    # stream, only the kernel's SIGKILL can stop it.
    script = (
        "import subprocess, sys, time\n"
        "from cargohold.unpack.fileprocess import FileProcess\n"
        "h = FileProcess(is_root=False)\n"
        "k = subprocess.Popen(['sleep', '120'], pass_fds=[h.sock.fileno()])\n"
        "print(h.proc.pid, k.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        helper, keeper = map(int, parent.stdout.readline().split())
        os.kill(helper, 0)  # running
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(helper, 0)
            except ProcessLookupError:
                break
            try:
                with open(f"/proc/{helper}/stat") as f:  # a zombie (not yet reaped) is dead
                    if f.read().split(") ")[-1].startswith("Z"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"helper {helper} still running after its parent was killed")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        with contextlib.suppress(ProcessLookupError, UnboundLocalError):
            os.kill(keeper, 9)


def test_a_batch_written_by_the_parser_names_its_failed_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the helper behind (its socket full), the parsing thread writes the batch itself;
    an error there names the entry too."""
    monkeypatch.setenv(fileprocess.HELPER_ENV, "always")
    monkeypatch.setattr(fileprocess.FileProcess, "_try_send", lambda self, payload: False)
    long = "e/" + "m" * 300
    tar = make_tar([E("d", "dir"), E("d/a", data=b"1"), E("e", "dir"), E(long, data=b"2"),
                    E("f", "dir"), E("f/c", data=b"3")])
    with pytest.raises(CargoholdError) as ei:
        apply_bytes(tar, tmp_path / "t")
    assert "m" * 300 in ei.value.message and "File name too long" in ei.value.message
    assert (tmp_path / "t/d/a").read_bytes() == b"1"  # the batch before it, written here
