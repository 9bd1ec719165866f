"""Which images to demote (drop unpacked snapshots) and delete to free disk: pure logic.

Value of an image = priority / expected unpack seconds; ``warm`` unpacks the most valuable
first (:func:`cargohold.node.warmorder.wspt_order`), evict goes the exact other way
(:func:`evict_order`), least valuable first: large, unimportant images go before small,
important ones.

* **Tier 1, demote**: an image that is unpacked, not critical, not pinned and not in use
  loses its committed chains from the top down, as far as no image that stays unpacked and
  no active snapshot (container, unpack in progress) needs them. What that frees is the usage
  of exactly those chains, so an image sharing its base with a kept image frees only its own
  layers, and one whose top chain a kept image needs frees nothing and is passed over (a
  later pass takes it if the sharer goes too).
* **Tier 2, delete** (only when asked): whole images, lowest value first, never critical,
  pinned or in use; what that frees is its exclusive content and the snapshots no other image
  needs.

Stops as soon as the bytes asked for are freed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cargohold.bake.plan import DEFAULT_UNPACK_RATIO, CostModel
from cargohold.node.inventory import ImageState, Inventory
from cargohold.node.warmorder import expected_seconds, wspt_order

__all__ = ["EvictAction", "EvictPlan", "evict_order", "plan_evict", "value"]

def unpack_size(img: ImageState) -> int:
    """The bytes ``warm`` would write to unpack ``img`` again after a demotion: its own
    snapshots when unpacked (a base it shares stays for the other images, as warm prices only
    missing layers; all of them when every chain is shared, e.g. two names of one stack),
    else its compressed size at the planner's default ratio."""
    if img.tier == "unpacked":
        return img.snapshot_exclusive or img.snapshot_bytes
    return max(img.snapshot_bytes, int(img.content_bytes * DEFAULT_UNPACK_RATIO))


@dataclass(frozen=True)
class _Weighted:
    """An image as warm's order sees it (:class:`cargohold.node.warmorder.Weighted`)."""

    image: ImageState
    seconds: float

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def priority(self) -> float:
        return self.image.priority

    @property
    def critical(self) -> bool:
        return self.image.critical


def value(img: ImageState, model: CostModel) -> float:
    """priority / expected unpack seconds: what keeping it unpacked is worth per second."""
    seconds = expected_seconds(unpack_size(img), model)
    return img.priority / seconds if seconds > 0 else math.inf


def evict_order(images: Iterable[ImageState], model: CostModel) -> list[ImageState]:
    """Least valuable first: warm's order (:func:`cargohold.node.warmorder.wspt_order`) reversed."""
    items = [_Weighted(i, expected_seconds(unpack_size(i), model)) for i in images]
    return [w.image for w in wspt_order(items, reverse=True)]


@dataclass
class EvictAction:
    #: "demote" or "delete".
    action: str
    image: ImageState
    #: Committed chains to remove, top first.
    chains: list[str]
    #: Bytes this frees (snapshot usage; content for a delete), as planned.
    bytes: int
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "image": self.image.name,
            "names": list(self.image.names),
            "digest": self.image.digest,
            "priority": self.image.priority,
            "chains": list(self.chains),
            "bytes": self.bytes,
            "reason": self.reason,
        }


@dataclass
class EvictPlan:
    needed: int
    actions: list[EvictAction] = field(default_factory=list)
    #: Images left alone, with why (critical, pinned, in use, shares its layers).
    kept: list[tuple[ImageState, str]] = field(default_factory=list)

    @property
    def planned_bytes(self) -> int:
        return sum(a.bytes for a in self.actions)

    @property
    def reaches_target(self) -> bool:
        return self.planned_bytes >= self.needed

    def to_json(self) -> dict[str, Any]:
        return {
            "needed_bytes": self.needed,
            "planned_bytes": self.planned_bytes,
            "reaches_target": self.reaches_target,
            "actions": [a.to_json() for a in self.actions],
            "kept": [{"image": i.name, "reason": r} for i, r in self.kept],
        }


def _protected(img: ImageState) -> str:
    if img.critical:
        return "critical"
    if img.pinned:
        return "pinned"
    if img.users:
        return "in use by " + ", ".join(img.users[:3]) + ("…" if len(img.users) > 3 else "")
    return ""


def _removable_top(img: ImageState, inv: Inventory, live: set[str],
                   together: set[str] | None = None) -> list[str]:
    """The chains of ``img`` to remove, top first: walk each stack down from its top while the
    chain is committed, not busy and no live (staying unpacked) image has it, other than the
    images demoted ``together`` with it."""
    along = {img.digest} | (together or set())
    out: list[str] = []
    for stack in img.stacks:
        for c in reversed(stack):
            if c not in inv.chain_sizes or c in out:
                break
            if c in inv.busy_chains:
                break
            if any(u not in along and u in live for u in inv.chain_users.get(c, ())):
                break
            out.append(c)
    return out


def _same_stack(img: ImageState, inv: Inventory, live: set[str],
                candidates: set[str]) -> set[str]:
    """The other live candidates whose top chains are exactly ``img``'s (one layer stack under
    two images: a registry image and its import, a rebuilt tag): they can only go together."""
    tops = {stack[-1] for stack in img.stacks if stack}
    out: set[str] = set()
    for top in tops:
        for u in inv.chain_users.get(top, ()):
            if u != img.digest and u in live and u in candidates:
                out.add(u)
    by_digest = {i.digest: i for i in inv.images}
    return {u for u in out if {st[-1] for st in by_digest[u].stacks if st} <= tops}


def plan_evict(
    inv: Inventory,
    needed: int,
    *,
    allow_delete: bool = False,
    model: CostModel | None = None,
) -> EvictPlan:
    """Demotions (then deletions with ``allow_delete``), lowest value first, until ``needed``
    bytes are planned; ``needed`` <= 0 plans nothing."""
    plan = EvictPlan(needed=max(0, needed))
    if plan.needed == 0:
        return plan
    model = model or CostModel()
    order = evict_order(inv.images, model)
    kept: dict[str, str] = {}
    candidates: list[ImageState] = []
    for img in order:
        why = _protected(img)
        if why:
            kept[img.digest] = why
        elif img.tier in ("unpacked", "partial") and img.chains:
            candidates.append(img)
    # Images that need their chains: unpacked ones and those cut short (a fetched image whose
    # base is unpacked for another image does not hold that base).
    live = {i.digest for i in inv.images if i.chains and i.tier in ("unpacked", "partial")}
    freed = 0
    progress = True
    by_digest = {i.digest: i for i in inv.images}
    candidate_ids = {i.digest for i in candidates}
    while progress and freed < plan.needed:
        progress = False
        for img in candidates:
            if freed >= plan.needed:
                break
            if img.digest not in live:
                continue
            twins = _same_stack(img, inv, live, candidate_ids)
            chains = _removable_top(img, inv, live, twins)
            if not chains:
                kept.setdefault(img.digest, "its top layers are shared with an image kept unpacked")
                continue
            n = sum(inv.chain_sizes[c] for c in chains)
            for member in [img, *(by_digest[t] for t in sorted(twins))]:
                kept.pop(member.digest, None)
                live.discard(member.digest)
                why = (f"value {value(member, model):.3g}" if member is img
                       else f"the same layers as {img.name}")
                # Every member's config loses its snapshot label; the bytes count once.
                plan.actions.append(EvictAction("demote", member, chains,
                                                n if member is img else 0, why))
            freed += n
            progress = True
    if allow_delete and freed < plan.needed:
        freed += _plan_deletes(plan, inv, order, kept, needed=plan.needed - freed)
    plan.kept = [(by_digest[d], why) for d, why in kept.items()]
    return plan


def _plan_deletes(plan: EvictPlan, inv: Inventory, order: Sequence[ImageState],
                  kept: dict[str, str], *, needed: int) -> int:
    """Whole images, lowest value first: their exclusive content plus the chains no other
    remaining image needs (those of demoted images are already counted)."""
    demoted = {a.image.digest: set(a.chains) for a in plan.actions}
    gone: set[str] = set()
    freed = 0
    for img in order:
        if freed >= needed:
            break
        if _protected(img):
            continue
        chains = [c for c in img.chains if c not in demoted.get(img.digest, set())
                  and c not in inv.busy_chains
                  and all(u == img.digest or u in gone for u in inv.chain_users.get(c, ()))]
        n = img.content_exclusive + sum(inv.chain_sizes[c] for c in chains)
        gone.add(img.digest)
        kept.pop(img.digest, None)
        plan.actions.append(EvictAction("delete", img, list(reversed(chains)), n, "allow-delete"))
        freed += n
    return freed
