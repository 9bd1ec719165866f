"""Scratch stores for measurements (`calibrate`, `bench`): throw-away stores of the kind the
user configured, on the same disk or the same containerd, that share nothing with the
user's images.

Every scratch store has a local directory ``<root>/tmp/<purpose>-<random>/`` (on the file
system of the user's store, so it is measured on the same disk), holding ``work/`` (for
building sample images) and a ``scratch.lock`` flock held while the scratch is in use:

* **embedded**: the store itself is ``<dir>/store`` (same file system, so the same
  snapshotter backend, overlay or flat, and the same ``reserve``); the user's root lock is
  held shared meanwhile, as every normal command does. Afterwards the directory is removed.
* **containerd**: a namespace ``cargohold-<purpose>-<random>`` (labelled
  ``io.cargohold.scratch=<purpose>``) of the configured containerd, its name also written to
  ``<dir>/containerd-namespace``. Everything is written under a lease (1 h expiry, so even a
  killed run's content and snapshots become garbage). Afterwards the namespace's images,
  snapshots, ingests, blobs and leases are deleted, one synchronous garbage collection frees
  the disk, and the namespace is deleted.

``keep=True`` leaves both for inspection (and a ``KEEP`` file in the directory). A run that
was killed leaves its directory without a held lock and without ``KEEP``: the next scratch
opened under the same root removes it (and, on containerd, clears its namespace).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold.bake.catalog import chain_layer_sizes
from cargohold.errors import AlreadyExistsError, CargoholdError, ConflictError, NotFoundError
from cargohold.labels import LABEL_SCRATCH
from cargohold.leasing import leased
from cargohold.settings import Settings
from cargohold.store.embedded.lock import RootLock
from cargohold.store.interfaces import ContentStore, Snapshotter, active_lease
from cargohold.store.open import LocalStore, reserve_bytes

if TYPE_CHECKING:
    from cargohold.imagebuild.image import BuiltImage
    from cargohold.store.containerd.store import ContainerdStore
    from cargohold.unpack.image import UnpackResult

__all__ = [
    "PURPOSES",
    "SCRATCH_DIR",
    "Scratch",
    "clear_namespace",
    "import_blobs",
    "median",
    "open_scratch",
    "remove_all_snapshots",
    "remove_stale",
    "unpacked_bytes",
]

#: Under the store root: where scratch directories go.
SCRATCH_DIR = "tmp"
#: Prefixes of scratch directories (and namespaces: ``cargohold-<purpose>-...``).
PURPOSES = ("calibrate", "bench")
LOCK_FILE = "scratch.lock"
KEEP_FILE = "KEEP"
NAMESPACE_FILE = "containerd-namespace"
#: A scratch directory without its lock file (killed between mkdir and lock) this old is stale.
_UNLOCKED_GRACE = 600.0
SCRATCH_LEASE_EXPIRY = timedelta(hours=1)

Warn = Callable[[str], None]


def _no_warn(msg: str) -> None:
    return None


@dataclass
class Scratch:
    """An open scratch store; ``store`` has ``content``, ``images``, ``leases``,
    ``snapshots`` and ``applier`` like :func:`~cargohold.store.open.open_store`'s."""

    kind: str
    store: LocalStore | ContainerdStore
    dir: Path
    namespace: str = ""
    address: str = ""
    #: A directory for building sample images (removed with the scratch).
    workdir: Path = field(default_factory=Path)

    @property
    def where(self) -> str:
        """The scratch store for people: its root, or its namespace and socket."""
        if self.kind == "containerd":
            return f"containerd namespace {self.namespace} at {self.address}"
        return str(self.dir / "store")


def remove_all_snapshots(sn: Snapshotter) -> None:
    """Remove every snapshot of ``sn`` (children before their parents)."""
    infos = {i.name: i for i in sn.walk()}
    while infos:
        parents = {i.parent for i in infos.values() if i.parent}
        leaves = [n for n in infos if n not in parents]
        if not leaves:  # pragma: no cover - a cycle cannot happen
            raise CargoholdError(f"cannot remove snapshots {sorted(infos)}: no leaf")
        for name in leaves:
            with contextlib.suppress(NotFoundError):
                sn.remove(name)
            del infos[name]


def clear_namespace(store: ContainerdStore, *, delete_namespace: bool = True) -> None:
    """Delete everything of ``store``'s namespace (images, snapshots of its snapshotter,
    ingests, blobs, leases), run one synchronous garbage collection, then delete the
    namespace itself. Only for scratch namespaces."""
    token = active_lease.set(None)
    try:
        for img in store.images.list():
            with contextlib.suppress(NotFoundError):
                store.images.delete(img.name)
        remove_all_snapshots(store.snapshots)
        for st in store.content.list_statuses():
            with contextlib.suppress(NotFoundError):
                store.content.abort(st.ref)
        for info in list(store.content.walk()):
            with contextlib.suppress(NotFoundError):
                store.content.delete(info.digest)
        for lease in store.leases.list():
            with contextlib.suppress(NotFoundError):
                store.leases.delete(lease.id)
        # Deleting a lease synchronously runs containerd's garbage collector and waits for
        # it: the blobs and snapshot directories deleted above leave the disk now.
        store.collect_garbage()
        if delete_namespace:
            client = store.client
            client.call(
                client.namespaces_stub.Delete,
                client.api.namespaces.DeleteNamespaceRequest(name=store.namespace),
                what=f"delete namespace {store.namespace}",
            )
    finally:
        active_lease.reset(token)


def _create_namespace(store: ContainerdStore, purpose: str) -> None:
    client = store.client
    ns_pb = client.api.namespaces
    client.call(
        client.namespaces_stub.Create,
        ns_pb.CreateNamespaceRequest(
            namespace=ns_pb.Namespace(name=store.namespace, labels={LABEL_SCRATCH: purpose})
        ),
        what=f"create namespace {store.namespace}",
    )


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created), or None if someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale(s: Settings, warn: Warn = _no_warn) -> list[Path]:
    """Remove scratch directories of killed runs under ``<root>/tmp`` (no ``KEEP`` file, lock
    free); on containerd, also clear the namespace such a directory names (same socket)."""
    base = Path(s.root) / SCRATCH_DIR
    removed: list[Path] = []
    try:
        entries = sorted(base.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for d in entries:
        if not d.is_dir() or d.is_symlink() or (d / KEEP_FILE).exists():
            continue
        if not any(d.name.startswith(f"{p}-") for p in PURPOSES):
            continue
        lock = d / LOCK_FILE
        if not lock.exists():
            try:
                if time.time() - d.stat().st_mtime < _UNLOCKED_GRACE:
                    continue
            except FileNotFoundError:
                continue
        try:
            fd = _try_lock(lock)
        except OSError:
            continue
        if fd is None:
            continue  # in use
        try:
            if not _clear_recorded_namespace(s, d, warn):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        finally:
            os.close(fd)
    return removed


def _clear_recorded_namespace(s: Settings, d: Path, warn: Warn) -> bool:
    """Clear the containerd namespace a stale scratch directory names; False to keep the
    directory (its namespace could not be cleared, so it still records it)."""
    try:
        rec = json.loads((d / NAMESPACE_FILE).read_text())
        ns, address = str(rec["namespace"]), str(rec["address"])
        snapshotter = str(rec.get("snapshotter", s.snapshotter))
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unreadable: nothing we could clear
    if not ns.startswith(tuple(f"cargohold-{p}-" for p in PURPOSES)):
        return True
    if s.store != "containerd" or address != s.address:
        return False  # another containerd: leave the record for a run that can reach it
    from cargohold.store.containerd.store import ContainerdStore

    try:
        with ContainerdStore(address, ns, snapshotter) as store:
            clear_namespace(store)
    except NotFoundError:
        return True  # the namespace is gone already
    except CargoholdError as e:
        warn(f"could not remove the scratch namespace {ns} of an earlier run: {e.message}")
        return False
    return True


@contextmanager
def open_scratch(
    s: Settings, purpose: str, *, keep: bool = False, warn: Warn = _no_warn
) -> Iterator[Scratch]:
    """A scratch store of the kind ``s.store`` says (see the module docstring)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown scratch purpose {purpose!r}")
    root = Path(s.root)
    reserve = reserve_bytes(s)
    base = root / SCRATCH_DIR
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(s, warn)
    name = f"{purpose}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    d = base / name
    d.mkdir(mode=0o700, parents=True)  # parents: another run may have removed an empty base
    fd = _try_lock(d / LOCK_FILE)
    assert fd is not None  # a new directory: nobody else knows it
    workdir = d / "work"
    workdir.mkdir()
    try:
        if s.store == "containerd":
            with _containerd_scratch(s, purpose, d, keep=keep, warn=warn) as scratch:
                scratch.workdir = workdir
                yield scratch
        else:
            with (
                RootLock(root, exclusive=False, wait=True),
                LocalStore(d / "store", reserve_bytes=reserve) as store,
            ):
                yield Scratch("embedded", store, d, workdir=workdir)
    finally:
        try:
            if keep:
                shutil.rmtree(workdir, ignore_errors=True)
                (d / KEEP_FILE).write_text("kept by --keep; remove this directory by hand\n")
            elif (d / NAMESPACE_FILE).exists():
                # A containerd namespace that could not be cleared: keep its record (the
                # lock goes with this process, so the next scratch clears it).
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                shutil.rmtree(d, ignore_errors=True)
                if d.exists():
                    warn(f"could not remove the scratch directory {d}")
                with contextlib.suppress(OSError):
                    base.rmdir()  # only when empty: other runs' directories stay
        finally:
            os.close(fd)


@contextmanager
def _containerd_scratch(
    s: Settings, purpose: str, d: Path, *, keep: bool, warn: Warn
) -> Iterator[Scratch]:
    from cargohold.store.containerd.store import ContainerdStore

    for _ in range(5):
        ns = f"cargohold-{purpose}-{secrets.token_hex(6)}"
        store = ContainerdStore(s.address, ns, s.snapshotter)
        try:
            _create_namespace(store, purpose)
        except AlreadyExistsError:
            store.close()
            continue
        except BaseException:
            store.close()
            raise
        break
    else:  # pragma: no cover - 48 random bits collide five times
        raise ConflictError("could not create a scratch namespace")
    with store:
        # Recorded before anything is written: a killed run's namespace is found again.
        (d / NAMESPACE_FILE).write_text(json.dumps(
            {"address": s.address, "namespace": ns, "snapshotter": s.snapshotter}) + "\n")
        ok = False
        try:
            # With --keep, image records and the unpacker's gc labels keep what is worth
            # keeping once the lease is gone; without, the namespace is cleared below.
            with leased(store, purpose, expire=SCRATCH_LEASE_EXPIRY, quiet=True):
                yield Scratch("containerd", store, d, namespace=ns, address=s.address)
            ok = True
        finally:
            if not keep:
                try:
                    clear_namespace(store)
                except CargoholdError as e:
                    # The directory stays with the namespace's name: the next run clears it.
                    if ok:
                        warn(f"could not remove the scratch namespace {ns}: {e.message}")
                else:
                    with contextlib.suppress(FileNotFoundError):
                        (d / NAMESPACE_FILE).unlink()


# ---------------------------------------------------------------- measuring helpers


def median(values: list[float]) -> float:
    """The median (mean of the middle two for an even count); 0.0 for none."""
    v = sorted(values)
    if not v:
        return 0.0
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def import_blobs(content: ContentStore, built: BuiltImage, *, chunk: int = 1 << 20) -> int:
    """Write a built image's blobs into ``content`` (verified by the store on commit);
    returns the bytes written (blobs already present are skipped)."""
    written = 0
    for desc in built.blobs_in_push_order():
        try:
            if content.info(desc.digest).size == desc.size:
                continue
        except NotFoundError:
            pass
        ref = f"scratch-{desc.digest.algorithm}-{desc.digest.hex}"
        try:
            with content.writer(ref, total=desc.size, expected=desc.digest) as w, \
                    built.open(desc.digest) as f:
                w.truncate(0)
                while data := f.read(chunk):
                    w.write(data)
                w.commit(desc.size, desc.digest)
        except AlreadyExistsError:
            continue
        written += desc.size
    return written


def unpacked_bytes(snapshots: Snapshotter, result: UnpackResult) -> int:
    """The unpacked size of an unpacked image as the planner counts it: the snapshotter's
    usage of each layer (:func:`~cargohold.bake.catalog.chain_layer_sizes`); the tar bytes applied when a layer's usage is
    unknown."""
    sizes = chain_layer_sizes(snapshots, [lo.chain_id for lo in result.layers])
    if not sizes or any(s is None for s in sizes):
        return result.bytes_uncompressed
    return sum(s for s in sizes if s is not None)
