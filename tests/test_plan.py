from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.bake.plan import (
    DEFAULT_MODEL,
    SIZE_RULE_LIMIT,
    CostModel,
    Plan,
    PlanImage,
    baseline_fetch_all,
    baseline_pull_in_order,
    baseline_size_rule,
    estimate_unpacked,
    plan,
)
from cargohold.errors import BudgetError, InvalidInputError

MB = 10**6
MIB = 2**20
GB = 10**9
BASELINES = (baseline_fetch_all, baseline_pull_in_order, baseline_size_rule)


def image(
    name: str,
    layers: Sequence[tuple[str, int, int]],
    *,
    critical: bool = False,
    priority: float = 1.0,
    mode: str = "auto",
    extra_blobs: Sequence[tuple[str, int]] = (),
) -> PlanImage:
    """An image from ``(layer name, compressed, unpacked)``: chain IDs from the layer
    stack, plus a small manifest and config of its own."""
    blobs = [(f"manifest-{name}", 1_000), (f"config-{name}", 4_000), *extra_blobs]
    chains = []
    stack = ""
    for layer, compressed, unpacked in layers:
        stack = f"{stack}/{layer}"
        blobs.append((f"layer-{layer}", compressed))
        chains.append((f"chain{stack}", unpacked))
    return PlanImage(name, critical, priority, mode, blobs, chains)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the model, by hand


def independent_cost(
    images: Sequence[PlanImage], decisions: Mapping[str, str], model: CostModel = DEFAULT_MODEL
) -> tuple[float, int, int]:
    """(objective, content bytes, snapshot bytes), written from the documented model."""
    kept: dict[str, int] = {}
    unpacked: dict[str, int] = {}
    for img in images:
        if decisions[img.name] in ("pull", "fetch"):
            kept.update(img.blobs)
        if decisions[img.name] == "pull":
            unpacked.update(img.chains)
    objective = 0.0
    for img in images:
        d = decisions[img.name]
        if d == "pull":
            continue
        u = sum(size for chain, size in img.chains if chain not in unpacked)
        seconds = model.per_image_overhead + u / model.unpack_throughput if u else 0.0
        if d == "skip":
            missing = sum(size for blob, size in img.blobs if blob not in kept)
            seconds += model.skip_latency + missing / model.skip_bandwidth
        objective += img.priority * seconds
    return objective, sum(kept.values()), sum(unpacked.values())


def brute_force(
    images: Sequence[PlanImage],
    budget: int,
    model: CostModel = DEFAULT_MODEL,
    choices: tuple[str, ...] = ("pull", "fetch", "skip"),
) -> float | None:
    """The best objective over every assignment of the auto images, None if nothing fits."""
    fixed = {
        img.name: "pull" if img.critical else img.mode_request
        for img in images
        if img.critical or img.mode_request != "auto"
    }
    free = [img.name for img in images if img.name not in fixed]
    best: float | None = None
    for combo in itertools.product(choices, repeat=len(free)):
        decisions = {**fixed, **dict(zip(free, combo, strict=True))}
        objective, content, snapshots = independent_cost(images, decisions, model)
        if content + snapshots <= budget and (best is None or objective < best):
            best = objective
    return best


def check_consistent(p: Plan, images: Sequence[PlanImage], budget: int | None) -> None:
    """Totals agree with the independent model; constraints hold."""
    decisions = {ip.name: ip.decision for ip in p.images}
    objective, content, snapshots = independent_cost(images, decisions, p.model)
    assert p.content_bytes == content and p.snapshot_bytes == snapshots
    assert math.isclose(p.total_penalty, objective, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(
        p.total_penalty, sum(ip.weighted_penalty for ip in p.images), rel_tol=1e-9, abs_tol=1e-9
    )
    assert [ip.name for ip in p.images] == [img.name for img in images]
    for img, ip in zip(images, p.images, strict=True):
        if img.critical or img.mode_request == "pull":
            assert ip.decision == "pull"
        elif img.mode_request == "fetch":
            assert ip.decision == "fetch"
    if p.feasible and budget is not None:
        assert p.total_bytes <= budget


# ---------------------------------------------------------------- catalogs


@st.composite
def catalogs(draw: st.DrawFn, max_auto: int = 7, max_forced: int = 2) -> list[PlanImage]:
    """Images over a small pool of blobs and layer stacks, so sharing is frequent."""
    n_layers = draw(st.integers(1, 8))
    layers = [
        (f"L{k}", draw(st.integers(1, 400)) * MB // 4, draw(st.integers(0, 900)) * MB // 4)
        for k in range(n_layers)
    ]
    shared_blobs = [(f"shared-{k}", draw(st.integers(1, 50)) * MB) for k in range(3)]
    n_auto = draw(st.integers(1, max_auto))
    n_forced = draw(st.integers(0, max_forced))
    out: list[PlanImage] = []
    for k in range(n_auto + n_forced):
        # a stack: a prefix of a random permutation, so bases are shared
        order = draw(st.permutations(range(n_layers)))
        depth = draw(st.integers(0, min(4, n_layers)))
        # a few fixed bases make shared prefixes likely
        base = draw(st.sampled_from([[], [0], [0, 1], [2]]))
        stack = [b for b in base if b < n_layers] + [x for x in order[:depth] if x not in base]
        extra = draw(st.lists(st.sampled_from(shared_blobs), max_size=2, unique=True))
        priority = draw(st.sampled_from([0.0, 0.25, 1.0, 3.0, 10.0]))
        if k < n_auto:
            critical, mode = False, "auto"
        else:
            critical = draw(st.booleans())
            mode = "auto" if critical else draw(st.sampled_from(["pull", "fetch"]))
        out.append(
            image(
                f"img{k}",
                [layers[x] for x in stack],
                critical=critical,
                priority=priority,
                mode=mode,
                extra_blobs=extra,
            )
        )
    return out


def totals(images: Sequence[PlanImage]) -> tuple[int, int]:
    blobs: dict[str, int] = {}
    chains: dict[str, int] = {}
    for img in images:
        blobs.update(img.blobs)
        chains.update(img.chains)
    return sum(blobs.values()), sum(chains.values())


models = st.sampled_from(
    [
        DEFAULT_MODEL,
        CostModel(skip_latency=2.0),  # skipping cheap: more skips, a harder search
        CostModel(unpack_throughput=30e6, per_image_overhead=2.0, skip_bandwidth=100e6),
    ]
)


# ---------------------------------------------------------------- exactness


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=catalogs(), fraction=st.floats(0.0, 1.1), model=models)
def test_small_catalogs_match_brute_force(
    images: list[PlanImage], fraction: float, model: CostModel
) -> None:
    compressed, unpacked = totals(images)
    budget = int((compressed + unpacked) * fraction)
    p = plan(images, budget, model=model)
    best = brute_force(images, budget, model)
    check_consistent(p, images, budget)
    if best is None:
        assert not p.feasible
        with pytest.raises(BudgetError):
            p.require_feasible()
        return
    assert p.feasible and p.algorithm.startswith("exact"), p.algorithm
    assert math.isclose(p.total_penalty, best, rel_tol=1e-9, abs_tol=1e-9), (p.total_penalty, best)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=catalogs(max_auto=6), fraction=st.floats(0.0, 1.1))
def test_no_skip_matches_brute_force(images: list[PlanImage], fraction: float) -> None:
    compressed, unpacked = totals(images)
    budget = int((compressed + unpacked) * fraction)
    p = plan(images, budget, model=CostModel(skip_latency=0.0), allow_skip=False)
    best = brute_force(images, budget, CostModel(skip_latency=0.0), choices=("pull", "fetch"))
    check_consistent(p, images, budget)
    if best is None:
        assert not p.feasible
        assert "every other image fetched" in p.reason
        return
    assert p.feasible and not p.names("skip")
    assert math.isclose(p.total_penalty, best, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=catalogs(max_auto=20, max_forced=3), fraction=st.floats(0.0, 1.1), model=models)
def test_approximation_never_worse_than_baselines(
    images: list[PlanImage], fraction: float, model: CostModel
) -> None:
    compressed, unpacked = totals(images)
    budget = int((compressed + unpacked) * fraction)
    approx = plan(images, budget, model=model, exact_limit=0)
    check_consistent(approx, images, budget)
    for baseline in BASELINES:
        b = baseline(images, budget, model=model)
        check_consistent(b, images, budget)
        assert b.feasible == approx.feasible
        if approx.feasible:
            assert approx.algorithm.startswith("approximate")
            assert approx.total_penalty <= b.total_penalty * (1 + 1e-9) + 1e-9, b.algorithm


def realistic_catalog(rng: random.Random, n: int) -> list[PlanImage]:
    """Node-image-like: a few distro bases under most images, sizes skewed small."""
    bases = [
        [(f"base{b}-{k}", rng.randint(2, 40) * MB, 0) for k in range(rng.randint(1, 3))]
        for b in range(4)
    ]
    bases = [[(name, c, int(c * rng.uniform(1.8, 3.4))) for name, c, _ in b] for b in bases]
    out = []
    for k in range(n):
        size = rng.choice([5, 10, 20, 30, 60, 150, 400, 1500]) * MB
        own = [
            (f"img{k}-{j}", int(size / 2), int(size / 2 * rng.uniform(1.8, 3.4)))
            for j in range(rng.randint(1, 3))
        ]
        base = rng.choice([*bases, []])
        priority = round(20 / rng.randint(1, n) ** 1.1, 3)
        out.append(image(f"img{k}", [*base, *own], priority=priority, critical=k < 3))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_approximation_on_realistic_catalogs(seed: int) -> None:
    rng = random.Random(seed)
    images = realistic_catalog(rng, 60)
    compressed, unpacked = totals(images)
    for fraction in (0.05, 0.1, 0.4, 0.8):
        budget = compressed + int(fraction * unpacked)
        approx = plan(images, budget)
        check_consistent(approx, images, budget)
        assert approx.feasible
        for baseline in BASELINES:
            assert approx.total_penalty <= baseline(images, budget).total_penalty + 1e-9


def test_exact_search_node_limit_keeps_the_best_found() -> None:
    rng = random.Random(7)
    images = realistic_catalog(rng, 14)
    compressed, unpacked = totals(images)
    budget = compressed + unpacked // 5
    full = plan(images, budget)
    cut = plan(images, budget, node_limit=3)
    approx = plan(images, budget, exact_limit=0)
    assert full.algorithm.startswith("exact")
    assert cut.algorithm.startswith("best found") and "3 nodes" in cut.algorithm
    assert full.total_penalty <= cut.total_penalty + 1e-9
    assert cut.total_penalty <= approx.total_penalty + 1e-9
    assert cut.total_bytes <= budget


# ---------------------------------------------------------------- rules


def test_criticals_always_pulled_even_when_the_space_is_worth_more_elsewhere() -> None:
    images = [
        image("pause", [("p", 300 * MB, 900 * MB)], critical=True, priority=0.0),
        image("app", [("a", 100 * MB, 900 * MB)], priority=100.0),
    ]
    p = plan(images, 1300 * MB + 10_000)  # pause pulled + app fetched
    assert p.decision("pause") == "pull" and p.decision("app") == "fetch"
    assert p.images[0].reason == "critical"
    assert p.images[1].reason.startswith("over budget: fetched (pulling needs")


def test_requested_modes_are_honoured() -> None:
    images = [
        image("want-pull", [("a", 10 * MB, 20 * MB)], mode="pull", priority=0.0),
        image("want-fetch", [("b", 10 * MB, 20 * MB)], mode="fetch", priority=50.0),
        image("auto", [("c", 10 * MB, 20 * MB)]),
    ]
    p = plan(images, 10 * GB)  # room for everything
    assert [ip.decision for ip in p.images] == ["pull", "fetch", "pull"]
    assert p.images[0].reason == "requested: pull"
    assert p.images[1].reason.startswith("requested: fetch (first start unpacks for")
    assert p.images[1].penalty_seconds == pytest.approx(0.5 + 20 * MB / 100e6)
    assert p.images[2].reason.startswith("fits: saves 0.70 s x priority 1")
    for baseline in BASELINES:
        b = baseline(images, 10 * GB)
        assert [ip.decision for ip in b.images][:2] == ["pull", "fetch"]


def test_sharing_is_counted_once() -> None:
    """Two images on a 2 GB (unpacked) base: pulling both fits only because the base's
    blob and snapshot are paid once."""
    base = ("base", 800 * MB, 2 * GB)
    a = image("a", [base, ("a-top", 10 * MB, 30 * MB)], priority=1.0)
    b = image("b", [base, ("b-top", 10 * MB, 30 * MB)], priority=1.0)
    content = 800 * MB + 20 * MB + 2 * 5_000
    budget = content + 2 * GB + 60 * MB
    assert budget < 2 * (800 * MB + 2 * GB)  # without sharing, not even one more base
    p = plan([a, b], budget)
    assert p.names("pull") == ["a", "b"]
    assert p.content_bytes == content and p.snapshot_bytes == 2 * GB + 60 * MB
    assert p.total_bytes == budget and p.total_penalty == 0.0
    ia = p.images[0]
    assert ia.compressed_bytes == 810 * MB + 5_000 and ia.shared_compressed_bytes == 800 * MB
    assert ia.unpacked_bytes == 2 * GB + 30 * MB and ia.shared_unpacked_bytes == 2 * GB
    # one byte less: only one can be pulled; the other reuses its base
    p = plan([a, b], budget - 1)
    assert sorted(ip.decision for ip in p.images) == ["fetch", "pull"]
    fetched = next(ip for ip in p.images if ip.decision == "fetch")
    assert fetched.shared_unpacked_bytes == 2 * GB
    assert fetched.penalty_seconds == pytest.approx(0.5 + 30 * MB / 100e6)  # its top only


def test_pulling_a_shared_base_lowers_the_penalty_of_fetched_images() -> None:
    """Pulling the small image that carries a big base saves the base's unpack for
    every fetched image on it: worth more than pulling the high-priority one."""
    base = ("base", 300 * MB, 1 * GB)
    carrier = image("carrier", [base], priority=0.1)
    users = [image(f"user{k}", [base, (f"top{k}", 40 * MB, 400 * MB)]) for k in range(5)]
    solo = image("solo", [("solo", 100 * MB, 1 * GB)], priority=3.0)
    images = [solo, *users, carrier]
    compressed, _ = totals(images)
    budget = compressed + 1 * GB
    p = plan(images, budget)
    assert p.decision("carrier") == "pull" and p.decision("solo") == "fetch"
    assert p.images[-1].reason.startswith("fits: saves 10.5 s x priority 0.1")
    assert p.total_penalty == pytest.approx(5 * 4.5 + 3 * 10.5)
    for baseline in BASELINES:
        assert p.total_penalty < baseline(images, budget).total_penalty


def test_skip_is_the_last_resort_and_can_be_forbidden() -> None:
    images = [
        image("small", [("s", 50 * MB, 100 * MB)], priority=1.0),
        image("huge", [("h", 4 * GB, 9 * GB)], priority=0.1),
        image("mid", [("m", 500 * MB, 1 * GB)], priority=2.0),
    ]
    compressed, _ = totals(images)
    # everything fits fetched: nothing skipped, the space left is used for pulls
    p = plan(images, compressed + 1 * GB + 100 * MB)
    assert not p.names("skip") and p.names("pull") == ["small", "mid"]
    # the huge one does not fit even fetched: skipped, with its download in the penalty
    p = plan(images, 2 * GB)
    assert p.names("skip") == ["huge"]
    huge = p.images[1]
    assert huge.penalty_seconds == pytest.approx(30 + 4 * GB / 25e6 + 0.5 + 9 * GB / 100e6)
    assert huge.reason.startswith("skipped: budget exhausted (fetching needs 4.0 GB more")
    q = plan(images, 2 * GB, allow_skip=False)
    assert not q.feasible and "every other image fetched" in q.reason
    assert not q.names("skip")


def test_skipping_can_pay_off_when_skips_are_cheap() -> None:
    """With a low skip cost, skipping a big image makes room for pulling two others
    (better); the default model keeps it fetched (skipping would cost more)."""
    big = image("big", [("b", 2 * GB, 5 * GB)], priority=1.0)
    small = [image(f"s{k}", [(f"s{k}", 100 * MB, 1 * GB)], priority=1.0) for k in range(2)]
    images = [big, *small]
    budget = 2200 * MB + 20_000  # everything fetched, or the small ones pulled
    cheap = CostModel(skip_latency=1.0, skip_bandwidth=1e9)
    assert plan(images, budget, model=cheap).names("skip") == ["big"]
    assert plan(images, budget).names("skip") == []
    assert plan(images, budget, model=cheap, allow_skip=False).names("skip") == []


def test_infeasible_criticals_are_reported_not_raised() -> None:
    images = [
        image("pause", [("p", 1 * MB, 2 * MB)], critical=True),
        image("cuda", [("c", 3 * GB, 8 * GB)], critical=True),
        image("agent", [("x", 10 * MB, 30 * MB)], mode="fetch"),
        image("app", [("a", 10 * MB, 30 * MB)]),
    ]
    p = plan(images, 5 * GB)
    assert not p.feasible and p.algorithm == "infeasible"
    assert "critical: pause, cuda" in p.reason and "requested fetch: agent" in p.reason
    assert "short" in p.reason and p.free_bytes is not None and p.free_bytes < 0
    assert p.decision("app") == "skip" and p.decision("cuda") == "pull"
    with pytest.raises(BudgetError, match="critical: pause, cuda") as info:
        p.require_feasible()
    assert info.value.exit_code == 11
    for baseline in BASELINES:
        assert not baseline(images, 5 * GB).feasible


def test_no_budget_pulls_everything_auto() -> None:
    images = [
        image("a", [("a", 10 * MB, 20 * MB)]),
        image("b", [("b", 10 * MB, 20 * MB)], mode="fetch"),
    ]
    p = plan(images, None)
    assert [ip.decision for ip in p.images] == ["pull", "fetch"]
    assert p.budget is None and p.free_bytes is None and p.feasible


def test_zero_priority_image_is_fetched_not_pulled_when_space_is_free() -> None:
    images = [image("idle", [("i", 10 * MB, 20 * MB)], priority=0.0)]
    p = plan(images, 1 * GB)
    assert p.decision("idle") == "fetch" and p.images[0].reason == "fetched: priority 0"


def test_baselines() -> None:
    images = [
        image("big", [("b", 300 * MB, 600 * MB)], priority=5.0),
        image("s1", [("s1", 20 * MB, 50 * MB)], priority=0.1),
        image("s2", [("s2", 20 * MB, 50 * MB)], priority=0.1),
        image("s3", [("s3", 20 * MB, 50 * MB)], priority=0.1),
    ]
    compressed, _ = totals(images)
    budget = compressed + 600 * MB
    fetch_all = baseline_fetch_all(images, budget)
    assert fetch_all.names("fetch") == ["big", "s1", "s2", "s3"]
    in_order = baseline_pull_in_order(images, budget)
    assert in_order.names("pull") == ["big"]
    size_rule = baseline_size_rule(images, budget)
    assert size_rule.names("pull") == ["s1", "s2", "s3"]
    assert baseline_size_rule(images, budget, limit=10 * MIB).names("pull") == []
    assert SIZE_RULE_LIMIT == 200 * MIB
    best = plan(images, budget)
    assert best.names("pull") == ["big"]
    assert best.total_penalty < size_rule.total_penalty
    # pull in order passes over what does not fit and tries the next
    assert baseline_pull_in_order(images, compressed + 100 * MB).names("pull") == ["s1", "s2"]
    # fetch all skips what does not fit, in list order
    assert baseline_fetch_all(images, 100 * MB).names("skip") == ["big"]


def test_plan_output_and_json() -> None:
    images = [
        image("pause", [("p", 1 * MB, 2 * MB)], critical=True),
        image("app", [("a", 10 * MB, 30 * MB)], priority=2.0),
    ]
    p = plan(images, 1 * GB)
    data = p.to_json()
    assert data["feasible"] is True and data["total_bytes"] == p.total_bytes
    assert [i["decision"] for i in data["images"]] == ["pull", "pull"]
    assert data["images"][1]["reason"] == "fits: saves 0.80 s x priority 2"
    assert "2 pulled, 0 fetched, 0 skipped" in p.reason
    with pytest.raises(KeyError):
        p.decision("nope")


# ---------------------------------------------------------------- input checks


def test_invalid_input() -> None:
    a = image("a", [("x", 10, 20)])
    with pytest.raises(InvalidInputError, match="listed twice"):
        plan([a, a], 100)
    with pytest.raises(InvalidInputError, match="has size 11, another image gives it 10"):
        plan([a, PlanImage("b", blobs=[("layer-x", 11)])], 100)
    with pytest.raises(InvalidInputError, match=r"chain .* has size"):
        plan([a, PlanImage("b", chains=[("chain/x", 21)])], 100)
    with pytest.raises(InvalidInputError, match="priority must be >= 0"):
        plan([PlanImage("b", priority=-1)], 100)
    with pytest.raises(InvalidInputError, match="negative size"):
        plan([PlanImage("b", blobs=[("d", -1)])], 100)
    with pytest.raises(InvalidInputError, match="critical image is always pulled"):
        plan([PlanImage("b", critical=True, mode_request="fetch")], 100)
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        plan([PlanImage("b", mode_request="eager")], 100)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="budget"):
        plan([a], -1)
    with pytest.raises(InvalidInputError, match="unpack_throughput"):
        CostModel(unpack_throughput=0)
    with pytest.raises(InvalidInputError, match="skip_latency"):
        CostModel(skip_latency=-1)


def test_lists_are_stored_as_tuples_and_duplicates_ignored() -> None:
    img = PlanImage("a", blobs=[("d", 5), ("d", 5)], chains=[["c", 7]])  # type: ignore[list-item]
    assert img.blobs == (("d", 5), ("d", 5)) and img.chains == (("c", 7),)
    p = plan([img], 100)
    assert p.images[0].compressed_bytes == 5 and p.content_bytes == 5


def test_estimate_unpacked() -> None:
    assert estimate_unpacked(100) == 250
    assert estimate_unpacked(100, 3.0) == 300
    assert estimate_unpacked(0) == 0
    with pytest.raises(InvalidInputError):
        estimate_unpacked(-1)
    with pytest.raises(InvalidInputError):
        estimate_unpacked(10, 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=catalogs(), fraction=st.floats(0.0, 1.1), model=models)
def test_branch_and_bound_alone_reaches_the_optimum(
    images: list[PlanImage], fraction: float, model: CostModel
) -> None:
    """The public tests above seed the search with the (often optimal) approximation;
    here it starts from the poor "fetch all" plan, so its bounds must do the work."""
    from cargohold.bake import plan as planner

    compressed, unpacked = totals(images)
    budget = int((compressed + unpacked) * fraction)
    cat = planner._Catalog(images, model)
    start = planner._baseline_decisions(cat, budget, planner._pull_none)
    if planner._evaluate(cat, start).disk > budget:
        assert brute_force(images, budget, model) is None
        return
    decisions, _, proven = planner._exact(cat, budget, start, 10**7)
    assert proven
    names = {
        img.name: ("pull", "fetch", "skip")[d] for img, d in zip(images, decisions, strict=True)
    }
    objective, content, snapshots = independent_cost(images, names, model)
    assert content + snapshots <= budget
    best = brute_force(images, budget, model)
    assert best is not None
    assert math.isclose(objective, best, rel_tol=1e-9, abs_tol=1e-9), (objective, best)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=catalogs(max_forced=1),
    fraction=st.floats(0.2, 1.1),
    model=models,
    allow_skip=st.booleans(),
    data=st.data(),
)
def test_search_bound_never_exceeds_the_best_completion(
    images: list[PlanImage],
    fraction: float,
    model: CostModel,
    allow_skip: bool,
    data: st.DataObject,
) -> None:
    """At any node of the search (some auto images decided, the rest open) the lower
    bound is at most the objective of every feasible completion."""
    from cargohold.bake import plan as planner

    compressed, unpacked = totals(images)
    budget = int((compressed + unpacked) * fraction)
    cat = planner._Catalog(images, model, allow_skip=allow_skip)
    dec = [planner.OPEN if f is None else f for f in cat.forced]
    for i in cat.auto:
        if data.draw(st.booleans()):
            dec[i] = data.draw(st.sampled_from(cat.choices))
    state = planner._State(cat, dec, track=True)
    undecided = [i for i in cat.auto if dec[i] == planner.OPEN]
    bound = state.lb + planner._open_bound(state, undecided, budget)
    labels = ("pull", "fetch", "skip")
    best: float | None = None
    for combo in itertools.product(cat.choices, repeat=len(undecided)):
        full = list(dec)
        for i, d in zip(undecided, combo, strict=True):
            full[i] = d
        names = {img.name: labels[d] for img, d in zip(images, full, strict=True)}
        objective, content, snapshots = independent_cost(images, names, model)
        if content + snapshots <= budget and (best is None or objective < best):
            best = objective
    if best is not None:
        assert bound <= best * (1 + 1e-9) + 1e-9, (bound, best)


@pytest.mark.parametrize("allow_skip", [True, False])
def test_search_bound_is_the_knapsack_relaxation(allow_skip: bool) -> None:
    """Two images, each pullable alone but not both: the bound pulls the better one
    (penalty per byte) whole and the other by the fraction of its bytes that fits."""
    from cargohold.bake import plan as planner

    a = image("a", [("a", 100 * MB, GB)], priority=2.0)
    b = image("b", [("b", 100 * MB, GB)], priority=1.0)
    compressed, _ = totals([a, b])
    budget = compressed + GB + GB // 2
    cat = planner._Catalog([a, b], DEFAULT_MODEL, allow_skip=allow_skip)
    state = planner._State(cat, [planner.OPEN, planner.OPEN], track=True)
    assert state.lb == 0.0
    bound = planner._open_bound(state, [0, 1], budget)
    assert bound == pytest.approx(0.5 * (0.5 + 10.0))  # half of b's fetch penalty
    assert brute_force([a, b], budget) == pytest.approx(10.5)
    # one image decided (fetched): its lower bound counts, the other may be pulled whole
    state.set(0, planner.FETCH)
    assert state.lb == pytest.approx(2 * 10.5)
    assert planner._open_bound(state, [1], budget) == 0.0


def test_present_images_are_a_fixed_cost_and_named_when_over() -> None:
    """Issue 14, 2: what the store holds of an image (a present pseudo-image, named as the
    image) is counted once, never counted as a decision, and named when it puts a plan over."""
    big = PlanImage("big", blobs=[("b1", 100)], chains=[("c1", 300)])
    held = PlanImage("big", present=True, blobs=[("b1", 100)], chains=[("c1", 300)])
    small = PlanImage("small", blobs=[("b2", 10)], chains=[("c2", 20)])
    crit = PlanImage("crit", critical=True, blobs=[("b3", 5)], chains=[("c3", 5)])
    ok = plan([crit, small, big, held], 1000)
    assert ok.feasible and ok.total_bytes == 440  # the held bytes once
    counts = [int(w) for w in ok.reason.split(";")[0].split() if w.isdigit()]
    assert sum(counts) == 3, ok.reason  # the present pseudo-image is not counted
    assert ok.decision("big") in ("pull", "fetch") and ok.total_penalty == 0
    assert "big" in ok.names(ok.decision("big")) and len(ok.names("skip")) == 0
    over = plan([crit, small, big, held], 350)
    assert not over.feasible
    assert over.reason == (
        "the critical and requested images and what the store holds already need 410 B but "
        "the budget is 350 B: 60 B short (critical: crit; already in the store: big 100 B "
        "content + 300 B snapshots)")
    assert [i.reason for i in over.images if i.name == "small"] == [
        "skipped: the critical and requested images and what the store holds already "
        "exceed the budget"]
    with pytest.raises(InvalidInputError, match="listed twice"):
        plan([big, big], None)
