"""Apply one uncompressed layer tar onto a directory (the core of the differ).

Design (see ``../shared/perf-limits.md``): the tar headers are parsed by :mod:`.tarstream`
(ustar, GNU long names / long links, PAX), file data goes from the decompressor's 1 MiB
buffers straight to ``os.write`` on an fd opened ``O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW``
relative to its parent directory's fd, and every byte of the stream (padding and what
follows the end-of-archive marker included: the stream is drained to EOF) goes through
sha256 to check the diff_id.

Two modes
---------
``overlay``
    ``target`` is the (empty) upper directory of a fresh overlay layer.  ``.wh.<name>``
    becomes an overlayfs whiteout (char device 0/0) and ``.wh..wh..opq`` sets
    ``trusted.overlay.opaque=y`` on its directory.  A whiteout followed in the same layer by a
    directory of that name becomes an opaque directory (the lower one was deleted, the new one
    must not merge with it).  Directories created implicitly (a layer holding ``a/b/f`` without
    an ``a/b`` entry) copy mode, owner, times and xattrs (all but ``trusted.*``) from the first
    of ``parents`` (the lower layers, top first) that has them, as containerd's ``WithParents``
    does, so the merged view keeps e.g. ``/tmp``'s 1777.  Needs root (whiteout devices,
    trusted.* xattrs).
``flat``
    ``target`` already holds the lower layers' files (the copy-based snapshotter).  A whiteout
    deletes the named path; an opaque marker deletes the directory's children that came from
    lower layers, keeping what this layer created (and recursing into kept directories, whose
    lower children are hidden too), as containerd's naive applier does.

In both modes, following the OCI spec, a whiteout never hides what the same layer created
(``a`` then ``.wh.a`` keeps ``a``; ``.wh.a`` then ``a`` ends with the new ``a``).  An entry
whose path exists is replaced (the old one removed, recursively for directories) unless both
are directories, in which case only the metadata is applied (containerd's rule).  Meta
whiteouts other than the opaque marker (``.wh..wh.plnk``...) are skipped; ``.wh.``, ``.wh..``,
and ``.wh...`` refuse the layer.  The root entry (``./``) is skipped, as containerd does.

Containment: nothing is ever written outside ``target``; every name is resolved inside it
by :mod:`.confined` (its docstring tells what happens to absolute names, ``..``, symlinks,
hardlinks, NUL bytes and bad whiteouts).

Ownership and permissions: as root, ``lchown`` to the header's uid/gid, then xattrs, then
``chmod`` with the full mode (setuid/setgid/sticky: chown clears setuid and file capabilities,
so the order matters).  Not root: ownership is skipped silently (counted in
``ownership_skipped``), devices are skipped (``devices_skipped``), trusted.* xattrs are
skipped, and directory modes are applied at the end (so a read-only directory can still be
filled).  A hardlink's own header sets owner, xattrs, mode (unless the link is to a symlink)
and times of the inode it shares with its target, as containerd's applier does (the last
header naming an inode wins; image builders write the target's metadata there).  xattrs the
filesystem or the file type cannot hold (ENOTSUP, EPERM, E2BIG, ERANGE, EINVAL; e.g. user.* on
a symlink) are dropped and counted in ``xattrs_skipped`` (containerd logs and ignores them).
Times: mtime, and atime from PAX/GNU or else mtime, set without following symlinks; directory
times are set at the end, deepest last-seen first.

Disk safety: before starting and then whenever the bytes written since the last check could
have used half the remaining budget (at most every 64 MiB, at least every 1 MiB), and before
every file of 4 MiB or more, ``statvfs`` free space must stay above ``reserve_bytes``; if a
layer would cross it (a decompression bomb, or just a disk too small) apply stops with
OutOfSpaceError.  A real ENOSPC/EDQUOT is OutOfSpaceError too.  With several layers applied in
parallel each checks on its own, so the reserve may be undershot by up to one check interval
per concurrent layer.  apply_layer never removes what it wrote: on any error the caller (the
snapshotter) removes the partial snapshot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

from cargohold.errors import (
    CargoholdError,
    DigestMismatchError,
    InvalidInputError,
    OutOfSpaceError,
    UnsupportedError,
)
from cargohold.oci.digest import Digest
from cargohold.unpack import tarstream as tar
from cargohold.unpack.confined import show_name
from cargohold.unpack.decompress import Reader
from cargohold.unpack.layerwriter import ApplyStats, LayerWriter, Mode

_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _syncfs(fd: int) -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
            return
    os.sync()


def _record_stream(stats: ApplyStats, src: tar.Source, t0: float, *, prefetch: bool) -> None:
    """Fill ``stats`` with the stream's size, sha256 and where the time since ``t0`` went."""
    stats.tar_bytes = src.total
    stats.diff_id = Digest("sha256", src.hasher.hexdigest())
    stats.seconds = time.perf_counter() - t0
    stats.seconds_read = src.t_read
    stats.seconds_decompress = src.t_decompress
    stats.seconds_hash = src.t_hash
    # Inline, the writing thread also hashed; with a prefetcher the hashing overlapped.
    hashed_here = 0.0 if prefetch else src.t_hash
    stats.seconds_write = max(0.0, stats.seconds - src.t_read - hashed_here - stats.seconds_sync)


def apply_layer(
    stream: Reader,
    target: Path,
    *,
    mode: Mode,
    diff_id: Digest | None,
    reserve_bytes: int = 0,
    is_root: bool | None = None,
    parents: Sequence[Path] = (),
    sync: bool = False,
    prefetch: bool = True,
) -> ApplyStats:
    """Apply the uncompressed layer tar ``stream`` onto the directory ``target``.

    ``mode`` is "overlay" (``target`` is a fresh overlay upper dir; ``parents`` are the lower
    layer dirs, top first, used only for the metadata of implicitly created directories) or
    "flat" (``target`` holds the lower layers' files).  ``diff_id``: the sha256 the whole
    uncompressed stream must have (DigestMismatchError otherwise, after applying: the caller
    discards the snapshot).  ``reserve_bytes``: free space to leave on target's file system
    (OutOfSpaceError).  ``is_root`` defaults to whether the effective uid is 0.  ``sync``:
    syncfs the target's file system at the end.  ``prefetch``: read and hash the stream in a
    helper thread a few MiB ahead, overlapping inflate + sha256 with the file system work
    (then ``seconds_read`` is the time spent waiting for input, ``seconds_hash`` the helper's
    hashing time, overlapped).

    Raises UnsafeContentError (escapes, bad hardlinks, bad whiteouts), InvalidInputError
    (malformed tar or compressed stream), UnsupportedError (sparse files, overlay mode without
    root), OutOfSpaceError, DigestMismatchError.  Never removes what it wrote.
    """
    if mode not in ("overlay", "flat"):
        raise InvalidInputError(f"unknown apply mode {mode!r}")
    if is_root is None:
        is_root = os.geteuid() == 0
    if mode == "overlay" and not is_root:
        raise UnsupportedError(
            "applying a layer in overlay mode needs root (whiteout devices, trusted.* xattrs)"
        )
    if diff_id is not None and diff_id.algorithm != "sha256":
        raise InvalidInputError(f"diff_id {diff_id}: only sha256 diff_ids are supported")
    stats = ApplyStats()
    t0 = time.perf_counter()
    src = tar.Source(stream, prefetch=prefetch)
    try:
        applier = LayerWriter(target, mode, reserve_bytes, is_root, parents, stats)
    except BaseException:
        src.close()
        raise
    try:
        applier.apply(src)
        src.drain()
        if sync:
            ts = time.perf_counter()
            _syncfs(applier.tree.root_fd)
            stats.seconds_sync = time.perf_counter() - ts
    except OSError as e:
        if e.errno in _SPACE_ERRNOS:
            raise OutOfSpaceError(f"no space left applying the layer onto {target}: {e}") from e
        where = f" at entry {show_name(applier.current)}" if applier.current else ""
        raise CargoholdError(f"applying the layer onto {target} failed{where}: {e}") from e
    finally:
        try:
            applier.tree.close()
        finally:
            src.close()  # the read-ahead thread ends before the caller closes the stream
    _record_stream(stats, src, t0, prefetch=prefetch)
    if diff_id is not None and stats.diff_id != diff_id:
        raise DigestMismatchError(
            f"layer content has diff_id {stats.diff_id}, expected {diff_id}",
            hint="the layer blob does not match the image config's rootfs.diff_ids; "
            "the partial snapshot must be discarded",
        )
    return stats
