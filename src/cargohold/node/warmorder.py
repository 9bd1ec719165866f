"""Which fetched-only image to unpack first: weighted shortest processing time (pure).

``bake`` writes each spec entry's ``priority`` and ``critical`` onto the image record
(:func:`record_labels`), so a node knows what matters without the spec file. ``warm`` orders
the images still to unpack by :func:`wspt_order`: critical images first, then by
``priority / expected unpack seconds``, highest first. For jobs run one after another on one
resource that order minimises the priority-weighted sum of the times until each image is
ready (Smith's rule; :func:`weighted_completion` is that sum). Reversed
(``reverse=True``) it is the order in which unpacked snapshots are worth least per second
of unpack they would cost again -- what an evicting command drops first.

The expected seconds come from the image's unpacked bytes and the store's calibrated
throughput: :func:`expected_seconds` is the planner's fetched-image penalty
(:meth:`~cargohold.bake.plan.CostModel.fetch_penalty`), so plan, bake and warm agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from cargohold.bake.plan import CostModel
from cargohold.errors import InvalidInputError
from cargohold.labels import LABEL_CRITICAL, LABEL_PRIORITY
from cargohold.node.labels import image_critical, image_priority
from cargohold.store.interfaces import ImageStore

__all__ = [
    "Weighted",
    "expected_seconds",
    "label_record",
    "parse_record_labels",
    "record_labels",
    "weighted_completion",
    "wspt_order",
]


def record_labels(priority: float, critical: bool) -> dict[str, str]:
    """The labels ``bake`` puts on an image record."""
    return {LABEL_PRIORITY: format(float(priority), "g"),
            LABEL_CRITICAL: "true" if critical else "false"}


def parse_record_labels(labels: Mapping[str, str]) -> tuple[float, bool] | None:
    """(priority, critical) from a record's labels as ``status`` and ``evict`` read them
    (:mod:`cargohold.node.labels`); None when bake did not label the record."""
    if LABEL_PRIORITY not in labels:
        return None
    return image_priority(labels), image_critical(labels)


def expected_seconds(unpacked_bytes: int, model: CostModel) -> float:
    """Seconds an unpack of ``unpacked_bytes`` is expected to take on this store (0 bytes:
    nothing to do, 0 s)."""
    if unpacked_bytes < 0:
        raise InvalidInputError(f"unpacked bytes must be >= 0 (got {unpacked_bytes})")
    return model.fetch_penalty(unpacked_bytes)


class Weighted(Protocol):
    """What the order needs of an item."""

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> float: ...

    @property
    def critical(self) -> bool: ...

    @property
    def seconds(self) -> float: ...


W = TypeVar("W", bound=Weighted)


def _ratio(item: Weighted) -> float:
    if item.seconds <= 0:
        return math.inf if item.priority > 0 else 0.0
    return item.priority / item.seconds


def wspt_order(items: Iterable[W], *, reverse: bool = False) -> list[W]:
    """Critical items first, then highest ``priority / seconds`` first; ties by name.
    ``reverse``: the exact reverse (least valuable per second first, critical last)."""
    out = sorted(items, key=lambda i: (not i.critical, -_ratio(i), i.name))
    if reverse:
        out.reverse()
    return out


def weighted_completion(items: Sequence[Weighted]) -> float:
    """Sum of priority x completion time when ``items`` run one after another in order."""
    t = 0.0
    total = 0.0
    for i in items:
        t += i.seconds
        total += i.priority * t
    return total


def label_record(images: ImageStore, name: str, priority: float, critical: bool) -> None:
    """Put :func:`record_labels` on the record ``name`` (written only when they differ)."""
    img = images.get(name)
    want = record_labels(priority, critical)
    if all(img.labels.get(k) == v for k, v in want.items()):
        return
    images.update(replace(img, labels={**img.labels, **want}))
