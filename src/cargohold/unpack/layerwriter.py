"""Writing one layer's entries onto the target: :class:`LayerWriter` and :class:`ApplyStats`.

The rules it follows (modes, whiteouts, ownership, xattrs, times, disk safety) are described
in :mod:`.apply`, whose :func:`~cargohold.unpack.apply.apply_layer` drives it: the tar entries
come from :mod:`.tarstream`, every path is opened through :mod:`.confined`'s ``Tree``, and
implicit directories copy their metadata up through :mod:`.copyup`.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cargohold.errors import (
    InvalidInputError,
    OutOfSpaceError,
    UnsafeContentError,
    UnsupportedError,
)
from cargohold.oci.digest import Digest
from cargohold.unpack import tarstream as tar
from cargohold.unpack.confined import DIR_FLAGS, Tree, clean_name, not_a_directory, show_name
from cargohold.unpack.copyup import (
    OPAQUE_XATTR,
    SKIPPABLE_XATTR_ERRNOS,
    WHITEOUT_META_PREFIX,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    lower_dir_meta,
    set_copied_xattrs,
)
from cargohold.unpack.filehelper import set_owner_and_mode
from cargohold.unpack.fileprocess import SMALL_FILE, FileProcess, helper_start_after

Mode = Literal["overlay", "flat"]

#: Files at least this big get a free-space check of their own before they are written.
BIG_FILE = 4 << 20
MAX_CHECK_INTERVAL = 64 << 20
MIN_CHECK_INTERVAL = 1 << 20
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


class LayerWriter:
    """Applies the entries of one layer tar onto ``target`` (see :mod:`.apply`)."""

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
        #: Small new files go to a helper process once the layer has shown many, when the
        #: target was empty at the start (nothing of a lower layer can be in their way):
        #: see :mod:`.fileprocess`. Until then they are counted down here.
        self.helper: FileProcess | None = None
        after = helper_start_after()
        self.until_helper = after if after >= 0 and self._target_empty() else -1

    def _target_empty(self) -> bool:
        with os.scandir(self.tree.root_fd) as it:
            return next(it, None) is None

    def _settle_files(self) -> None:
        """Wait for the files handed to the helper (before anything that may touch a path
        it writes); its first error is raised, naming its entry."""
        helper = self.helper
        if helper is not None and helper.pending:
            try:
                helper.drain()
            except OSError:
                self.current = helper.failed_name
                raise

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
        if self.helper is not None and path in self.helper.pending:
            self._settle_files()  # a file of this layer is there (as Tree.opendir says)
            raise not_a_directory(path)
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
        try:
            self._apply(src)
        finally:
            if self.helper is not None:
                self.helper.close()  # after an error, killed: nothing written once we return

    def _apply(self, src: tar.Source) -> None:
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
                self._settle_files()
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
            if path in self.unpacked or t == tar.LNK:
                self._settle_files()  # written again, or linked to: the helper first
            elif (self.until_helper >= 0 and t in tar.DATA_TYPES and e.size <= SMALL_FILE
                  and not e.xattrs and path not in self.whiteout_devs
                  and self._to_helper()):  # fmt: skip
                self._helper_file(src, e, pfd, presolved, base)
                self._mark(path)
                continue
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
        self._settle_files()
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
                set_owner_and_mode(fd, want, e.uid, e.gid, chown=True)
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

    def _to_helper(self) -> bool:
        """Whether this small new file goes to the helper (started at the START_AFTER-th)."""
        if self.helper is not None:
            return True
        if self.until_helper > 0:
            self.until_helper -= 1
            return False
        try:
            self.helper = FileProcess(is_root=self.is_root)
        except OSError:
            self.until_helper = -1  # no helper: every file written here
            return False
        return True

    def _helper_file(self, src: tar.Source, e: tar.Entry, pfd: int,
                     presolved: tuple[bytes, ...], name: bytes) -> None:
        """A small file at a path nothing is at: created by the helper (:mod:`.fileprocess`)."""
        assert self.helper is not None
        size = e.size
        data = src.read(size) if size else b""
        src.skip(-size % tar.BLOCK)
        try:
            self.helper.add(pfd, presolved, name, data, e.mode & 0o7777, e.uid, e.gid,
                            e.atime_ns, e.mtime_ns, e.name)  # fmt: skip
        except OSError:
            self.current = self.helper.failed_name  # a batch written here (helper behind)
            raise
        self.stats.files += 1
        self.stats.file_bytes += size
        if not self.is_root:
            self.stats.ownership_skipped += 1
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


