"""Named sample images for the README demo, tests and benchmarks.

Everything here returns specs (:class:`ImageSpec` / :class:`LayerSpec` / entries);
nothing is built or pushed. Build with ``spec.build(workdir)``; push with
``cargohold.registry``. All samples are deterministic: same spec, same digests.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cargohold.errors import InvalidInputError, NotFoundError
from cargohold.imagebuild.compress import Compression
from cargohold.imagebuild.entries import (
    CharDevice,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
)
from cargohold.imagebuild.image import ImageSpec, LayerSpec, Media
from cargohold.oci.descriptor import Platform

BUSYBOX_PATH = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
#: Applets linked as /bin/<name> -> busybox.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "cat", "chmod", "cp", "date", "echo", "env", "false", "find", "grep",
    "head", "hostname", "id", "kill", "ln", "ls", "mkdir", "mv", "printf", "ps", "pwd",
    "rm", "sed", "sleep", "sort", "tail", "tee", "test", "touch", "true", "uname", "wc",
    "which",
)  # fmt: skip
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LINUX_AMD64 = Platform("linux", "amd64")

_PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"


def _skeleton() -> list[Entry]:
    return [
        Dir("bin"),
        Dir("etc"),
        File("etc/passwd", _PASSWD),
        File("etc/group", _GROUP),
        File("etc/hostname", b"sample\n"),
        Dir("root", mode=0o700),
        Dir("tmp", mode=0o1777),
        Dir("usr"),
        Dir("usr/bin"),
        Dir("var"),
        Dir("var/tmp", mode=0o1777),
    ]


# --------------------------------------------------------------------------- busybox


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        if is64:
            phoff, phentsize, phnum = (
                struct.unpack_from(end + "Q", ident, 32)[0],
                *struct.unpack_from(end + "HH", ident, 54),
            )
        else:
            phoff, phentsize, phnum = (
                struct.unpack_from(end + "I", ident, 28)[0],
                *struct.unpack_from(end + "HH", ident, 42),
            )
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_layer(
    path: Path = BUSYBOX_PATH,
    *,
    applets: tuple[str, ...] = BUSYBOX_APPLETS,
    compression: Compression = "gzip",
) -> LayerSpec:
    """A root filesystem with a static busybox at /bin/busybox and applet symlinks.

    Raises NotFoundError naming Debian's ``busybox-static`` if ``path`` is missing,
    InvalidInputError if it is not a statically linked ELF (the dynamic ``busybox``
    package would not run in an image without a libc).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            f"{path} not found: the busybox sample needs a static busybox binary",
            hint=f"install Debian's {BUSYBOX_PACKAGE} package (apt-get install {BUSYBOX_PACKAGE})",
        )
    if not _is_static_elf(path):
        raise InvalidInputError(
            f"{path} is not a statically linked ELF executable",
            hint=f"install Debian's {BUSYBOX_PACKAGE} package instead of busybox",
        )
    size = path.stat().st_size

    def entries() -> list[Entry]:
        out = _skeleton()
        out.append(File("bin/busybox", mode=0o755, size=size, source=path))
        out.extend(Symlink(f"bin/{name}", "busybox") for name in applets)
        return out

    return LayerSpec(entries, compression=compression, created_by="busybox-static rootfs")


def busybox(
    *,
    path: Path = BUSYBOX_PATH,
    media: Media = "oci",
    compression: Compression = "gzip",
    name: str = "samples/busybox",
) -> ImageSpec:
    """A runnable busybox image (cmd ``sh``) from the host's busybox-static binary."""
    return ImageSpec(
        [busybox_layer(path, compression=compression)],
        name=name,
        media=media,
        platform=LINUX_AMD64,
        cmd=["sh"],
        env=[PATH_ENV],
        labels={"org.opencontainers.image.title": "busybox sample"},
    )


# --------------------------------------------------------------------------- small images


def base_layer(compression: Compression = "gzip") -> LayerSpec:
    """A ~1 MB "distro" base layer shared by several small samples (same blob)."""
    entries: list[Entry] = [
        *_skeleton(),
        File("etc/os-release", b'ID=cargohold-sample\nNAME="cargohold sample base"\n'),
        Dir("usr/lib"),
        Dir("usr/share"),
        Dir("usr/share/doc"),
        Symlink("lib", "usr/lib"),
        File("usr/lib/libsample.so.1.0", mode=0o755, size=400_000, seed=1001),
        Symlink("usr/lib/libsample.so.1", "libsample.so.1.0"),
        File("usr/lib/libother.so.2", mode=0o755, size=250_000, seed=1002),
        File("usr/bin/tool", mode=0o755, size=300_000, seed=1003),
        Hardlink("usr/bin/tool-alias", "usr/bin/tool", mode=0o755),
        File("usr/share/doc/README", b"sample base layer\n" * 200),
    ]
    return LayerSpec(entries, compression=compression, created_by="sample base")


def _app_layer(app: str, size: int, seed: int, compression: Compression = "gzip") -> LayerSpec:
    return LayerSpec(
        [
            Dir("opt"),
            Dir(f"opt/{app}"),
            File(f"opt/{app}/{app}", mode=0o755, size=size, seed=seed),
            File(f"opt/{app}/config.toml", f'name = "{app}"\nport = 8080\n'.encode()),
            Dir(f"opt/{app}/data", uid=1000, gid=1000),
        ],
        compression=compression,
        created_by=f"sample app {app}",
    )


def tiny(name: str = "samples/tiny", media: Media = "oci") -> ImageSpec:
    """A few KB: one small layer, no base."""
    return ImageSpec(
        [
            LayerSpec(
                [
                    Dir("etc"),
                    File("etc/motd", b"hello from cargohold\n"),
                    File("hello.txt", b"hello\n" * 100),
                ]
            )
        ],
        name=name,
        media=media,
        cmd=["/bin/sh"],
    )


def small_images(media: Media = "oci") -> dict[str, ImageSpec]:
    """Several small images (few KB to a few MB); app-a, app-b, app-docker and
    deleter share the base layer (the same blob)."""
    base = base_layer()
    return {
        "tiny": tiny(media=media),
        "app-a": ImageSpec(
            [base, _app_layer("app-a", 300_000, 2001)],
            name="samples/app-a",
            media=media,
            entrypoint=["/opt/app-a/app-a"],
            env=[PATH_ENV],
        ),
        "app-b": ImageSpec(
            [base, _app_layer("app-b", 2_500_000, 2002, compression="zstd")],
            name="samples/app-b",
            media=media,
            entrypoint=["/opt/app-b/app-b"],
            env=[PATH_ENV],
            user="1000:1000",
            working_dir="/opt/app-b",
        ),
        "app-docker": ImageSpec(
            [base, _app_layer("app-c", 500_000, 2003)],
            name="samples/app-docker",
            media="docker",
            cmd=["/opt/app-c/app-c"],
        ),
        "deleter": ImageSpec(
            [
                base,
                LayerSpec(
                    [
                        Whiteout("usr/bin/tool-alias"),
                        Opaque("usr/share/doc"),
                        File("usr/share/doc/NEW", b"replaced docs\n"),
                    ],
                    created_by="sample whiteouts",
                ),
            ],
            name="samples/deleter",
            media=media,
        ),
    }


def critical_image(media: Media = "oci") -> ImageSpec:
    """A small image meant to be marked critical (must always fit the budget)."""
    return ImageSpec(
        [
            LayerSpec(
                [
                    Dir("usr"),
                    Dir("usr/bin"),
                    File("usr/bin/node-agent", mode=0o755, size=600_000, seed=3001),
                    Dir("etc"),
                    File("etc/node-agent.conf", b"level = info\n"),
                ],
                created_by="critical agent",
            )
        ],
        name="samples/critical",
        media=media,
        entrypoint=["/usr/bin/node-agent"],
        labels={"io.cargohold.sample": "critical"},
    )


def big_layer_entries(
    size: int, seed: int, directory: str, file_size: int = 16 << 20
) -> list[Entry]:
    """Entries of about ``size`` generated bytes: a few hundred small files plus
    files of ``file_size`` (the last one smaller)."""
    out: list[Entry] = [Dir(directory), Dir(f"{directory}/small")]
    small_total = 0
    for i in range(min(400, size // 40_000)):
        n = 512 + (i * 7919) % 8192
        out.append(File(f"{directory}/small/f{i:04d}", size=n, seed=seed * 1_000_003 + i))
        small_total += n
    left = size - small_total
    i = 0
    while left > 0:
        n = min(file_size, left)
        out.append(
            File(
                f"{directory}/blob{i:03d}.bin",
                mode=0o755,
                size=n,
                seed=seed * 1_000_003 + 500_000 + i,
            )
        )
        left -= n
        i += 1
    return out


def big_image(
    size: int = 300_000_000,
    *,
    layers: int = 2,
    compression: Compression = "gzip",
    media: Media = "oci",
    seed: int = 0,
    name: str = "samples/big",
) -> ImageSpec:
    """A big image of ``size`` uncompressed content bytes (default ~300 MB) spread over
    ``layers`` layers of generated, 2-3x compressible content."""
    if layers < 1 or size < 0:
        raise InvalidInputError("big_image needs layers >= 1 and size >= 0")
    per = [size // layers + (1 if i < size % layers else 0) for i in range(layers)]
    specs = [
        LayerSpec(
            big_layer_entries(n, seed * 100 + i + 1, f"big/layer{i}"),
            compression=compression,
            created_by=f"big layer {i}",
        )
        for i, n in enumerate(per)
    ]
    return ImageSpec(specs, name=name, media=media, cmd=["/bin/sh"])


def multiarch_images(media: Media = "oci") -> list[ImageSpec]:
    """Small images for linux/amd64, linux/arm64/v8 and linux/arm/v7 (for an index),
    sharing the base layer and each with a platform-specific app layer."""
    plats = [
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
        Platform("linux", "arm", "v7"),
    ]
    base = base_layer()
    return [
        ImageSpec(
            [
                base,
                LayerSpec(
                    [Dir("etc"), File("etc/arch", f"{p}\n".encode())], created_by=f"arch {p}"
                ),
            ],
            name="samples/multiarch",
            media=media,
            platform=p,
        )
        for p in plats
    ]


# --------------------------------------------------------------------------- hostile layers


def hostile_entries() -> dict[str, list[Entry]]:
    """Layers a safe extractor must refuse or contain, by name. Written verbatim."""
    return {
        "dotdot": [File("../escaped", b"x"), File("a/../../escaped2", b"x")],
        "absolute": [File("/etc/cargohold-pwned", b"x")],
        "symlink-escape": [
            Symlink("etc", "/etc"),
            File("etc/cargohold-pwned", b"written through a symlink\n"),
        ],
        "symlink-relative-escape": [
            Dir("a"),
            Symlink("a/up", "../../../../.."),
            File("a/up/tmp/cargohold-pwned", b"x"),
        ],
        "hardlink-escape": [Hardlink("shadow", "/etc/shadow")],
        "hardlink-dotdot": [Hardlink("passwd", "../../../etc/passwd")],
        "pax-path-escape": [Raw("benign", b"0", b"x", pax={"path": "../pax-escaped"})],
        "device": [CharDevice("dev/mem", 1, 1), Fifo("fifo")],
        "setuid": [File("suid-shell", b"#!/bin/sh\n", mode=0o4755)],
        "size-lie": [Raw("liar", b"0", b"short", size=1 << 40)],
    }
