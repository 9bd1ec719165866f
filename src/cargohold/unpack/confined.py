"""Root-confined paths: a layer's names resolved inside the target directory, never outside.

Every path is opened component by component with ``openat(O_NOFOLLOW|O_DIRECTORY)`` from a
file descriptor of the root (:class:`Tree`); nothing is created through a path string.  The
applier (:mod:`.apply`) writes layers through it, and :mod:`cargohold.runtime.users` reads a
rootfs's ``/etc/passwd`` through it.  What the applier does with each kind of name:

=====================================  ====================================================
entry                                  what happens
=====================================  ====================================================
absolute name ``/etc/x``               made relative: ``target/etc/x`` (containerd does this)
``a/../b``                             cleaned lexically to ``b``
``../x``, ``a/../../x``                refused: UnsafeContentError (containerd clamps)
symlink met as a *parent* component    followed *within* target, like containerd's
                                       ``fs.RootPath`` / ``openat2(RESOLVE_IN_ROOT)``: an
                                       absolute link target starts at ``target``, ``..``
                                       stops at ``target``; so ``evil -> /etc`` then
                                       ``evil/passwd`` writes ``target/etc/passwd``.  More
                                       than 40 links on one path: UnsafeContentError
symlink as the *last* component        never followed: it is replaced (removed) by the entry
symlink targets (``ln -s /etc/x``)     stored verbatim (absolute links are normal)
hardlink name                          cleaned like any name (absolute -> relative, escaping
                                       ``..`` refused); its parents resolved within target
hardlink to a missing path, to a dir,  UnsafeContentError (a hardlink only ever joins two
or to ``..``-escaping path             paths inside target; the final component is linked,
                                       not followed: ``linkat`` without FOLLOW)
parent component is a file             InvalidInputError (containerd: ENOTDIR)
name with a NUL byte / bad header      InvalidInputError (also: a NUL in an xattr name or
                                       a link target, a negative size, a uid/gid, time or
                                       device number out of range, a PAX record whose
                                       length or number is not plain decimal digits)
whiteout ``.wh.``/``.wh..``/``.wh...`` UnsafeContentError (containerd: invalid whiteout)
``trusted.overlay.*`` xattrs           dropped (a layer must not forge overlayfs metadata)
=====================================  ====================================================
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cargohold.errors import InvalidInputError, UnsafeContentError

#: Longest entry or link name accepted (PATH_MAX; also bounds the directory depth).
MAX_NAME = 4096
#: Symlinks followed while resolving one path (the kernel's limit).
MAX_SYMLINKS = 40
#: Directory fds kept open between entries.
_FD_CACHE = 64

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def clean_name(name: bytes) -> tuple[bytes, ...]:
    """Path components relative to the root; absolute names are made relative."""
    if len(name) > MAX_NAME:
        raise InvalidInputError(f"layer tar: entry name of {len(name)} bytes (limit {MAX_NAME})")
    if b"\0" in name:
        raise InvalidInputError(f"layer tar: entry name {name!r} contains a NUL byte")
    parts: list[bytes] = []
    for comp in name.split(b"/"):
        if not comp or comp == b".":
            continue
        if comp == b"..":
            if not parts:
                raise UnsafeContentError(
                    f"layer entry {show_name(name)} escapes the layer root with '..'"
                )
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


def not_a_directory(path: tuple[bytes, ...]) -> InvalidInputError:
    """The error for entries put below ``path``, which is not a directory."""
    return InvalidInputError(
        f"layer: {show_name(path)} is not a directory but the layer puts entries below it"
    )


def show_name(name: bytes | tuple[bytes, ...]) -> str:
    if isinstance(name, tuple):
        name = b"/".join(name)
    return repr(name.decode("utf-8", "backslashreplace"))


#: Called to create a missing directory: (parent fd, name, resolved path).
_MkdirHook = Callable[[int, bytes, tuple[bytes, ...]], None]
#: Whether a non-directory met as a parent may be replaced by a directory (a whiteout this
#: layer created: ``.wh.a`` then ``a/b``).
_ReplaceableHook = Callable[[tuple[bytes, ...]], bool]


class Tree:
    """Directory fds of the target, opened component by component without following links.

    ``opendir`` resolves a path within the root (symlinks among the parents are followed with
    the root as ``/``), optionally creating missing directories, and caches the result.
    """

    def __init__(self, target: Path, on_mkdir: _MkdirHook, replaceable: _ReplaceableHook) -> None:
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache: dict[tuple[bytes, ...], int] = {}
        self.on_mkdir = on_mkdir
        self.replaceable = replaceable

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root_fd)

    def trim(self) -> None:
        if len(self.cache) > _FD_CACHE:
            for key in list(self.cache)[: len(self.cache) - _FD_CACHE // 2]:  # oldest first
                os.close(self.cache.pop(key))

    def invalidate(self, path: tuple[bytes, ...]) -> None:
        """Forget cached fds at or below ``path`` (it was removed or replaced)."""
        n = len(path)
        for key in [k for k in self.cache if k[:n] == path]:
            os.close(self.cache.pop(key))

    def opendir(
        self, parts: tuple[bytes, ...], *, create: bool, follow: bool = True
    ) -> tuple[int, tuple[bytes, ...]] | None:
        """(fd, resolved path) of the directory ``parts``; the fd belongs to the cache.

        None when it does not exist (and ``create`` is false) or, with ``follow`` false, when
        a component is a symlink.  Every directory opened on the way is cached (least
        recently used first out, between entries only: see ``trim``).
        """
        cache = self.cache
        if not parts:
            return self.root_fd, parts
        fd = cache.pop(parts, None)
        if fd is not None:
            cache[parts] = fd  # most recently used
            return fd, parts
        i = len(parts) - 1
        while i > 0 and parts[:i] not in cache:
            i -= 1
        cur = list(parts[:i])
        fd = cache[parts[:i]] if i else self.root_fd
        todo = list(reversed(parts[i:]))
        links = 0
        while todo:
            comp = todo.pop()
            if comp == b"..":
                if cur:
                    cur.pop()
                up = tuple(cur)
                res = self.opendir(up, create=False, follow=False)
                if res is None:
                    raise InvalidInputError(f"layer: {show_name(up)} changed while applying")
                fd = res[0]
                continue
            cur.append(comp)
            key = tuple(cur)
            cfd = cache.get(key)
            if cfd is not None:
                fd = cfd
                continue
            try:
                fd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                self.on_mkdir(fd, comp, key)
                fd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode) and create and self.replaceable(key):
                    os.unlink(comp, dir_fd=fd)
                    self.on_mkdir(fd, comp, key)
                    fd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                    cache[key] = fd
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise not_a_directory(key) from None
                if not follow:
                    return None
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafeContentError(
                        f"layer: too many levels of symbolic links resolving {show_name(parts)}"
                    ) from None
                link = os.readlink(comp, dir_fd=fd)
                cur.pop()
                if link.startswith(b"/"):
                    cur = []
                    fd = self.root_fd
                todo.extend(reversed([c for c in link.split(b"/") if c and c != b"."]))
                continue
            cache[key] = fd
        return fd, tuple(cur)

