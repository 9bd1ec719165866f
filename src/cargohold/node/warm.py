"""Warm: unpack a store's fetched-only images in the background, most valuable first.

On a running node (the other half of ``bake``'s trade) :class:`Warmer`:

1. **gathers** the images: those a spec names, or (no spec) every image record ``bake``
   labelled with its priority (:mod:`cargohold.node.warmorder`); one item per image target;
2. **sizes** each: the layers whose chains are not committed yet and their unpacked bytes
   (read off the blobs: gzip trailer, zstd frame header; else estimated at the store's
   measured ratio), hence the expected seconds at the calibrated throughput. Images whose
   top chain is committed are skipped ("already unpacked");
3. **orders** the rest by weighted shortest processing time (:func:`wspt_order`);
4. **unpacks** them one after another with the library's :class:`Unpacker` (the same path as
   ``unpack``; ``jobs`` layers at once where the snapshotter allows), checking before each
   image that its expected bytes leave ``floor`` bytes free on the store's file system; the
   first image that would cross it, and every one after it, stays cold. The applier's
   reserve (``reserve_bytes``, raised to the floor) enforces the floor while writing, when
   the estimate was short: that image's half-applied snapshot is removed and the warm stops.
   An image another unpack is applying right now (CRI for a waiting container: an active
   snapshot labelled with one of its chain IDs) is put back once to the end of the queue;
   one found unpacked by then is skipped ("unpacked meanwhile").

A layer blob missing from the content store fails that image (the others are warmed); a
daemon that goes away stops the warm (:class:`UnavailableError`); an interrupt (Ctrl-C,
SIGTERM) removes the half-applied snapshot (the Unpacker does) and propagates. Every step
is idempotent: a rerun continues, a run with nothing to do says so.

Safe alongside kubelet: containerd's CRI (or ``ctr run``) unpacking the same image at the
same time commits the same chain IDs; whichever commit comes second finds the name taken
and uses the other's snapshot (the Unpacker removes its own; containerd's unpacker does
the same), so one set of snapshots remains.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.bake.catalog import local_tar_size, unpack_ratio
from cargohold.bake.plan import DEFAULT_MODEL, DEFAULT_UNPACK_RATIO, CostModel, estimate_unpacked
from cargohold.bake.spec import CacheSpec
from cargohold.errors import (
    CargoholdError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
    UnavailableError,
)
from cargohold.labels import LABEL_SNAPSHOT_REF
from cargohold.node.disk import fs_space
from cargohold.node.warmorder import expected_seconds, parse_record_labels, wspt_order
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.pull.fetch import image_name
from cargohold.store.interfaces import (
    KIND_ACTIVE,
    ImageStore,
    SnapshotInfo,
    Store,
)
from cargohold.units import format_size
from cargohold.unpack.image import (
    EXTRACT_PREFIX,
    Unpacker,
    UnpackEvents,
    UnpackResult,
)
from cargohold.unpack.resolve import highest_committed, resolve_image

__all__ = [
    "WarmEvents",
    "WarmItem",
    "WarmReport",
    "Warmer",
    "items_from_records",
    "items_from_spec",
    "warm_lock",
]

PENDING, WARMED, SKIPPED, FAILED, COLD = "pending", "warmed", "skipped", "failed", "cold"


@dataclass
class WarmItem:
    """One image to warm and what became of it."""

    name: str
    priority: float
    critical: bool
    platforms: tuple[Platform | None, ...] = (None,)
    target: Descriptor | None = None
    #: Expected unpacked bytes of the layers not unpacked yet, and seconds to unpack them.
    bytes_expected: int = 0
    seconds: float = 0.0
    layers_missing: int = 0
    #: Chain IDs of the layers not unpacked yet (when sized).
    chains_missing: frozenset[str] = frozenset()
    status: str = PENDING
    reason: str = ""
    error: CargoholdError | None = None
    results: list[UnpackResult] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def bytes_unpacked(self) -> int:
        return sum(r.bytes_uncompressed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "priority": self.priority,
            "critical": self.critical,
            "digest": str(self.target.digest) if self.target else None,
            "layers_missing": self.layers_missing,
            "expected_bytes": self.bytes_expected,
            "expected_seconds": round(self.seconds, 3),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.error is not None:
            out["error"] = {"error": self.error.kind, "message": self.error.message,
                            "exit_code": self.error.exit_code}
        if self.status == WARMED:
            out["bytes"] = self.bytes_unpacked
            out["seconds"] = round(self.elapsed, 3)
        return out


@dataclass
class WarmReport:
    items: list[WarmItem]
    order: list[str] = field(default_factory=list)
    seconds: float = 0.0
    floor: int | None = None
    floor_path: str | None = None
    #: Set when the applier's reserve stopped the warm while writing.
    out_of_space: OutOfSpaceError | None = None

    def having(self, status: str) -> list[WarmItem]:
        return [i for i in self.items if i.status == status]

    @property
    def nothing_to_do(self) -> bool:
        return not self.order and not self.having(FAILED)

    @property
    def bytes(self) -> int:
        return sum(i.bytes_unpacked for i in self.having(WARMED))

    def to_json(self) -> dict[str, Any]:
        def brief(i: WarmItem) -> dict[str, Any]:
            return {"name": i.name, "reason": i.reason}

        return {
            "images_warmed": len(self.having(WARMED)),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "nothing_to_do": self.nothing_to_do,
            "order": self.order,
            "keep_free_bytes": self.floor,
            "keep_free_path": self.floor_path,
            "warmed": [i.to_json() for i in self.having(WARMED)],
            "skipped": [brief(i) for i in self.having(SKIPPED)],
            "cold": [brief(i) for i in self.having(COLD)],
            "failed": [i.to_json() for i in self.having(FAILED)],
        }


class WarmEvents:
    """Progress callbacks (the CLI subclasses it)."""

    def planned(self, order: Sequence[WarmItem]) -> None: ...

    def started(self, item: WarmItem) -> None: ...

    def finished(self, item: WarmItem) -> None:
        """The item is warmed or failed."""

    def cold(self, items: Sequence[WarmItem], reason: str) -> None: ...


# ---------------------------------------------------------------- what to warm


def _platforms(given: Sequence[Platform]) -> tuple[Platform | None, ...]:
    return tuple(given) if given else (None,)


def items_from_spec(spec: CacheSpec, images: ImageStore,
                    default_platforms: Sequence[Platform] = ()) -> list[WarmItem]:
    """The spec's images (priority and critical from the spec); those without a record are
    skipped ("not fetched")."""
    out: list[WarmItem] = []
    seen: set[str] = set()
    for e in spec.images:
        name = image_name(e.ref)
        if name in seen:
            continue
        seen.add(name)
        item = WarmItem(name, e.priority, e.critical,
                        _platforms(spec.platforms_for(e) or tuple(default_platforms)))
        try:
            item.target = images.get(name).target
        except NotFoundError:
            item.status, item.reason = SKIPPED, "not fetched (no image record)"
        out.append(item)
    return out


def items_from_records(images: ImageStore,
                       default_platforms: Sequence[Platform] = ()) -> tuple[list[WarmItem], int]:
    """The images bake labelled (one item per target; the first name in sort order), and
    how many records carry no bake labels (not warmed without a spec)."""
    by_target: dict[str, WarmItem] = {}
    unlabelled = 0
    for img in sorted(images.list(), key=lambda i: i.name):
        parsed = parse_record_labels(img.labels)
        if parsed is None:
            unlabelled += 1
            continue
        key = str(img.target.digest)
        if key not in by_target:
            by_target[key] = WarmItem(img.name, parsed[0], parsed[1],
                                      _platforms(default_platforms), target=img.target)
    return list(by_target.values()), unlabelled


@contextmanager
def warm_lock(path: Path) -> Iterator[None]:
    """One warm per store at a time (ConflictError if another holds ``path``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InvalidInputError(f"cannot create the warm lock {path}: {e.strerror or e}",
                                hint="give --root a directory this user can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(f"another cargohold warm is running on this store ({path})",
                                hint="wait for it to finish; it warms the same images") from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the warmer


@dataclass
class WarmOptions:
    jobs: int = 1
    reserve: int = 0
    #: Free bytes to keep on the store's file system (None: no floor).
    floor: int | None = None
    floor_path: Path | None = None
    model: CostModel = DEFAULT_MODEL


class Warmer:
    """Warms ``items`` into ``store`` (``content``, ``snapshots``, ``applier``); see the
    module docstring. ``unpack_scope``: wraps the unpacks (a lease on containerd)."""

    def __init__(
        self,
        store: Store,
        items: list[WarmItem],
        options: WarmOptions,
        *,
        events: WarmEvents | None = None,
        layer_events: UnpackEvents | None = None,
        unpack_scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.store = store
        self.items = items
        self.options = options
        self.events = events or WarmEvents()
        self.layer_events = layer_events
        self.unpack_scope = unpack_scope
        self._ratio: float | None = None

    def _unpack_ratio(self) -> float:
        if self._ratio is None:
            try:
                self._ratio = unpack_ratio(self.store).value
            except CargoholdError:
                self._ratio = DEFAULT_UNPACK_RATIO
        return self._ratio

    def size(self, item: WarmItem) -> None:
        """Fill in what ``item`` still needs (or skip it when unpacked, fail it when its
        manifest or config is missing)."""
        assert item.target is not None
        content, sn = self.store.content, self.store.snapshots
        missing = 0
        nbytes = 0
        chains: set[str] = set()
        try:
            for p in item.platforms:
                img = resolve_image(content, item.target, p)
                base = highest_committed(sn, img.chain_ids)
                for layer in img.layers[base + 1:]:
                    size = local_tar_size(content, layer)
                    nbytes += size if size is not None else estimate_unpacked(
                        layer.size, self._unpack_ratio())
                missing += len(img.chain_ids) - base - 1
                chains.update(img.chain_ids[base + 1:])
        except UnavailableError:
            raise
        except CargoholdError as e:
            _fail(item, e)
            return
        item.layers_missing = missing
        item.chains_missing = frozenset(chains)
        item.bytes_expected = nbytes
        item.seconds = expected_seconds(nbytes, self.options.model)
        if missing == 0:
            item.status, item.reason = SKIPPED, "already unpacked"

    def run(self) -> WarmReport:
        start = time.monotonic()
        opts = self.options
        report = WarmReport(self.items, floor=opts.floor,
                            floor_path=str(opts.floor_path) if opts.floor_path else None)
        for item in self.items:
            if item.status == PENDING:
                self.size(item)
        order = wspt_order(i for i in self.items if i.status == PENDING)
        report.order = [i.name for i in order]
        self.events.planned(order)
        try:
            if order:
                self._warm(order, report)
        finally:
            report.seconds = time.monotonic() - start
        return report

    def _warm(self, order: list[WarmItem], report: WarmReport) -> None:
        opts = self.options
        reserve = max(opts.reserve, opts.floor or 0)
        # The applier (and a flat snapshotter's copy) check the reserve while writing.
        self.store.raise_reserve(reserve)
        with (
            self.unpack_scope(),
            Unpacker(self.store.content, self.store.snapshots, self.store.applier,
                     jobs=opts.jobs, reserve_bytes=reserve,
                     events=self.layer_events) as unpacker,
        ):
            queue = deque(order)
            deferred: set[str] = set()
            while queue:
                item = queue.popleft()
                if queue and item.name not in deferred and self._busy_elsewhere(item):
                    # containerd's CRI (or another unpack) is on it: its container is waiting
                    # for that unpack; unpacking the same layers alongside only slows both.
                    deferred.add(item.name)
                    queue.append(item)
                    continue
                why = self._over_floor(item)
                if why:
                    self._go_cold([item, *queue], why)
                    return
                self.events.started(item)
                t0 = time.monotonic()
                try:
                    for p in item.platforms:
                        assert item.target is not None
                        item.results.append(unpacker.unpack(item.target, p))
                except OutOfSpaceError as e:
                    report.out_of_space = e
                    self._go_cold([item, *queue], f"the disk or the free-space floor was "
                                                  f"reached while unpacking: {e.message}")
                    return
                except UnavailableError:
                    raise  # the daemon went away: every other image would fail the same way
                except CargoholdError as e:
                    _fail(item, e)
                except Exception as e:  # one image's bug must not take the others down
                    _fail(item, CargoholdError(f"warming {item.name} failed: {e!r}"))
                else:
                    if all(r.already_unpacked for r in item.results):
                        item.status, item.reason = SKIPPED, "unpacked meanwhile by another unpack"
                    else:
                        item.status = WARMED
                item.elapsed = time.monotonic() - t0
                self.events.finished(item)

    def _busy_elsewhere(self, item: WarmItem) -> bool:
        """Whether another unpack (CRI's, ``ctr run``'s) is applying one of the item's missing
        layers now: an active snapshot labelled with one of its chain IDs, or an unpacker's
        ``extract-<unique> <chain ID>`` key (containerd's own). Between images this warm has
        none of its own."""
        if not item.chains_missing:
            return False

        def on_it(info: SnapshotInfo) -> bool:
            if info.kind != KIND_ACTIVE:
                return False
            if info.labels.get(LABEL_SNAPSHOT_REF) in item.chains_missing:
                return True
            return info.name.startswith(EXTRACT_PREFIX) and any(
                info.name.endswith(c) for c in item.chains_missing)

        try:
            return any(on_it(info) for info in self.store.snapshots.walk())
        except UnavailableError:
            raise
        except CargoholdError:
            return False

    def _over_floor(self, item: WarmItem) -> str:
        opts = self.options
        if opts.floor is None or opts.floor_path is None:
            return ""
        free = fs_space(opts.floor_path).free
        if free - item.bytes_expected >= opts.floor:
            return ""
        return (f"unpacking {item.name} (about {format_size(item.bytes_expected)}) would leave "
                f"less than the {format_size(opts.floor)} to keep free on "
                f"{opts.floor_path} ({format_size(free)} free)")

    def _go_cold(self, items: Sequence[WarmItem], reason: str) -> None:
        for i in items:
            i.status, i.reason = COLD, reason
        self.events.cold(items, reason)


def _fail(item: WarmItem, error: CargoholdError) -> None:
    item.status = FAILED
    item.error = error
    item.reason = error.message
