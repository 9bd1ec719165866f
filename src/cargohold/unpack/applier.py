"""The embedded Applier (containerd's diff service, applying side).

Like containerd's overlay fast path, it writes straight into the snapshot's directory
instead of mounting it when the mounts allow:

* an ``overlay`` mount with an ``upperdir``: overlay mode into the upper dir, the lower dirs
  given as parents (for the metadata of implicitly created directories);
* a writable ``bind`` mount: into its source, in overlay mode when the mount carries
  ``x-cargohold.whiteout=overlay`` (a layer of the overlay snapshotter without parent, see
  ``store.embedded.snapshots``), else in flat mode (the source holds the lower layers); an
  ``x-cargohold.implicit-dirs=<file>`` option receives the directories the layer created
  without knowing their parents' metadata (fixed at commit when the parent is known);
* anything else (one or more mounts of other types) is mounted on a temporary directory with
  ``cargohold.mount`` and applied in flat mode.

Read-only mounts (views) are refused.  The returned descriptor is the uncompressed layer's:
media type ``application/vnd.oci.image.layer.v1.tar``, digest = diff_id, size = tar size.
"""

from __future__ import annotations

import os
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cargohold.errors import InvalidInputError
from cargohold.labels import IMPLICIT_DIRS_OPTION, WHITEOUT_OVERLAY_OPTION
from cargohold.mount import mounted
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.mediatypes import OCI_LAYER
from cargohold.store.interfaces import Mount
from cargohold.unpack.apply import apply_layer
from cargohold.unpack.copyup import OPAQUE_XATTR
from cargohold.unpack.decompress import open_decompressed
from cargohold.unpack.layerwriter import ApplyStats, Mode

#: Next to that file (its name + this suffix): the layer wrote overlay whiteouts or opaque
#: markers there; a snapshotter committing it as a bottom layer undoes them
#: (:func:`undo_overlay_marks`), as applying it onto an empty directory would have done.
OVERLAY_MARKS_SUFFIX = ".marks"


@dataclass(frozen=True)
class Plan:
    """Where and how a layer is applied for a list of mounts; target None: mount first."""

    target: Path | None
    mode: Mode
    parents: tuple[Path, ...] = ()
    implicit_log: Path | None = None


def plan(mounts: Sequence[Mount]) -> Plan:
    """Decide how to apply onto ``mounts`` (see the module docstring)."""
    if not mounts:
        raise InvalidInputError("no mounts to apply the layer onto")
    if len(mounts) == 1:
        m = mounts[0]
        opts = set(m.options)
        if "ro" in opts:
            raise InvalidInputError("cannot apply a layer onto a read-only mount (a view)")
        if m.type == "overlay":
            upper = [o.split("=", 1)[1] for o in m.options if o.startswith("upperdir=")]
            lower = [o.split("=", 1)[1] for o in m.options if o.startswith("lowerdir=")]
            if upper:
                parents = tuple(Path(p) for p in lower[0].split(":")) if lower else ()
                return Plan(Path(upper[0]), "overlay", parents)
        elif m.type == "bind" or {"bind", "rbind"} & opts:
            mode: Mode = "overlay" if WHITEOUT_OVERLAY_OPTION in opts else "flat"
            logs = [
                o[len(IMPLICIT_DIRS_OPTION) :]
                for o in m.options
                if o.startswith(IMPLICIT_DIRS_OPTION)
            ]
            return Plan(Path(m.source), mode, (), Path(logs[0]) if logs else None)
    return Plan(None, "flat")


class StatsApplierBase(ABC):
    """Base of the appliers that tell what they did (``unpack.image.StatsApplier``): they
    write only ``apply_with_stats``; ``apply`` is it without the stats."""

    @abstractmethod
    def apply_with_stats(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> tuple[Descriptor, ApplyStats]:
        """``apply``, also returning what it did."""

    def apply(
        self,
        desc: Descriptor,
        mounts: list[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> Descriptor:
        return self.apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)[0]


class EmbeddedApplier(StatsApplierBase):
    """Applies layer blobs onto snapshot mounts; see :func:`plan` for where.

    ``reserve_bytes``: free space to leave on the snapshot file system; ``sync``: syncfs
    after each layer; ``mount_dir``: where temporary mount points go when mounting is needed.
    """

    def __init__(
        self,
        *,
        reserve_bytes: int = 0,
        sync: bool = False,
        mount_dir: Path | None = None,
    ) -> None:
        self.reserve_bytes = reserve_bytes
        self.sync = sync
        self.mount_dir = mount_dir

    def apply_with_stats(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> tuple[Descriptor, ApplyStats]:
        """``apply``, also returning what it did and how long it took."""
        p = plan(mounts)
        if p.target is not None:
            stats = self._apply(desc, reader, p.target, p.mode, p.parents, diff_id)
            if p.implicit_log is not None and stats.implicit_dirs:
                p.implicit_log.write_bytes(b"\0".join(stats.implicit_dirs))
            if p.implicit_log is not None and p.mode == "overlay" and (
                stats.whiteouts or stats.opaques
            ):
                Path(str(p.implicit_log) + OVERLAY_MARKS_SUFFIX).touch()
        else:
            tmp = Path(tempfile.mkdtemp(prefix="cargohold-apply-", dir=self.mount_dir))
            try:
                with mounted(mounts, tmp):
                    stats = self._apply(desc, reader, tmp, "flat", (), diff_id)
            finally:
                os.rmdir(tmp)
        assert stats.diff_id is not None
        out = Descriptor(media_type=OCI_LAYER, digest=stats.diff_id, size=stats.tar_bytes)
        return out, stats

    def _apply(
        self,
        desc: Descriptor,
        reader: BinaryIO,
        target: Path,
        mode: Mode,
        parents: Sequence[Path],
        diff_id: Digest | None,
    ) -> ApplyStats:
        with open_decompressed(reader, desc.media_type) as stream:
            return apply_layer(
                stream,
                target,
                mode=mode,
                diff_id=diff_id,
                reserve_bytes=self.reserve_bytes,
                parents=parents,
                sync=self.sync,
            )


def undo_overlay_marks(root: Path) -> int:
    """Remove overlayfs whiteouts (0/0 character devices) and opaque markers below ``root``:
    a bottom layer applied in overlay mode becomes what a plain apply makes of it (the
    directories keep the times the layer gave them)."""
    undone = 0
    for dirpath, dirnames, filenames in os.walk(root):
        with suppress(OSError):
            os.removexattr(dirpath, OPAQUE_XATTR, follow_symlinks=False)
            undone += 1
        whiteouts = []
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0):
                whiteouts.append(p)
        if whiteouts:
            times = os.lstat(dirpath)
            for p in whiteouts:
                os.unlink(p)
            os.utime(dirpath, ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)
            undone += len(whiteouts)
    return undone
