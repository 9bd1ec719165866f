"""Carrying out an eviction plan on a store: demote (remove unpacked chains, keep the record
and its compressed content) and delete (remove the records; gc takes the content)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import CargoholdError, NotFoundError
from cargohold.images.content import image_contents
from cargohold.labels import snapshot_gc_label
from cargohold.node.evict_plan import EvictAction, EvictPlan
from cargohold.store.interfaces import Snapshotter, Store

__all__ = ["EvictOutcome", "carry_out"]


@dataclass
class EvictOutcome:
    action: EvictAction
    #: Chains actually removed (top first) and their planned bytes.
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    records_deleted: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_json(self) -> dict[str, Any]:
        return {
            **self.action.to_json(),
            "removed_chains": list(self.removed),
            "removed_bytes": self.removed_bytes,
            "records_deleted": list(self.records_deleted),
            "ok": self.ok,
            "error": self.error,
        }


def _unlabel_configs(store: Store, action: EvictAction, snapshotter: str) -> dict[Any, str]:
    """Drop the config blobs' ``gc.ref.snapshot.<snapshotter>`` labels that name a chain this
    demotion removes (so gc and verify see a fetched-only image, not a broken one); returns
    what was dropped (config digest -> chain) to put back if the removal fails."""
    key = snapshot_gc_label(snapshotter)
    gone = set(action.chains)
    dropped: dict[Any, str] = {}
    contents = image_contents(store.content, _target(store, action))
    for _, m in contents.manifests:
        try:
            info = store.content.info(m.config.digest)
        except NotFoundError:
            continue
        chain = info.labels.get(key)
        if chain in gone:
            store.content.update(m.config.digest, {key: None})
            dropped[m.config.digest] = chain
    return dropped


def _relabel_if_kept(store: Store, snapshots: Snapshotter, dropped: dict[Any, str]) -> None:
    """Put back the labels of configs whose chain is still there after a failed removal."""
    key = snapshot_gc_label(snapshots.name)
    for digest, chain in dropped.items():
        try:
            snapshots.stat(chain)
        except NotFoundError:
            continue
        store.content.update(digest, {key: chain})


def _target(store: Store, action: EvictAction) -> Any:
    return store.images.get(action.image.names[0]).target


def carry_out(
    store: Store,
    snapshots: Snapshotter | None,
    plan: EvictPlan,
    *,
    on_done: Callable[[EvictOutcome], None] | None = None,
) -> list[EvictOutcome]:
    """Demote and delete as planned, one image after another. A failure (a chain removed by
    someone else, a container started meanwhile, containerd restarted) ends that image's
    action with an error; the image is left ``partial`` and the next run finishes it."""
    out: list[EvictOutcome] = []
    for action in plan.actions:
        res = EvictOutcome(action)
        try:
            if action.action == "demote":
                assert snapshots is not None  # chains to demote come from the snapshotter
                _demote(store, snapshots, action, res)
            else:
                _delete(store, snapshots, action, res)
        except CargoholdError as e:
            res.error = e.message
        out.append(res)
        if on_done is not None:
            on_done(res)
    return out


def _demote(store: Store, snapshots: Snapshotter, action: EvictAction, res: EvictOutcome) -> None:
    dropped = _unlabel_configs(store, action, snapshots.name)
    try:
        _remove_chains(snapshots, action, res)
    except CargoholdError:
        _relabel_if_kept(store, snapshots, dropped)
        raise


def _remove_chains(snapshots: Snapshotter, action: EvictAction, res: EvictOutcome) -> None:
    """Remove the chains top first; one that is gone already counts as removed."""
    for chain in action.chains:
        try:
            size = int(snapshots.usage(chain).size)
        except NotFoundError:
            size = 0
        with contextlib.suppress(NotFoundError):
            snapshots.remove(chain)
        res.removed.append(chain)
        res.removed_bytes += size


def _delete(store: Store, snapshots: Snapshotter | None, action: EvictAction, res: EvictOutcome) -> None:
    if action.chains and snapshots is not None:
        _unlabel_configs(store, action, snapshots.name)
        _remove_chains(snapshots, action, res)
    for name in action.image.names:
        with contextlib.suppress(NotFoundError):
            store.images.delete(name)
        res.records_deleted.append(name)
