"""The fast Applier for containerd: cargohold's own applier on the snapshots containerd prepares.

containerd's snapshotter prepares the snapshot (over gRPC) and returns its mounts; instead
of asking containerd's diff service to mount them and unpack the layer (66-100 MB/s here),
cargohold writes the layer itself straight into the snapshot's directory, as containerd's
own overlay fast path does, then the caller commits it under the chain ID as before:

* ``overlayfs``: one ``overlay`` mount with an ``upperdir``: the layer goes into the upper
  directory in overlay mode (whiteouts as overlayfs whiteouts, opaque directories as
  ``trusted.overlay.opaque=y``), the ``lowerdir`` directories given as its parents (the
  metadata of directories the layer creates implicitly is copied from them); a first layer
  (no parent) is a ``bind`` mount of an empty directory: applied there in flat mode, which
  for an empty directory is what containerd's mounted apply does.
* ``native``: a writable ``bind`` mount of a directory holding a copy of the parent: flat
  mode (whiteouts delete, opaque directories lose their lower children).

Everything else goes to containerd's diff service (:class:`ContainerdApplier`): other
snapshotters (``devmapper``, ``btrfs``, ``zfs``, ``aufs``, remote ones such as ``stargz``
or ``soci``), overlay mounts with ``userxattr`` (rootless containerd: overlayfs reads
``user.overlay.*`` there), mounts whose directories are not visible from this process
(containerd on another machine or in another mount namespace), not running as root, or
``CARGOHOLD_CONTAINERD_DIRECT=0``. The layer blob is read from containerd's own blob file
when its content root is on this machine (``ContainerdContentStore.reader``).

Containment is the embedded store's: nothing is written outside the snapshot's directory
(``cargohold.unpack.apply``), a layer that is hostile or does not hash to its diff_id is
refused, and the caller removes the half-applied snapshot (through containerd) on any error,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from cargohold.errors import InvalidInputError, UnsupportedError
from cargohold.labels import IMPLICIT_DIRS_OPTION, WHITEOUT_OVERLAY_OPTION
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.containerd.content import DIRECT_ENV, direct_access_allowed
from cargohold.store.containerd.diff import ContainerdApplier
from cargohold.store.interfaces import Mount
from cargohold.unpack.applier import (
    EmbeddedApplier,
    Plan,
    StatsApplierBase,
    plan,
)
from cargohold.unpack.layerwriter import ApplyStats

#: containerd snapshotters whose mounts cargohold applies into itself.
FAST_SNAPSHOTTERS = frozenset({"overlayfs", "native"})


def local_plan(snapshotter: str, mounts: Sequence[Mount]) -> Plan | None:
    """Where cargohold can apply onto ``mounts`` of containerd's ``snapshotter`` itself, or
    None when containerd's diff service must do it (see the module docstring)."""
    if snapshotter not in FAST_SNAPSHOTTERS or len(mounts) != 1 or os.geteuid() != 0:
        return None
    m = mounts[0]
    opts = set(m.options)
    hints = {o for o in opts if o == WHITEOUT_OVERLAY_OPTION or o.startswith(IMPLICIT_DIRS_OPTION)}
    if "ro" in opts or "userxattr" in opts or any(o.startswith("x-") for o in opts - hints):
        return None
    if snapshotter == "overlayfs" and m.type not in ("overlay", "bind"):
        return None
    if snapshotter == "native" and m.type != "bind":
        return None
    try:
        p = plan(mounts)
    except InvalidInputError:  # anything odd: let containerd handle it
        return None
    if p.target is None or not p.target.is_dir():
        return None
    if not all(Path(d).is_dir() for d in p.parents):
        return None
    if m.type == "overlay" and p.mode != "overlay":
        return None
    return p


class FastApplier(StatsApplierBase):
    """The Applier protocol for one containerd snapshotter: cargohold's applier into the
    snapshot's directory when :func:`local_plan` allows, containerd's diff service
    (``fallback``) otherwise. ``used_fallback`` counts the layers that went to containerd."""

    def __init__(
        self,
        snapshotter: str,
        fallback: ContainerdApplier,
        *,
        reserve_bytes: int = 0,
        direct: bool | None = None,
    ) -> None:
        self.snapshotter = snapshotter
        self.fallback = fallback
        self.direct = direct_access_allowed() if direct is None else direct
        self.local = EmbeddedApplier(reserve_bytes=reserve_bytes)
        self.used_fallback = 0

    def plan(self, mounts: Sequence[Mount]) -> Plan | None:
        return local_plan(self.snapshotter, mounts) if self.direct else None

    def apply_with_stats(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        reader: BinaryIO,
        diff_id: Digest | None = None,
    ) -> tuple[Descriptor, ApplyStats]:
        """``apply``, also returning what it did (empty stats from containerd's differ)."""
        p = self.plan(mounts)
        if p is not None:
            # (a staged layer's overlay marks are noted by the applier: OVERLAY_MARKS_SUFFIX)
            return self.local.apply_with_stats(desc, mounts, reader=reader, diff_id=diff_id)
        if any(o == WHITEOUT_OVERLAY_OPTION for m in mounts for o in m.options):
            raise UnsupportedError(
                "a staged snapshot of cargohold's needs cargohold's own applier",
                hint=f"containerd's snapshot directories must be writable here ({DIRECT_ENV})",
            )
        self.used_fallback += 1
        out = self.fallback.apply(desc, list(mounts), reader=reader, diff_id=diff_id)
        return out, ApplyStats(diff_id=out.digest, tar_bytes=out.size)
