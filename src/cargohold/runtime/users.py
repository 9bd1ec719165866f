"""The image's user as numbers: ``User`` from /etc/passwd and /etc/group of a rootfs.

The files are read with root-confined ``openat`` walks (the applier's directory tree: every
component opened ``O_NOFOLLOW``, symlinks resolved with the rootfs as ``/``), so a hostile
rootfs (``/etc/passwd -> /host/etc/shadow`` or ``../../..``) cannot make it read outside.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cargohold.errors import CargoholdError, InvalidInputError
from cargohold.unpack.confined import MAX_SYMLINKS, Tree


def _no_mkdir(fd: int, name: bytes, key: tuple[bytes, ...]) -> None:
    raise AssertionError("read-only walk")  # pragma: no cover - create=False never calls it


def read_in_root(root: Path, path: str, limit: int = 4 << 20) -> bytes | None:
    """The bytes of the regular file ``path`` inside ``root``, resolving symlinks as if
    ``root`` were ``/`` (never leaving it); None if it does not exist or is not a file."""
    parts = tuple(c for c in os.fsencode(path).split(b"/") if c and c != b".")
    if not parts:
        return None
    try:
        tree = Tree(root, _no_mkdir, lambda key: False)
    except OSError:
        return None
    try:
        for _ in range(MAX_SYMLINKS + 1):
            res = tree.opendir(parts[:-1], create=False)
            if res is None:
                return None
            dfd, resolved = res
            name = parts[-1]
            if name == b"..":
                return None
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    return None
                link = os.readlink(name, dir_fd=dfd)
                base = () if link.startswith(b"/") else resolved
                parts = base + tuple(c for c in link.split(b"/") if c and c != b".")
                if not parts:
                    return None
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                with os.fdopen(fd, "rb", closefd=False) as f:
                    return f.read(limit)
            finally:
                os.close(fd)
        return None
    except (OSError, CargoholdError):  # a vanished component, a symlink loop
        return None
    finally:
        tree.close()


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def resolve_user(rootfs: Path, text: str) -> User:
    """The image config's ``User`` (``""``, ``uid``, ``name``, ``uid:gid``, ``name:group``...)
    as numbers, from the rootfs's /etc/passwd and /etc/group (as containerd does)."""
    passwd = _table(read_in_root(rootfs, "/etc/passwd"))
    groups = _table(read_in_root(rootfs, "/etc/group"))
    user, _, group = (text or "0").partition(":")
    entry: list[str] | None = None
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in passwd if len(e) >= 4 and e[2] == user), None)
    else:
        entry = next((e for e in passwd if len(e) >= 4 and e[0] == user), None)
        if entry is None or not entry[2].isdigit():
            raise InvalidInputError(f"user {user!r} is not in the image's /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and len(entry) >= 6 and entry[5] else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in groups if len(e) >= 3 and e[0] == group), None)
            if g is None or not g[2].isdigit():
                raise InvalidInputError(f"group {group!r} is not in the image's /etc/group")
            gid = int(g[2])
    extra: list[int] = []
    if entry is not None and not group:
        name = entry[0]
        for g in groups:
            if (len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")
                    and int(g[2]) != gid and int(g[2]) not in extra):
                extra.append(int(g[2]))
    return User(uid, gid, tuple(extra), home)
