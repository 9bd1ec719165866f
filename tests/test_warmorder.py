"""The warm order (weighted shortest processing time), its expected seconds, the bake labels
and --keep-free parsing: pure functions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.bake.plan import DEFAULT_MODEL
from cargohold.errors import InvalidInputError
from cargohold.labels import LABEL_CRITICAL, LABEL_PRIORITY
from cargohold.measure.calibration import Calibration
from cargohold.node.warmorder import (
    expected_seconds,
    parse_record_labels,
    record_labels,
    weighted_completion,
    wspt_order,
)


@dataclass(frozen=True)
class Item:
    name: str
    priority: float
    seconds: float
    critical: bool = False


def names(items: list[Item]) -> list[str]:
    return [i.name for i in items]


def test_highest_priority_per_second_first() -> None:
    items = [Item("big-important", 10, 20.0), Item("small", 1, 0.5), Item("mid", 4, 2.0),
             Item("zero", 0, 0.1)]
    # ratios: 0.5, 2.0, 2.0 (tie: by name), 0
    assert names(wspt_order(items)) == ["mid", "small", "big-important", "zero"]


def test_critical_first_and_reverse_is_exact() -> None:
    items = [Item("a", 100, 1.0), Item("c", 1, 50.0, critical=True), Item("b", 2, 1.0)]
    order = wspt_order(items)
    assert names(order) == ["c", "a", "b"]
    assert names(wspt_order(items, reverse=True)) == ["b", "a", "c"]


def test_nothing_to_unpack_is_free_and_first() -> None:
    items = [Item("work", 5, 1.0), Item("free", 1, 0.0), Item("free-zero", 0, 0.0)]
    assert names(wspt_order(items)) == ["free", "work", "free-zero"]


def test_weighted_completion() -> None:
    items = [Item("a", 2, 1.0), Item("b", 1, 3.0)]
    assert weighted_completion(items) == 2 * 1.0 + 1 * 4.0
    assert weighted_completion([]) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.01, 100)), min_size=1, max_size=6))
def test_wspt_minimises_weighted_completion(pairs: list[tuple[float, float]]) -> None:
    """Smith's rule: no order of the same jobs has a smaller priority-weighted sum."""
    items = [Item(f"i{n}", p, s) for n, (p, s) in enumerate(pairs)]
    best = min(weighted_completion(list(perm)) for perm in itertools.permutations(items))
    got = weighted_completion(wspt_order(items))
    assert got <= best + 1e-9 * max(1.0, best)


def test_expected_seconds_use_the_calibration() -> None:
    cal = Calibration(unpack_throughput=50e6, per_image_overhead=0.25, source="calibrate",
                      store="embedded", measured_at="2026-01-01T00:00:00Z", sample_bytes=1)
    assert expected_seconds(100_000_000, cal.cost_model()) == pytest.approx(2.25)
    assert expected_seconds(0, DEFAULT_MODEL) == 0.0
    assert expected_seconds(100_000_000, DEFAULT_MODEL) == pytest.approx(1.5)
    with pytest.raises(InvalidInputError):
        expected_seconds(-1, DEFAULT_MODEL)


def test_record_labels_round_trip() -> None:
    labels = record_labels(8, True)
    assert labels == {LABEL_PRIORITY: "8", LABEL_CRITICAL: "true"}
    assert parse_record_labels(labels) == (8.0, True)
    assert parse_record_labels(record_labels(0.5, False)) == (0.5, False)
    assert parse_record_labels({}) is None
    # A label status/evict cannot read counts as the default priority there and here.
    assert parse_record_labels({LABEL_PRIORITY: "lots"}) == (1.0, False)
    assert parse_record_labels({LABEL_PRIORITY: "-1"}) == (1.0, False)
    assert parse_record_labels({LABEL_PRIORITY: "3"}) == (3.0, False)
