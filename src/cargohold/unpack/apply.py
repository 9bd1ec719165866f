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
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cargohold.errors import (
    CargoholdError,
    DigestMismatchError,
    InvalidInputError,
    OutOfSpaceError,
    UnsafeContentError,
    UnsupportedError,
)
from cargohold.oci.digest import Digest
from cargohold.unpack import tarstream as tar
from cargohold.unpack.confined import DIR_FLAGS, Tree, clean_name, show_name
from cargohold.unpack.copyup import (
    OPAQUE_XATTR,
    SKIPPABLE_XATTR_ERRNOS,
    WHITEOUT_META_PREFIX,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    lower_dir_meta,
    set_copied_xattrs,
)
from cargohold.unpack.decompress import Reader

Mode = Literal["overlay", "flat"]

#: Files at least this big get a free-space check of their own before they are written.
BIG_FILE = 4 << 20
MAX_CHECK_INTERVAL = 64 << 20
MIN_CHECK_INTERVAL = 1 << 20
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class ApplyStats:
    """What one apply did, and where the time went."""

    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    whiteouts: int = 0
    opaques: int = 0
    #: Uncompressed stream size (the layer's "size" as an uncompressed descriptor).
    tar_bytes: int = 0
    #: Bytes of file content written.
    file_bytes: int = 0
    ownership_skipped: int = 0
    xattrs_skipped: int = 0
    devices_skipped: int = 0
    entries_skipped: int = 0
    #: sha256 of the whole uncompressed stream (equal to diff_id when one was given).
    diff_id: Digest | None = None
    seconds: float = 0.0
    #: Waiting for the input: reading + decompressing (with a prefetch thread, only the
    #: time the writer waited for it).
    seconds_read: float = 0.0
    #: Reading + decompressing the blob, wherever it ran (in the prefetch thread it
    #: overlaps the writes).
    seconds_decompress: float = 0.0
    seconds_hash: float = 0.0
    #: Everything else on the writing thread: parsing and file system calls.
    seconds_write: float = 0.0
    seconds_sync: float = 0.0
    #: Overlay mode: directories created implicitly whose metadata no parent layer provided
    #: (all of them when applied without parents); see ``copy_lower_dir_metadata``.
    implicit_dirs: list[bytes] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.tar_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- applying


def _syncfs(fd: int) -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
            return
    os.sync()


class _Applier:
    def __init__(
        self,
        target: Path,
        mode: Mode,
        reserve_bytes: int,
        is_root: bool,
        parents: Sequence[Path],
        stats: ApplyStats,
    ) -> None:
        self.mode = mode
        self.overlay = mode == "overlay"
        self.reserve = reserve_bytes
        self.is_root = is_root
        self.parents = list(parents)
        self.stats = stats
        #: Paths this layer created (resolved, relative): whiteouts never remove these.
        self.unpacked: set[tuple[bytes, ...]] = set()
        #: Directories holding something this layer created (kept by an opaque marker).
        self.ancestors: set[tuple[bytes, ...]] = set()
        #: Whiteout devices this layer created (overlay mode).
        self.whiteout_devs: set[tuple[bytes, ...]] = set()
        #: Overlay mode: implicit directories no parent gave metadata to (ordered set).
        self.implicit: dict[tuple[bytes, ...], None] = {}
        self.tree = Tree(target, self._mkdir_implicit, self.whiteout_devs.__contains__)
        #: (path, atime_ns, mtime_ns, mode or -1 when already set) for the final pass.
        self.dirs: list[tuple[tuple[bytes, ...], int, int, int]] = []
        self.accounted = 0
        self.next_check = 0
        #: Name of the entry being applied (for error messages).
        self.current = b""

    # -- bookkeeping

    def _mark(self, path: tuple[bytes, ...]) -> None:
        self.unpacked.add(path)
        p = path[:-1]
        anc = self.ancestors
        while p and p not in anc:
            anc.add(p)
            p = p[:-1]

    def _space(self, upcoming: int = 0) -> None:
        st = os.fstatvfs(self.tree.root_fd)
        free = st.f_bavail * st.f_frsize
        budget = free - upcoming - self.reserve
        if budget < 0:
            raise OutOfSpaceError(
                f"applying the layer would leave less than the reserve of {self.reserve} bytes "
                f"free ({free} free, {upcoming} more needed now) on the snapshot file system",
                hint="free disk space or lower the reserve; a layer this large may also be a "
                "decompression bomb",
            )
        step = min(MAX_CHECK_INTERVAL, max(MIN_CHECK_INTERVAL, budget // 2))
        self.next_check = self.accounted + upcoming + step

    def _account(self, nbytes: int) -> None:
        self.accounted += nbytes
        if self.accounted >= self.next_check:
            self._space()

    # -- helpers for metadata

    def _chown(self, e: tar.Entry, fd: int | None, name: bytes, pfd: int) -> None:
        if not self.is_root:
            self.stats.ownership_skipped += 1
            return
        if fd is not None:
            os.fchown(fd, e.uid, e.gid)
        else:
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)

    def _xattrs(self, e: tar.Entry, target: int | bytes) -> None:
        assert e.xattrs is not None
        for key, value in e.xattrs.items():
            if key.startswith(b"trusted.overlay.") or (
                not self.is_root and key.startswith(b"trusted.")
            ):
                self.stats.xattrs_skipped += 1
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno in SKIPPABLE_XATTR_ERRNOS:
                    self.stats.xattrs_skipped += 1
                    continue
                raise

    def _proc_path(self, pfd: int, name: bytes) -> bytes:
        return f"/proc/self/fd/{pfd}/".encode() + name

    def _remove(self, pfd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        """Remove ``name`` (recursively when a directory) without following links."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.tree.invalidate(path)
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)

    # -- implicit parents

    def _mkdir_implicit(self, parent_fd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        self.stats.dirs += 1
        self._mark(path)
        self._account(4096)
        if path in self.whiteout_devs:  # ".wh.a" then "a/b": a new directory, not merged
            self.whiteout_devs.discard(path)
            os.setxattr(self._proc_path(parent_fd, name), OPAQUE_XATTR, b"y")
        meta = lower_dir_meta(self.parents, path) if self.overlay and self.parents else None
        if meta is None:
            os.chmod(name, 0o755, dir_fd=parent_fd)
            if self.overlay:
                self.implicit[path] = None
            return
        st, xattrs = meta
        if self.is_root:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=parent_fd, follow_symlinks=False)
        if xattrs:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            try:
                set_copied_xattrs(fd, xattrs)
            finally:
                os.close(fd)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent_fd)
        self.dirs.append((path, st.st_atime_ns, st.st_mtime_ns, -1))

    # -- entries

    def apply(self, src: tar.Source) -> None:
        stats = self.stats
        tree = self.tree
        self._space()
        for e in tar.entries(src, stats):
            self.current = e.name
            stats.entries += 1
            tree.trim()
            parts = clean_name(e.name)
            has_data = e.type in tar.DATA_TYPES or e.type not in tar.KNOWN_TYPES
            if not parts:  # the root itself: containerd skips it
                stats.entries_skipped += 1
                if has_data:
                    src.skip(e.size + (-e.size % tar.BLOCK))
                continue
            base = parts[-1]
            if base.startswith(WHITEOUT_PREFIX):
                if has_data:
                    src.skip(e.size + (-e.size % tar.BLOCK))
                self._whiteout(e, parts)
                continue
            t = e.type
            if t not in tar.KNOWN_TYPES:
                raise UnsupportedError(
                    f"layer entry {show_name(e.name)} has unsupported tar type {t!r}"
                )
            res = tree.opendir(parts[:-1], create=True)
            assert res is not None
            pfd, presolved = res
            path = (*presolved, base)
            if t in tar.DATA_TYPES:
                self._file(src, e, pfd, base, path)
            elif t in (tar.DIR, tar.GNU_DUMPDIR):
                self._dir(e, pfd, base, path)
            elif t == tar.SYM:
                self._symlink(e, pfd, base, path)
            elif t == tar.LNK:
                self._hardlink(e, pfd, base, path)
            elif t in (tar.CHR, tar.BLK, tar.FIFO):
                self._special(e, pfd, base, path)
            else:  # volume header
                stats.entries_skipped += 1
                continue
            self._mark(path)
        self._finish_dirs()

    def _file(
        self, src: tar.Source, e: tar.Entry, pfd: int, name: bytes, path: tuple[bytes, ...]
    ) -> None:
        size = e.size
        if size >= BIG_FILE:
            self._space(size)
        want = e.mode & 0o7777
        # Created with its permission bits (less the umask): with the owner root already
        # has, the common file needs neither chown nor chmod (each costs an inode update,
        # ~30 % of a small file's creation here); fstat tells.
        try:
            fd = os.open(name, _FILE_FLAGS, want & 0o777, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, name, path)
            fd = os.open(name, _FILE_FLAGS, want & 0o777, dir_fd=pfd)
        self.whiteout_devs.discard(path)
        try:
            if size:
                src.copy_to(fd, size)
            if self.is_root and not e.xattrs:
                st = os.fstat(fd)
                if (st.st_uid, st.st_gid) != (e.uid, e.gid):
                    os.fchown(fd, e.uid, e.gid)  # clears setuid/setgid: chmod after
                    os.fchmod(fd, want)
                elif stat.S_IMODE(st.st_mode) != want:
                    os.fchmod(fd, want)
            else:
                self._chown(e, fd, name, pfd)
                if e.xattrs:
                    self._xattrs(e, fd)
                os.fchmod(fd, want)
            os.utime(fd, ns=(e.atime_ns, e.mtime_ns))
        finally:
            os.close(fd)
        src.skip(-size % tar.BLOCK)
        self.stats.files += 1
        self.stats.file_bytes += size
        self._account(size + 4095 & ~4095)

    def _dir(self, e: tar.Entry, pfd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        made_opaque = False
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                # A whiteout of this name earlier in this layer: the lower directory is gone,
                # so the new one must not merge with it.
                made_opaque = self.overlay and path in self.whiteout_devs
                self._remove(pfd, name, path)
                os.mkdir(name, 0o700, dir_fd=pfd)
        self.whiteout_devs.discard(path)
        self.implicit.pop(path, None)
        cached = self.tree.cache.pop(path, None)
        fd = cached if cached is not None else os.open(name, DIR_FLAGS, dir_fd=pfd)
        try:
            self._chown(e, fd, name, pfd)
            if e.xattrs:
                self._xattrs(e, fd)
            if made_opaque:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            mode = e.mode & 0o7777
            if self.is_root:
                os.fchmod(fd, mode)
                mode = -1
        except BaseException:
            os.close(fd)
            raise
        self.tree.cache[path] = fd
        self.dirs.append((path, e.atime_ns, e.mtime_ns, mode))
        self.stats.dirs += 1
        self._account(4096)

    def _symlink(self, e: tar.Entry, pfd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        if not e.linkname:
            raise InvalidInputError(f"layer symlink {show_name(e.name)} has an empty target")
        if b"\0" in e.linkname:
            raise InvalidInputError(f"layer symlink {show_name(e.name)} target contains a NUL byte")
        try:
            os.symlink(e.linkname, name, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, name, path)
            os.symlink(e.linkname, name, dir_fd=pfd)
        self.whiteout_devs.discard(path)
        self._chown(e, None, name, pfd)
        if e.xattrs:
            self._xattrs(e, self._proc_path(pfd, name))
        os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        self.stats.symlinks += 1

    def _hardlink(self, e: tar.Entry, pfd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        lparts = clean_name(e.linkname)
        if not lparts:
            raise UnsafeContentError(
                f"layer hardlink {show_name(e.name)} points at the layer root ({show_name(e.linkname)})"
            )
        res = self.tree.opendir(lparts[:-1], create=False)
        if res is None:
            raise UnsafeContentError(
                f"layer hardlink {show_name(e.name)} points at {show_name(e.linkname)}, "
                "which does not exist in the layer"
            )
        lfd, lresolved = res
        lname = lparts[-1]
        lpath = (*lresolved, lname)
        if lpath == path:
            self.stats.entries_skipped += 1
            return
        try:
            lst = os.stat(lname, dir_fd=lfd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeContentError(
                f"layer hardlink {show_name(e.name)} points at {show_name(e.linkname)}, "
                "which does not exist in the layer"
            ) from None
        if stat.S_ISDIR(lst.st_mode):
            raise UnsafeContentError(
                f"layer hardlink {show_name(e.name)} points at the directory {show_name(e.linkname)}"
            )
        # Both fds belong to the cache, which is trimmed only between entries.
        try:
            os.link(lname, name, src_dir_fd=lfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            self._remove(pfd, name, path)
            os.link(lname, name, src_dir_fd=lfd, dst_dir_fd=pfd, follow_symlinks=False)
        self.whiteout_devs.discard(path)
        # The link's header sets the shared inode's metadata, as containerd's applier does
        # (lchown, xattrs, chmod unless it is a symlink, times without following).
        self._chown(e, None, name, pfd)
        if e.xattrs:
            self._xattrs(e, self._proc_path(pfd, name))
        if not stat.S_ISLNK(lst.st_mode):
            os.chmod(name, e.mode & 0o7777, dir_fd=pfd)
        os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        self.stats.hardlinks += 1

    def _special(self, e: tar.Entry, pfd: int, name: bytes, path: tuple[bytes, ...]) -> None:
        perm = e.mode & 0o7777
        if e.type == tar.FIFO:

            def make() -> None:
                os.mkfifo(name, 0o600, dir_fd=pfd)

        else:
            if not self.is_root:
                self.stats.devices_skipped += 1
                return
            kind = stat.S_IFCHR if e.type == tar.CHR else stat.S_IFBLK
            dev = os.makedev(e.devmajor, e.devminor)

            def make() -> None:
                os.mknod(name, kind | 0o600, dev, dir_fd=pfd)

        try:
            make()
        except FileExistsError:
            self._remove(pfd, name, path)
            make()
        self.whiteout_devs.discard(path)
        self._chown(e, None, name, pfd)
        if e.xattrs:
            self._xattrs(e, self._proc_path(pfd, name))
        os.chmod(name, perm, dir_fd=pfd)
        os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        self.stats.devices += 1

    # -- whiteouts

    def _whiteout(self, e: tar.Entry, parts: tuple[bytes, ...]) -> None:
        base = parts[-1]
        if base == WHITEOUT_OPAQUE:
            self._opaque(parts[:-1])
            return
        if base.startswith(WHITEOUT_META_PREFIX):  # AUFS metadata (.wh..wh.plnk, ...)
            self.stats.entries_skipped += 1
            return
        orig = base[len(WHITEOUT_PREFIX) :]
        if orig in (b"", b".", b".."):
            raise UnsafeContentError(f"layer has an invalid whiteout name {show_name(e.name)}")
        self.stats.whiteouts += 1
        res = self.tree.opendir(parts[:-1], create=self.overlay)
        if res is None:  # flat: nothing there to delete
            return
        pfd, presolved = res
        path = (*presolved, orig)
        if path in self.unpacked or path in self.whiteout_devs:
            return  # the same layer created it: a whiteout only hides lower layers
        self._remove(pfd, orig, path)
        if self.overlay:
            os.mknod(orig, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            if self.is_root:
                os.chown(orig, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            self.whiteout_devs.add(path)

    def _opaque(self, dparts: tuple[bytes, ...]) -> None:
        self.stats.opaques += 1
        res = self.tree.opendir(dparts, create=self.overlay)
        if res is None:
            return
        fd, resolved = res
        if self.overlay:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
            return
        self._clear_lower(fd, resolved)

    def _clear_lower(self, fd: int, dpath: tuple[bytes, ...]) -> None:
        """Flat mode: remove what lower layers left below ``dpath``; keep this layer's.

        Directories this layer created or holds entries in are kept and cleared in turn
        (their lower children are hidden by the opaque parent too).
        """
        stack: list[tuple[int, tuple[bytes, ...], bool]] = [(fd, dpath, False)]
        try:
            while stack:
                dfd, dp, owned = stack.pop()
                try:
                    for name in map(os.fsencode, os.listdir(dfd)):  # str for an fd
                        path = (*dp, name)
                        if path not in self.unpacked and path not in self.ancestors:
                            self._remove(dfd, name, path)
                            continue
                        try:
                            cfd = os.open(name, DIR_FLAGS, dir_fd=dfd)
                        except OSError:
                            continue  # not a directory (or a symlink): nothing below
                        stack.append((cfd, path, True))
                finally:
                    if owned:
                        os.close(dfd)
        finally:
            for dfd, _, owned in stack:
                if owned:
                    os.close(dfd)

    # -- the end

    def _finish_dirs(self) -> None:
        self.stats.implicit_dirs = [b"/".join(p) for p in self.implicit]
        done: set[tuple[bytes, ...]] = set()
        for path, atime_ns, mtime_ns, mode in reversed(self.dirs):  # the last word wins
            if path in done:
                continue
            done.add(path)
            self.tree.trim()
            res = self.tree.opendir(path, create=False, follow=False)
            if res is None:
                continue
            fd = res[0]
            if mode >= 0:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(atime_ns, mtime_ns))



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
        applier = _Applier(target, mode, reserve_bytes, is_root, parents, stats)
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
    stats.tar_bytes = src.total
    stats.diff_id = Digest("sha256", src.hasher.hexdigest())
    stats.seconds = time.perf_counter() - t0
    stats.seconds_read = src.t_read
    stats.seconds_decompress = src.t_decompress
    stats.seconds_hash = src.t_hash
    # Inline, the writing thread also hashed; with a prefetcher the hashing overlapped.
    hashed_here = 0.0 if prefetch else src.t_hash
    stats.seconds_write = max(0.0, stats.seconds - src.t_read - hashed_here - stats.seconds_sync)
    if diff_id is not None and stats.diff_id != diff_id:
        raise DigestMismatchError(
            f"layer content has diff_id {stats.diff_id}, expected {diff_id}",
            hint="the layer blob does not match the image config's rootfs.diff_ids; "
            "the partial snapshot must be discarded",
        )
    return stats
