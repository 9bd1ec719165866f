"""Build images with cargohold's builder and push them with its own push code."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from pathlib import Path

from cargohold.imagebuild.compress import EMPTY_GZIP_LAYER
from cargohold.imagebuild.entries import (
    BlockDevice,
    CharDevice,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    Opaque,
    Symlink,
    Whiteout,
)
from cargohold.imagebuild.image import (
    BuiltImage,
    ImageSpec,
    Layer,
    LayerSpec,
    RawLayer,
    build_index,
)
from cargohold.oci.reference import Reference, parse_reference
from cargohold.registry.client import RegistryClient
from cargohold.registry.push import push_image

_counter = itertools.count()


@dataclass
class Pushed:
    ref: Reference
    built: BuiltImage

    @property
    def text(self) -> str:
        return str(self.ref)


def unique_repo(prefix: str = "t") -> str:
    return f"{prefix}{next(_counter)}"


def push(host: str, spec: ImageSpec | BuiltImage, workdir: Path, *, repo: str = "",
         tag: str = "v1", chunked: bool = False) -> Pushed:
    built = spec if isinstance(spec, BuiltImage) else spec.build(workdir)
    ref = parse_reference(f"{host}/{repo or unique_repo()}:{tag}")
    push_image(RegistryClient(plain_http=True), ref, built, chunked=chunked)
    return Pushed(ref, built)


def push_index(host: str, specs: list[ImageSpec], workdir: Path, *, repo: str = "",
               media: str = "oci") -> Pushed:
    images = [s.build(workdir / f"m{i}") for i, s in enumerate(specs)]
    idx = build_index(images, workdir=workdir / "index", media=media)  # type: ignore[arg-type]
    return push(host, idx, workdir, repo=repo)


# ----------------------------------------------------------------- rootfs fixture images
#
# Layers full of what an unpacker can get wrong, for comparing merged root file systems
# (containerd's unpack vs cargohold's). Every entry has its own mtime so that a time taken
# from the wrong entry (or not set at all) shows. Parent directories are listed in each
# layer as image builders write them, except where a test is about implicit parents.

_T = 1_600_000_000
#: security.capability (vfs_cap_data revision 2, effective): cap_net_bind_service.
CAP_NET_BIND_SERVICE = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)


def _t(i: int) -> int:
    return _T + i * 1000


def whiteout_layers(workdir: Path) -> list[Layer]:
    """Four layers (gzip, zstd, uncompressed, the 32-byte empty gzip layer) of deletions:
    files, directories, opaque directories re-populated in the same layer (marker before
    and after the new entries), re-adds after deletion, dir -> file, file -> symlink,
    file -> dir, symlink -> file/dir, a whiteout and a new directory of that name in one
    layer (``w/wh-then-dir``), hardlinks whose target a later layer deletes."""
    l1: list[Entry] = [
        Dir("w", mtime=_t(1)),
        File("w/keep", b"kept\n", mtime=_t(2)),
        File("w/del-file", b"deleted\n", mtime=_t(3)),
        Dir("w/del-dir", mtime=_t(4)),
        File("w/del-dir/a", b"a\n", mtime=_t(5)),
        Dir("w/del-dir/sub", mtime=_t(6)),
        File("w/del-dir/sub/b", b"b\n", mtime=_t(7)),
        Whiteout("w/never-existed", mtime=_t(8)),
    ]
    for name in ("opq1", "opq2"):
        l1 += [
            Dir(f"w/{name}", mode=0o750, uid=7, gid=8, mtime=_t(10)),
            File(f"w/{name}/old", b"old\n", mtime=_t(11)),
            Dir(f"w/{name}/olddir", mtime=_t(12)),
            File(f"w/{name}/olddir/x", b"x\n", mtime=_t(13)),
            Dir(f"w/{name}/same", mtime=_t(14)),
            File(f"w/{name}/same/lowerchild", b"lower\n", mtime=_t(15)),
        ]
    l1 += [
        File("w/readd", b"first\n", mtime=_t(20)),
        Dir("w/readd-dir", mtime=_t(21)),
        File("w/readd-dir/old", b"old\n", mtime=_t(22)),
        Dir("w/d2f", mtime=_t(23)),
        File("w/d2f/child", b"c\n", mtime=_t(24)),
        Dir("w/d2f-wh", mtime=_t(25)),
        File("w/d2f-wh/child", b"c\n", mtime=_t(26)),
        File("w/f2l", b"file\n", mtime=_t(27)),
        File("w/f2d", b"file\n", mtime=_t(28)),
        Symlink("w/l2f", "keep", mtime=_t(29)),
        Symlink("w/l2d", "keep", mtime=_t(30)),
        File("w/wh-then-file", b"lower\n", mtime=_t(31)),
        Dir("w/wh-then-dir", mtime=_t(37)),
        File("w/wh-then-dir/old", b"lower\n", mtime=_t(38)),
        Dir("w/implicit", mode=0o711, uid=3, gid=4, mtime=_t(32)),
        File("w/implicit/a", b"a\n", mtime=_t(33)),
        File("w/implicit/b", b"b\n", mtime=_t(34)),
        Dir("w/hl", mtime=_t(35)),
        File("w/hl/orig", b"linked\n", mode=0o640, uid=5, gid=6, mtime=_t(36)),
        Hardlink("w/hl/link", "w/hl/orig", mode=0o640, uid=5, gid=6, mtime=_t(36)),
        Hardlink("w/hl/link2", "w/hl/orig", mode=0o640, uid=5, gid=6, mtime=_t(36)),
    ]
    l2: list[Entry] = [
        Dir("w", mtime=_t(101)),
        Whiteout("w/del-file", mtime=_t(102)),
        Whiteout("w/del-dir", mtime=_t(103)),
        # opaque marker first, then the new entries
        Dir("w/opq1", mode=0o755, uid=9, gid=10, mtime=_t(110)),
        Opaque("w/opq1", mtime=_t(110)),
        File("w/opq1/new", b"new\n", mtime=_t(111)),
        Dir("w/opq1/same", mtime=_t(112)),
        File("w/opq1/same/newchild", b"new\n", mtime=_t(113)),
        # the new entries first, the marker last
        Dir("w/opq2", mode=0o755, uid=9, gid=10, mtime=_t(114)),
        File("w/opq2/new", b"new\n", mtime=_t(115)),
        Dir("w/opq2/same", mtime=_t(116)),
        File("w/opq2/same/newchild", b"new\n", mtime=_t(117)),
        Opaque("w/opq2", mtime=_t(114)),
        Whiteout("w/readd", mtime=_t(120)),
        Whiteout("w/readd-dir", mtime=_t(121)),
        File("w/d2f", b"was a directory\n", mtime=_t(122)),
        Whiteout("w/d2f-wh", mtime=_t(123)),
        File("w/d2f-wh", b"was a directory (whiteout first)\n", mtime=_t(124)),
        Symlink("w/f2l", "keep", mtime=_t(125)),
        Dir("w/f2d", mtime=_t(126)),
        File("w/f2d/inside", b"i\n", mtime=_t(127)),
        File("w/l2f", b"was a symlink\n", mtime=_t(128)),
        Dir("w/l2d", mtime=_t(129)),
        File("w/l2d/inside", b"i\n", mtime=_t(130)),
        Whiteout("w/wh-then-file", mtime=_t(131)),
        File("w/wh-then-file", b"upper\n", mtime=_t(132)),
        Whiteout("w/wh-then-dir", mtime=_t(135)),
        Dir("w/wh-then-dir", mtime=_t(136)),
        File("w/wh-then-dir/new", b"upper\n", mtime=_t(137)),
        Dir("w/hl", mtime=_t(133)),
        Whiteout("w/hl/orig", mtime=_t(134)),
    ]
    l3: list[Entry] = [
        Dir("w", mtime=_t(201)),
        File("w/readd", b"second\n", mode=0o600, mtime=_t(202)),
        Dir("w/readd-dir", mode=0o700, mtime=_t(203)),
        File("w/readd-dir/new", b"new\n", mtime=_t(204)),
    ]
    empty = workdir / "empty-gzip-layer"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(EMPTY_GZIP_LAYER)
    return [
        LayerSpec(l1, compression="gzip", created_by="whiteouts: base"),
        LayerSpec(l2, compression="zstd", created_by="whiteouts: deletions"),
        LayerSpec(l3, compression="none", created_by="whiteouts: re-adds"),
        RawLayer(empty, created_by="whiteouts: empty gzip layer"),
    ]


def implicit_parent_layers() -> list[Layer]:
    """Layers writing into directories they have no entry for (as some builders do):
    the new directory in the upper layer must take its metadata from the lower one."""
    return [
        LayerSpec(
            [
                Dir("p", mtime=_t(1)),
                Dir("p/wh", mode=0o711, uid=3, gid=4, mtime=_t(2)),
                File("p/wh/a", b"a\n", mtime=_t(3)),
                File("p/wh/b", b"b\n", mtime=_t(4)),
                Dir("p/add", mode=0o1777, uid=11, gid=12, mtime=_t(5),
                    xattrs={"user.dir": b"kept"}),
                File("p/add/old", b"old\n", mtime=_t(6)),
                Dir("p/add/deep", mode=0o2750, uid=13, gid=14, mtime=_t(7)),
            ],
            created_by="implicit parents: base",
        ),
        LayerSpec(
            [
                Whiteout("p/wh/a", mtime=_t(101)),
                File("p/add/deep/new", b"new\n", mtime=_t(102)),
            ],
            compression="zstd",
            created_by="implicit parents: no parent entries",
        ),
    ]


def special_entries() -> list[Entry]:
    """Hardlinks, symlink chains and dangling links, xattrs, setuid/sticky, owners, long
    and unicode names, a fifo and devices, in one layer (pax format)."""
    long_dir = "long/" + "d" * 120
    long_name = "n" * 255
    return [
        Dir("etc", mtime=_t(1)),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mtime=_t(2)),
        Dir("bin", mtime=_t(3)),
        File("bin/prog", mode=0o755, size=200_000, seed=77, mtime=_t(4)),
        File("empty", b"", mtime=_t(5)),
        File("big.bin", size=3_000_000, seed=78, mtime=_t(6)),
        # hardlinks within the layer; link headers carry the target's metadata (as image
        # builders write them), except hl/odd-link's: the last header naming an inode wins
        Dir("hl", mtime=_t(10)),
        File("hl/orig", b"linked\n", mode=0o640, uid=12, gid=34, mtime=_t(11)),
        Hardlink("hl/l1", "hl/orig", mode=0o640, uid=12, gid=34, mtime=_t(11)),
        Hardlink("hl/l2", "hl/orig", mode=0o640, uid=12, gid=34, mtime=_t(11)),
        Hardlink("bin/prog-hl", "bin/prog", mode=0o755, mtime=_t(4)),
        File("hl/suid", b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000, mtime=_t(12)),
        Hardlink("hl/suid-link", "hl/suid", mode=0o4755, uid=1000, gid=1000, mtime=_t(12)),
        File("hl/odd", b"odd\n", mode=0o600, uid=1, gid=2, mtime=_t(13)),
        Hardlink("hl/odd-link", "hl/odd", mode=0o2711, uid=3, gid=4, mtime=_t(14)),
        # symlinks: a chain, absolute, dangling, a loop, to a directory, owned
        Dir("chain", mtime=_t(20)),
        Symlink("chain/a", "b", mtime=_t(21)),
        Symlink("chain/b", "c", mtime=_t(22)),
        Symlink("chain/c", "../etc/passwd", mtime=_t(23)),
        Symlink("chain/abs", "/etc/passwd", mtime=_t(24)),
        Symlink("chain/dangling", "does/not/exist", mtime=_t(25)),
        Symlink("chain/dangling-abs", "/nonexistent/x", mtime=_t(26)),
        Symlink("chain/loop1", "loop2", mtime=_t(27)),
        Symlink("chain/loop2", "loop1", mtime=_t(28)),
        Symlink("chain/dir", "../hl", mtime=_t(29)),
        Symlink("chain/owned", "a", uid=1000, gid=1001, mtime=_t(30)),
        Symlink("chain/long-target", "/" + "t" * 200, mtime=_t(31)),
        Symlink("chain/s", "../etc/passwd", mtime=_t(32)),
        Hardlink("chain/s-hl", "chain/s", mode=0o600, uid=9, gid=9, mtime=_t(33)),
        # xattrs
        Dir("x", mtime=_t(40), xattrs={"user.dir": b"d"}),
        File("x/user", b"u\n", mtime=_t(41),
             xattrs={"user.a": b"1", "user.b": b"\x00\xffbinary\n", "user.empty": b""}),
        File("x/cap", b"#!/bin/sh\n", mode=0o755, mtime=_t(42),
             xattrs={"security.capability": CAP_NET_BIND_SERVICE}),
        File("x/cap-owned", b"#!/bin/sh\n", mode=0o750, uid=1000, gid=1000, mtime=_t(43),
             xattrs={"security.capability": CAP_NET_BIND_SERVICE}),
        # a link header without the xattr: its chown drops the capability (containerd too)
        File("x/cap-hl", b"#!/bin/sh\n", mode=0o755, mtime=_t(44),
             xattrs={"security.capability": CAP_NET_BIND_SERVICE}),
        Hardlink("x/cap-hl-link", "x/cap-hl", mode=0o755, mtime=_t(44)),
        # modes
        Dir("modes", mtime=_t(50)),
        File("modes/suid", b"s\n", mode=0o4755, mtime=_t(51)),
        File("modes/sgid", b"s\n", mode=0o2755, mtime=_t(52)),
        File("modes/suid-sgid", b"s\n", mode=0o6711, mtime=_t(53)),
        File("modes/suid-owned", b"s\n", mode=0o4750, uid=1000, gid=1000, mtime=_t(54)),
        File("modes/none", b"s\n", mode=0o000, mtime=_t(55)),
        Dir("modes/sticky", mode=0o1777, mtime=_t(56)),
        Dir("modes/sgid-dir", mode=0o2775, gid=50, mtime=_t(57)),
        Dir("modes/ro-dir", mode=0o555, mtime=_t(58)),
        File("modes/ro-dir/inside", b"i\n", mode=0o444, mtime=_t(59)),
        # owners (2_000_000 and up do not fit the octal fields: pax uid/gid records)
        Dir("own", uid=42, gid=43, mtime=_t(60)),
        File("own/u1000", b"o\n", uid=1000, gid=1000, mtime=_t(61)),
        File("own/nobody", b"o\n", uid=65534, gid=65534, mtime=_t(62)),
        File("own/big", b"o\n", uid=2_200_000, gid=3_300_000, mtime=_t(63)),
        # names
        Dir("long", mtime=_t(70)),
        Dir(long_dir, mtime=_t(71)),
        File(f"{long_dir}/{long_name}", b"long\n", mtime=_t(72)),
        Hardlink(f"{long_dir}/hl-{long_name[:200]}", f"{long_dir}/{long_name}", mtime=_t(72)),
        Dir("names", mtime=_t(73)),
        File("names/ünïcødé.txt", b"u\n", mtime=_t(74)),
        Dir("names/日本語", mtime=_t(75)),
        File("names/日本語/ファイル", b"j\n", mtime=_t(76)),
        File("names/with space", b"s\n", mtime=_t(77)),
        Symlink("names/link-ü", "ünïcødé.txt", mtime=_t(78)),
        # special files
        Dir("dev", mtime=_t(80)),
        Fifo("dev/fifo", mode=0o620, uid=5, gid=6, mtime=_t(81)),
        CharDevice("dev/null", 1, 3, mode=0o666, mtime=_t(82)),
        CharDevice("dev/big", 260, 70_000, mode=0o600, uid=7, gid=8, mtime=_t(83)),
        BlockDevice("dev/loop0", 7, 0, mode=0o660, gid=6, mtime=_t(84)),
    ]


def special_layers() -> list[Layer]:
    """The special entries, then a GNU-format layer (long names as ././@LongLink) that
    changes metadata of lower entries and adds hardlinks to its own files."""
    long_gnu = "gnu/" + "g" * 150
    l2: list[Entry] = [
        Dir("modes", mtime=_t(150)),
        Dir("modes/sticky", mode=0o1770, uid=1, gid=2, mtime=_t(151)),
        Dir("gnu", mtime=_t(152)),
        Dir(long_gnu, mtime=_t(153)),
        File(f"{long_gnu}/{'f' * 140}", b"gnu long\n", mode=0o4711, mtime=_t(154)),
        Hardlink(f"{long_gnu}/{'h' * 140}", f"{long_gnu}/{'f' * 140}", mode=0o4711,
                 mtime=_t(154)),
        Symlink(f"{long_gnu}/link", "/" + "l" * 150, mtime=_t(155)),
        Dir("etc", mtime=_t(156)),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnew:x:1:1::/:/bin/false\n",
             mode=0o600, mtime=_t(157)),
    ]
    return [
        LayerSpec(special_entries(), compression="gzip", created_by="specials"),
        LayerSpec(l2, compression="zstd", tar_format="gnu", created_by="specials: gnu"),
    ]


def rootfs_images(workdir: Path) -> dict[str, ImageSpec]:
    """Images whose merged root file systems are compared entry by entry, by name."""
    return {
        "whiteouts": ImageSpec(whiteout_layers(workdir / "whiteouts"),
                               name="rootfs/whiteouts"),
        "implicit-parents": ImageSpec(implicit_parent_layers(), name="rootfs/implicit"),
        "specials": ImageSpec(special_layers(), name="rootfs/specials", media="docker"),
        "specials-one-layer": ImageSpec(
            [LayerSpec(special_entries(), compression="none", created_by="specials")],
            name="rootfs/specials-one-layer",
        ),
    }
