"""Overlay metadata: whiteout names, the opaque xattr, and copy-up from lower layers.

A layer's ``.wh.<name>`` entries and ``.wh..wh..opq`` markers are spelled here; the applier
(:mod:`.apply`) turns them into overlayfs whiteouts / ``trusted.overlay.opaque`` or, on the
flat snapshotter, into deletions.  Directories a layer creates implicitly take mode, owner,
times and xattrs (all but ``trusted.*``) from the first lower layer that has them, as
containerd's ``WithParents`` does: :func:`lower_dir_meta` finds them, and
:func:`copy_lower_dir_metadata` applies them afterwards to layers unpacked without their
parents (parallel unpack).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from cargohold.unpack.confined import DIR_FLAGS

OPAQUE_XATTR = b"trusted.overlay.opaque"
WHITEOUT_PREFIX = b".wh."
WHITEOUT_META_PREFIX = b".wh..wh."
WHITEOUT_OPAQUE = b".wh..wh..opq"
#: xattr errors meaning "this file system or file type cannot hold it": skipped.
SKIPPABLE_XATTR_ERRNOS = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG, errno.ERANGE, errno.EINVAL}
)


def _copy_up_xattrs(fd: int) -> dict[str, bytes]:
    """The xattrs of a lower directory that containerd's ``copyUpXAttrs`` gives a directory
    it creates implicitly: all but ``trusted.*`` (overlayfs's own metadata among them)."""
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if name.startswith("trusted."):
            continue
        try:
            out[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return out


def set_copied_xattrs(fd: int, xattrs: dict[str, bytes]) -> None:
    """Set xattrs copied up from a lower directory (never replacing one already there)."""
    for name, value in xattrs.items():
        try:
            os.setxattr(fd, name, value, os.XATTR_CREATE)
        except OSError as err:
            if err.errno != errno.EEXIST and err.errno not in SKIPPABLE_XATTR_ERRNOS:
                raise


def lower_dir_stat(parents: Sequence[Path], path: Sequence[bytes]) -> os.stat_result | None:
    """The stat of directory ``path`` as the overlay of ``parents`` (top first) shows it.

    The first lower layer where ``path`` is a chain of real directories wins; a component
    that exists but is not a directory (a file, a whiteout, a symlink) hides the layers
    below, so the search stops there.  Nothing is followed.
    """
    meta = lower_dir_meta(parents, path)
    return None if meta is None else meta[0]


def lower_dir_meta(
    parents: Sequence[Path], path: Sequence[bytes]
) -> tuple[os.stat_result, dict[str, bytes]] | None:
    """:func:`lower_dir_stat` and the xattrs to copy up from that directory."""
    for lower in parents:
        try:
            fd = os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for comp in path:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return os.fstat(fd), _copy_up_xattrs(fd)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        finally:
            os.close(fd)
    return None


def copy_lower_dir_metadata(
    target: Path, paths: Iterable[bytes], parents: Sequence[Path], *, is_root: bool = True
) -> int:
    """Give directories of the layer ``target`` the mode, owner, times and xattrs they have in
    ``parents`` (top first); returns how many were changed.

    For layers applied without their parents (parallel unpack): the directories the layer
    created implicitly get, once the parents are known, what ``apply_layer`` would have
    given them with ``parents``.
    """
    done = 0
    for rel in paths:
        comps = [c for c in rel.split(b"/") if c]
        meta = lower_dir_meta(parents, comps)
        if meta is None:
            continue
        st, xattrs = meta
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in comps:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            if is_root:
                os.fchown(fd, st.st_uid, st.st_gid)
            set_copied_xattrs(fd, xattrs)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            done += 1
        except OSError:
            continue  # replaced meanwhile: nothing to fix
        finally:
            os.close(fd)
    return done
