"""Parallel layers on containerd's overlayfs snapshotter, which fixes parents at prepare.

containerd 1.6 (Debian's) gives a snapshot its parent when it is prepared, so the layers of
an image would have to be applied one after the other, each waiting for its parent's
commit. An overlay layer's directory does not depend on its parents, though (the applier
only reads them for the metadata of directories a layer creates implicitly), so
:class:`StagedSnapshotter` -- the containerd snapshotter as cargohold's unpacker sees it when
cargohold's own applier can write into its snapshots -- says ``standalone_layers`` and:

* ``prepare(key, "")`` (the unpacker's parentless prepare of every missing layer) is a real
  containerd snapshot without parent (a bind mount of an empty directory on the snapshotter's
  file system, owned by containerd: leased, removed by containerd on ``remove``, collected if
  this process dies), returned with two hints for the applier: overlay mode (whiteouts as
  overlayfs whiteouts, opaque directories marked) and a file to list the directories the
  layer created implicitly. Layers are applied into these concurrently.
* ``commit(name, key, parent=P)`` with a parent, in chain order once P is committed: prepares
  the real snapshot on P (containerd's overlay mount), moves the staged entries into its upper
  directory (``rename``: same file system, no copy), gives the implicitly created directories
  the metadata P's layers have for them, commits it as ``name`` and removes the stage.
* ``commit(name, key, parent="")``: the bottom layer is committed in place; whiteouts and
  opaque markers the overlay mode wrote into it (only when the layer had any) are undone,
  as applying it onto an empty directory would have done.

Everything else is the wrapped :class:`ContainerdSnapshotter`'s. containerd 2.2 offers this
natively (the ``rebase`` capability); this wrapper is what makes 1.6 overlap the layers.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from cargohold.errors import InvalidInputError
from cargohold.labels import IMPLICIT_DIRS_OPTION, WHITEOUT_OVERLAY_OPTION
from cargohold.store.containerd.snapshots import ContainerdSnapshotter
from cargohold.store.interfaces import Mount, SnapshotInfo, Usage
from cargohold.unpack.applier import OVERLAY_MARKS_SUFFIX, undo_overlay_marks
from cargohold.unpack.copyup import copy_lower_dir_metadata

#: Next to a staged snapshot's ``fs`` directory (in containerd's snapshot directory, which
#: containerd removes with the snapshot): the implicit directories the applier logged, and
#: (with ``OVERLAY_MARKS_SUFFIX``) a marker that the layer holds overlay whiteouts/opaques.
IMPLICIT_DIRS_FILE = "cargohold-implicit-dirs"
SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"


def staged_dir(mounts: Sequence[Mount]) -> Path | None:
    """The ``fs`` directory of a parentless overlayfs snapshot (a single bind mount)."""
    if len(mounts) != 1 or mounts[0].type != "bind":
        return None
    return Path(mounts[0].source)


def _upper_and_lowers(mounts: Sequence[Mount]) -> tuple[Path, list[Path]]:
    if len(mounts) != 1 or mounts[0].type != "overlay":
        raise InvalidInputError(f"expected one overlay mount, containerd gave {list(mounts)}")
    opts = mounts[0].options
    upper = [o.split("=", 1)[1] for o in opts if o.startswith("upperdir=")]
    lower = [o.split("=", 1)[1] for o in opts if o.startswith("lowerdir=")]
    if not upper:
        raise InvalidInputError(f"containerd's overlay mount has no upperdir: {opts}")
    return Path(upper[0]), [Path(p) for p in lower[0].split(":")] if lower else []


def _with_hints(mounts: Sequence[Mount], fs: Path) -> builtins.list[Mount]:
    """A staged snapshot's mounts as the applier must see them: overlay mode, and the file
    for the directories it creates implicitly."""
    log = fs.parent / IMPLICIT_DIRS_FILE
    m = mounts[0]
    return [Mount(m.type, m.source,
                  (*m.options, WHITEOUT_OVERLAY_OPTION, IMPLICIT_DIRS_OPTION + str(log)))]


class StagedSnapshotter:
    """The Snapshotter protocol over containerd's ``overlayfs`` with standalone layers (see
    the module docstring)."""

    def __init__(self, inner: ContainerdSnapshotter) -> None:
        self.inner = inner
        self.client = inner.client
        #: key -> the staged fs directory (parentless prepares of this process)
        self._staged: dict[str, Path] = {}
        self._local: bool | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def usage_per_layer(self) -> bool:
        return self.inner.usage_per_layer

    @property
    def local_dir(self) -> Path | None:
        return self.inner.local_dir

    @property
    def standalone_layers(self) -> bool:
        """True when containerd's snapshot directories are on this machine (introspection's
        ``root`` of the snapshotter plugin is a directory here); asked once."""
        with self._lock:
            if self._local is None:
                root = self.client.plugin_exports(SNAPSHOTTER_PLUGIN, self.name).get("root")
                self._local = root is not None and Path(root, "snapshots").is_dir()
            return self._local

    def stat(self, key: str) -> SnapshotInfo:
        return self.inner.stat(key)

    def update(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        return self.inner.update(key, labels)

    def usage(self, key: str) -> Usage:
        return self.inner.usage(key)

    def mounts(self, key: str) -> builtins.list[Mount]:
        mounts = self.inner.mounts(key)
        fs = self._staged.get(key)
        return mounts if fs is None else _with_hints(mounts, fs)

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self.inner.view(key, parent, labels=labels)

    def walk(self, *, filters: Sequence[str] = ()) -> Iterator[SnapshotInfo]:
        return self.inner.walk(filters=filters)

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        mounts = self.inner.prepare(key, parent, labels=labels)
        fs = staged_dir(mounts) if not parent and self.standalone_layers else None
        if fs is None:
            return mounts
        self._staged[key] = fs
        return _with_hints(mounts, fs)

    def commit(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        fs = self._staged.get(key)
        if fs is None:
            self.inner.commit(name, key, labels=labels, parent=parent)
            self._staged.pop(key, None)
            return
        log = fs.parent / IMPLICIT_DIRS_FILE
        marks = Path(str(log) + OVERLAY_MARKS_SUFFIX)
        if not parent:  # "" or None (kept from prepare: none): a bottom layer
            if marks.exists():
                undo_overlay_marks(fs)
            for f in (log, marks):
                with suppress(FileNotFoundError):
                    f.unlink()
            self.inner.commit(name, key, labels=labels)
            self._staged.pop(key, None)
            return
        real = f"{key}-on-parent"
        info = self.inner.stat(key)
        mounts = self.inner.prepare(real, parent, labels=dict(info.labels))
        try:
            upper, lowers = _upper_and_lowers(mounts)
            for entry in os.listdir(fs):
                os.rename(fs / entry, upper / entry)
            try:
                implicit = log.read_bytes()
            except FileNotFoundError:
                implicit = b""
            if implicit:
                copy_lower_dir_metadata(upper, implicit.split(b"\0"), lowers)
            self.inner.commit(name, real, labels=labels)
        except BaseException:
            with suppress(Exception):  # the original error matters more
                self.inner.remove(real)
            raise
        self._staged.pop(key, None)
        with suppress(Exception):  # committed; a stage left behind is collected later
            self.inner.remove(key)

    def remove(self, key: str) -> None:
        self._staged.pop(key, None)
        self.inner.remove(key)
