"""The disk-budget planner: which images to pull, which to fetch only, which to skip.

Pure: no I/O. The caller measures what the plan needs (blob sizes, chain IDs, unpacked
sizes or :func:`estimate_unpacked`, the store's unpack throughput) and applies the plan.

Cost model
==========

An image is a set of **blobs** (index, manifests, configs, layers: ``(digest,
compressed size)``, shared across images by digest) and a set of **chains** (its layers'
chain IDs with each layer's unpacked size; shared across images by chain ID, which names
a layer *and everything below it*).

* **Disk** = the union of the blobs of every kept (pulled or fetched) image + the union
  of the chains of every pulled image. A blob or chain several images share is counted
  once. The budget is the final disk use of the planned images: everything they keep
  counts, whether it is on disk already or not (the caller subtracts what else lives on
  the file system, e.g. the reserve, before calling).
* **First-start penalty** (seconds) of an image, with ``u`` = the unpacked bytes of its
  chains that no pulled image has unpacked (a fetched image sharing a pulled image's base
  only unpacks its own upper layers):

  - pulled: ``0``;
  - fetched: ``per_image_overhead + u / unpack_throughput`` (``0`` when ``u == 0``);
  - skipped: ``skip_latency + d / skip_bandwidth`` + the fetched penalty, where ``d`` is
    the compressed bytes of its blobs no kept image holds: it must be downloaded at first
    start. ``skip_latency`` (30 s by default) stands for what a registry pull at node
    start risks besides bandwidth (throttling, queueing behind other pulls, a registry
    that is down or unreachable from an isolated node); it makes skipping the last
    resort: in practice only large, rarely started images are skipped, to make room for
    pulling many others. ``allow_skip=False`` forbids skipping auto images altogether.

  Two fetched images sharing a chain no pulled image has are *both* charged for it:
  which one starts first is unknown, so each is charged as if it did (conservative).
* **Objective**: minimise ``sum(priority x penalty)`` over all images subject to disk <=
  budget; ties are broken by fewer skipped images, then less disk.

Constraints: critical images are always pulled; ``mode_request = "pull"`` images are
always pulled (like critical ones, but the caller does not pin them);
``mode_request = "fetch"`` images are always fetched (never pulled, never skipped). Only
``auto`` images are decided. If the forced images alone exceed the budget, :func:`plan`
returns a :class:`Plan` with ``feasible=False``, a ``reason`` naming them and the
shortfall, and every auto image skipped (fetched, with ``allow_skip=False``, which also
counts them in the check); :meth:`Plan.require_feasible` turns that into a
:class:`~cargohold.errors.BudgetError`. The caller decides.

Algorithm
=========

* Up to ``exact_limit`` (16) auto images: **branch and bound** over pull / fetch / skip,
  most valuable images first, seeded with the approximate plan below. Bounds: disk only
  grows along a branch; the penalty of an image already fetched or skipped can only fall
  by the chains (and blobs) that images still undecided or pulled could provide; an
  undecided image that cannot be pulled any more (or not even fetched) pays at least its
  fetch (skip) penalty; the undecided images' choices must fit in the budget left, which
  the linear relaxation of a multiple-choice knapsack (skip / fetch / pull, over the
  bytes only each of them could keep or unpack) bounds. Exact unless
  ``node_limit`` (200 000, a few seconds) nodes are visited first; then the best plan
  found (never worse than the approximation) is returned and ``Plan.algorithm`` says so.
* Larger catalogs (**approximate**): greedy by marginal benefit per marginal byte, from
  "everything auto skipped" (fetched, with ``allow_skip=False``), considering skip->fetch, skip->pull and fetch->pull moves;
  benefits and byte costs are recomputed after each move with sharing (pulling an image
  lowers the penalty of every fetched image sharing its chains; keeping a blob lowers
  the penalty of every skipped image holding it). Then a local-improvement pass (single
  changes, pull<->fetch swaps, fetch<->skip swaps) until nothing improves. The three
  baselines are computed too and, after the same local pass, the best of all is
  returned, so the planner is never worse than a baseline.

Baselines (same :class:`Plan` output, same constraints): :func:`baseline_fetch_all`,
:func:`baseline_pull_in_order`, :func:`baseline_size_rule`. They first fetch the auto
images in list order while they fit (skipping those that do not), then upgrade candidates
to pulled in list order whenever the total still fits (first fit: a candidate that does
not fit is passed over, later ones are still tried).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cargohold.bake.solver import (  # the search; its names stay reachable here
    _MODES,
    FETCH,
    OPEN,  # noqa: F401
    PULL,
    SKIP,
    _better,
    _Catalog,
    _evaluate,
    _exact,
    _fits,
    _fmt,
    _forced_decisions,
    _greedy,
    _local_search,
    _need_free,
    _open_bound,  # noqa: F401
    _State,
)
from cargohold.errors import BudgetError, InvalidInputError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_UNPACK_RATIO",
    "EXACT_LIMIT",
    "NODE_LIMIT",
    "SIZE_RULE_LIMIT",
    "TOTALS_FIELDS",
    "CostModel",
    "Decision",
    "ImagePlan",
    "Mode",
    "Plan",
    "PlanImage",
    "baseline_fetch_all",
    "baseline_pull_in_order",
    "baseline_size_rule",
    "estimate_unpacked",
    "plan",
    "totals_json",
]

Mode = Literal["pull", "fetch", "auto"]
Decision = Literal["pull", "fetch", "skip"]

#: Unpacked / compressed size of a layer when it has not been measured: gzip on typical
#: image layers gives 2-3x; callers should pass the ratio measured on the store's
#: already-unpacked images.
DEFAULT_UNPACK_RATIO = 2.5
#: Catalogs with at most this many auto images are solved exactly.
EXACT_LIMIT = 16
#: Branch-and-bound nodes visited before the exact search gives up (best found kept).
NODE_LIMIT = 200_000
#: The size rule's limit: images smaller than this (compressed) are pulled.
SIZE_RULE_LIMIT = 200 * 2**20

_NAMES: tuple[Decision, ...] = ("pull", "fetch", "skip")


def estimate_unpacked(compressed: int, ratio: float = DEFAULT_UNPACK_RATIO) -> int:
    """Unpacked bytes of a layer of ``compressed`` bytes, at ``ratio`` (default 2.5)."""
    if compressed < 0:
        raise InvalidInputError(f"compressed size must not be negative (got {compressed})")
    if not math.isfinite(ratio) or ratio <= 0:
        raise InvalidInputError(f"unpack ratio must be a number > 0 (got {ratio})")
    return round(compressed * ratio)


@dataclass(frozen=True)
class CostModel:
    """Penalty parameters (see the module docstring).

    Defaults: unpacking runs at 100 MB/s of unpacked data (overlayfs on a cloud SSD,
    gzip; measure it with the calibrate bench and pass it in); a fetched image's first
    start pays 0.5 s on top (snapshot preparation, image unpack bookkeeping); a skipped
    image pays a fixed 30 s (resolve, authenticate, and the risk of a registry pull at
    node start: throttling, queueing, an unreachable registry) plus its download at
    25 MB/s (200 Mbit/s, a busy node pulling from a shared registry) before it unpacks.
    """

    unpack_throughput: float = 100e6
    per_image_overhead: float = 0.5
    skip_bandwidth: float = 25e6
    skip_latency: float = 30.0

    def __post_init__(self) -> None:
        for name in ("unpack_throughput", "skip_bandwidth"):
            v = getattr(self, name)
            if not math.isfinite(v) or v <= 0:
                raise InvalidInputError(f"cost model: {name} must be > 0 (got {v})")
        for name in ("per_image_overhead", "skip_latency"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise InvalidInputError(f"cost model: {name} must be >= 0 (got {v})")

    def fetch_penalty(self, unpack_bytes: int) -> float:
        """Seconds a fetched image's first start spends unpacking ``unpack_bytes``."""
        if unpack_bytes <= 0:
            return 0.0
        return self.per_image_overhead + unpack_bytes / self.unpack_throughput

    def skip_penalty(self, download_bytes: int, unpack_bytes: int) -> float:
        """Seconds a skipped image's first start spends downloading and unpacking."""
        return (
            self.skip_latency
            + download_bytes / self.skip_bandwidth
            + self.fetch_penalty(unpack_bytes)
        )


DEFAULT_MODEL = CostModel()


@dataclass(frozen=True)
class PlanImage:
    """One image to plan. ``blobs``: ``(digest, compressed size)`` of its index,
    manifests, configs and layers; ``chains``: ``(chain ID, unpacked size of that
    layer)`` of its layers. Lists are accepted and stored as tuples.

    ``present``: not an image to decide but what the store holds already of the image
    ``name`` (its blobs and unpacked chains): disk in use whatever the plan says, a fixed
    cost (always "pulled", priority 0). It may share its name with the image it belongs
    to, is left out of the plan's counts, and an infeasible plan's reason names it with its
    bytes."""

    name: str
    critical: bool = False
    priority: float = 1.0
    mode_request: Mode = "auto"
    blobs: Sequence[tuple[str, int]] = ()
    chains: Sequence[tuple[str, int]] = ()
    present: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "blobs", tuple((str(d), int(s)) for d, s in self.blobs))
        object.__setattr__(self, "chains", tuple((str(c), int(s)) for c, s in self.chains))

    @property
    def requested(self) -> Mode:
        """``pull`` for critical and present images, else ``mode_request``."""
        return "pull" if self.critical or self.present else self.mode_request


@dataclass(frozen=True)
class ImagePlan:
    """The decision for one image.

    ``compressed_bytes``: all its blobs; ``shared_compressed_bytes``: those of them that
    another kept image also holds (a kept image pays only the rest). ``unpacked_bytes``:
    all its chains; ``shared_unpacked_bytes``: for a pulled image, the chains another
    pulled image also has; for a fetched or skipped one, the chains pulled images have
    unpacked already (its first start does not unpack them). ``penalty_seconds``: its
    expected first-start penalty (not weighted by priority).
    """

    name: str
    decision: Decision
    requested: Mode
    critical: bool
    priority: float
    compressed_bytes: int
    shared_compressed_bytes: int
    unpacked_bytes: int
    shared_unpacked_bytes: int
    penalty_seconds: float
    reason: str
    #: What the store holds already of the image (see :class:`PlanImage`), not a decision.
    present: bool = False

    @property
    def weighted_penalty(self) -> float:
        return self.priority * self.penalty_seconds

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"present": True} if self.present else {}
        return {
            "name": self.name,
            "decision": self.decision,
            "requested": self.requested,
            "critical": self.critical,
            "priority": self.priority,
            "compressed_bytes": self.compressed_bytes,
            "shared_compressed_bytes": self.shared_compressed_bytes,
            "unpacked_bytes": self.unpacked_bytes,
            "shared_unpacked_bytes": self.shared_unpacked_bytes,
            "penalty_seconds": self.penalty_seconds,
            "reason": self.reason,
            **extra,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImagePlan:
        """The row :meth:`to_json` wrote (KeyError, TypeError, ValueError if it is not one)."""
        decision = str(doc["decision"])
        requested = str(doc["requested"])
        if decision not in _NAMES or requested not in _MODES:
            raise ValueError(f"plan row {doc.get('name')!r}: bad decision or mode")
        return cls(
            name=str(doc["name"]),
            decision=decision,
            requested=requested,
            critical=bool(doc["critical"]),
            priority=float(doc["priority"]),
            compressed_bytes=int(doc["compressed_bytes"]),
            shared_compressed_bytes=int(doc["shared_compressed_bytes"]),
            unpacked_bytes=int(doc["unpacked_bytes"]),
            shared_unpacked_bytes=int(doc["shared_unpacked_bytes"]),
            penalty_seconds=float(doc["penalty_seconds"]),
            reason=str(doc["reason"]),
            present=bool(doc.get("present", False)),
        )


@dataclass(frozen=True)
class Plan:
    """A plan: one :class:`ImagePlan` per input image, in input order, and totals.

    ``total_penalty`` is the objective, ``sum(priority x penalty_seconds)``.
    ``feasible`` is false when the critical and requested images alone exceed the
    budget (``reason`` says by how much); ``algorithm`` says how the plan was made.
    """

    images: tuple[ImagePlan, ...]
    budget: int | None
    content_bytes: int
    snapshot_bytes: int
    total_penalty: float
    feasible: bool
    reason: str
    algorithm: str
    model: CostModel = field(default=DEFAULT_MODEL, repr=False)

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    @property
    def free_bytes(self) -> int | None:
        """Budget left (negative when infeasible); None without a budget."""
        return None if self.budget is None else self.budget - self.total_bytes

    def decision(self, name: str) -> Decision:
        for img in self.images:
            if img.name == name and not img.present:
                return img.decision
        raise KeyError(name)

    def names(self, decision: Decision) -> list[str]:
        """The images (not the present pseudo-images) with this decision."""
        return [img.name for img in self.images
                if img.decision == decision and not img.present]

    def require_feasible(self) -> Plan:
        """The plan itself, or BudgetError with the reason if it is infeasible."""
        if not self.feasible:
            raise BudgetError(self.reason)
        return self

    def to_json(self) -> dict[str, Any]:
        return {**totals_json(self), "images": [img.to_json() for img in self.images]}


#: The verdict and totals a plan's JSON starts with (the images follow them): attributes
#: of a :class:`Plan` and of a catalog plan alike, written under their own names.
TOTALS_FIELDS: tuple[str, ...] = (
    "feasible", "reason", "algorithm", "budget",
    "content_bytes", "snapshot_bytes", "total_bytes", "total_penalty",
)


def totals_json(p: object) -> dict[str, Any]:
    """The :data:`TOTALS_FIELDS` of plan ``p``, for its JSON."""
    return {name: getattr(p, name) for name in TOTALS_FIELDS}


# ---- plan assembly


def _secs(x: float) -> str:
    """Seconds for a reason text: two decimals below 10 s (small penalties stay visible)."""
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _reason(cat: _Catalog, st: _State, i: int, budget: int | None) -> str:
    img = cat.images[i]
    d = st.dec[i]
    model = cat.model
    if img.critical:
        return "critical"
    if cat.forced[i] is not None:
        text = f"requested: {img.mode_request}"
        if d == FETCH and st.pen[i] > 0:
            text += f" (first start unpacks for {_secs(st.pen[i])})"
        return text
    free = None if budget is None else budget - st.disk
    if d == PULL:
        if budget is None:
            return "no budget: everything auto is pulled"
        # what it would pay if fetched: its chains no other pulled image has
        u = sum(cat.chain_size[c] for c in cat.chains[i] if st.pc[c] == 1)
        saved = model.fetch_penalty(u)
        if saved <= 0:
            return "pulled: its layers are unpacked for other images anyway"
        return f"fits: saves {_secs(saved)} x priority {img.priority:g}"
    if d == FETCH:
        need = st.pull_bytes(i)
        if free is not None and need > free:
            return f"over budget: fetched (pulling {_need_free(need, free)})"
        if st.pen[i] <= 0:
            return "fetched: its layers are unpacked by pulled images"
        if img.priority == 0:
            return "fetched: priority 0"
        return "fetched: the space is worth more to other images"
    need = st.keep_bytes(i)
    if free is not None and need > free:
        return f"skipped: budget exhausted (fetching {_need_free(need, free)})"
    return "skipped: budget exhausted"


def _build(
    cat: _Catalog,
    dec: Sequence[int],
    budget: int | None,
    algorithm: str,
    *,
    feasible: bool = True,
    reason: str = "",
) -> Plan:
    ev = _evaluate(cat, dec)
    st = _State(cat, dec)
    out: list[ImagePlan] = []
    for i, img in enumerate(cat.images):
        d = dec[i]
        kept_min = 2 if d in (PULL, FETCH) else 1
        pulled_min = 2 if d == PULL else 1
        if feasible or cat.forced[i] is not None:
            text = _reason(cat, st, i, budget)
        elif cat.allow_skip:
            text = f"skipped: {_forced_what(cat)} exceed the budget"
        else:
            text = "fetched: skipping is not allowed, and fetching everything exceeds the budget"
        out.append(
            ImagePlan(
                name=img.name,
                decision=_NAMES[d],
                requested=img.requested,
                critical=img.critical,
                priority=cat.w[i],
                compressed_bytes=cat.comp[i],
                shared_compressed_bytes=sum(
                    cat.blob_size[b] for b in cat.blobs[i] if st.kc[b] >= kept_min
                ),
                unpacked_bytes=cat.unp[i],
                shared_unpacked_bytes=sum(
                    cat.chain_size[c] for c in cat.chains[i] if st.pc[c] >= pulled_min
                ),
                penalty_seconds=ev.pen[i],
                reason="already in the store" if img.present else text,
                present=img.present,
            )
        )
    if feasible and not reason:
        counts = [sum(1 for i, x in enumerate(dec) if x == k and not cat.images[i].present)
                  for k in (PULL, FETCH, SKIP)]
        reason = f"{counts[0]} pulled, {counts[1]} fetched, {counts[2]} skipped"
        if budget is not None:
            reason += f"; {_fmt(ev.disk)} of {_fmt(budget)}"
    return Plan(
        images=tuple(out),
        budget=budget,
        content_bytes=ev.content,
        snapshot_bytes=ev.snap,
        total_penalty=ev.obj,
        feasible=feasible,
        reason=reason,
        algorithm=algorithm,
        model=cat.model,
    )


def _forced_what(cat: _Catalog) -> str:
    """What an infeasible plan's forced set is: ``the critical and requested images`` and,
    when the store holds some of the images, ``what the store holds already``."""
    if any(im.present for im in cat.images):
        return "the critical and requested images and what the store holds already"
    return "the critical and requested images"


#: Present images an infeasible plan's reason names at most.
_NAMED_PRESENT = 5


def _present_group(cat: _Catalog, short: int) -> str:
    """``already in the store: big:1.0 45.7 MB content + 96.9 MB snapshots``: the images
    whose bytes in the store put the plan over, the largest first until they make up the
    ``short`` bytes (at most :data:`_NAMED_PRESENT`), then how many more hold what."""
    held = [(cat.comp[i] + cat.unp[i], i) for i, im in enumerate(cat.images)
            if im.present and cat.comp[i] + cat.unp[i] > 0]
    held.sort(key=lambda t: (-t[0], t[1]))
    parts: list[str] = []
    covered = 0
    for size, i in held:
        if covered >= short or len(parts) == _NAMED_PRESENT:
            break
        text = f"{cat.images[i].name} {_fmt(cat.comp[i])} content"
        if cat.unp[i]:
            text += f" + {_fmt(cat.unp[i])} snapshots"
        parts.append(text)
        covered += size
    rest = held[len(parts):]
    if rest:
        parts.append(f"{len(rest)} more holding {_fmt(sum(size for size, _ in rest))}")
    return f"already in the store: {', '.join(parts)}" if parts else ""


def _infeasible(cat: _Catalog, budget: int, dec: Sequence[int], algorithm: str) -> Plan | None:
    """An infeasible Plan if the forced images alone exceed the budget, else None."""
    ev = _evaluate(cat, dec)
    if ev.disk <= budget:
        return None
    groups: list[str] = []
    for label in ("critical", "requested pull", "requested fetch"):
        names = [
            im.name
            for im in cat.images
            if not im.present
            and label == ("critical" if im.critical else f"requested {im.mode_request}")
        ]
        if names:
            groups.append(f"{label}: {', '.join(names)}")
    present = _present_group(cat, ev.disk - budget)
    if present:
        groups.append(present)
    what = _forced_what(cat)
    if not cat.allow_skip and cat.auto:
        groups.append(f"fetched because skipping is not allowed: {len(cat.auto)} images")
        what += ", with every other image fetched,"
    reason = (
        f"{what} need {_fmt(ev.disk)} but the budget is "
        f"{_fmt(budget)}: {_fmt(ev.disk - budget)} short ({'; '.join(groups)})"
    )
    return _build(cat, dec, budget, algorithm, feasible=False, reason=reason)


def _check_budget(budget: int | None) -> None:
    if budget is not None and (isinstance(budget, bool) or budget < 0):
        raise InvalidInputError(f"plan: budget must be >= 0 bytes (got {budget})")


_PullRule = Callable[[_Catalog, int], bool]


def _baseline_decisions(cat: _Catalog, budget: int | None, pull: _PullRule) -> list[int]:
    """Fetch the auto images in list order while they fit (else skip), then upgrade
    those ``pull`` accepts to pulled, in list order, whenever the total still fits."""
    st = _State(cat, _forced_decisions(cat))
    for i in cat.auto:
        st.set(i, FETCH)
        if not _fits(st.disk, budget):
            st.set(i, SKIP)
    for i in cat.auto:
        if pull(cat, i):
            prev = st.dec[i]
            st.set(i, PULL)
            if not _fits(st.disk, budget):
                st.set(i, prev)
    return st.dec


def _baseline_plan(
    images: Sequence[PlanImage], budget: int | None, model: CostModel, name: str, pull: _PullRule
) -> Plan:
    _check_budget(budget)
    cat = _Catalog(images, model)
    if budget is not None:
        bad = _infeasible(cat, budget, _forced_decisions(cat), name)
        if bad is not None:
            return bad
    return _build(cat, _baseline_decisions(cat, budget, pull), budget, name)


def _pull_none(cat: _Catalog, i: int) -> bool:
    return False


def _pull_all(cat: _Catalog, i: int) -> bool:
    return True


def _size_rule(limit: int) -> _PullRule:
    def rule(cat: _Catalog, i: int) -> bool:
        return cat.comp[i] < limit

    return rule


def baseline_fetch_all(
    images: Sequence[PlanImage], budget: int | None, *, model: CostModel = DEFAULT_MODEL
) -> Plan:
    """Fetch every auto image (in list order while they fit; the rest skipped)."""
    return _baseline_plan(images, budget, model, "baseline: fetch all", _pull_none)


def baseline_pull_in_order(
    images: Sequence[PlanImage], budget: int | None, *, model: CostModel = DEFAULT_MODEL
) -> Plan:
    """Fetch every auto image, then pull them in list order while the total fits."""
    return _baseline_plan(images, budget, model, "baseline: pull in order", _pull_all)


def baseline_size_rule(
    images: Sequence[PlanImage],
    budget: int | None,
    *,
    model: CostModel = DEFAULT_MODEL,
    limit: int = SIZE_RULE_LIMIT,
) -> Plan:
    """Fetch every auto image, then pull, in list order while the total fits, those
    whose compressed size is below ``limit`` (default 200 MiB)."""
    return _baseline_plan(
        images,
        budget,
        model,
        f"baseline: size rule (< {_fmt(limit)})",
        _size_rule(limit),
    )


def plan(
    images: Sequence[PlanImage],
    budget: int | None,
    *,
    model: CostModel = DEFAULT_MODEL,
    exact_limit: int = EXACT_LIMIT,
    node_limit: int = NODE_LIMIT,
    allow_skip: bool = True,
) -> Plan:
    """Decide pull / fetch / skip for every image (see the module docstring).

    ``budget``: bytes for content + snapshots of these images, None for no limit (every
    auto image is then pulled). ``allow_skip=False``: auto images are at least fetched
    (the plan is infeasible if fetching them all does not fit). Raises InvalidInputError
    for inconsistent input (duplicate names, a blob or chain with two sizes, negative
    sizes or priorities).
    """
    _check_budget(budget)
    cat = _Catalog(images, model, allow_skip=allow_skip)
    forced = _forced_decisions(cat)
    if budget is None:
        return _build(cat, [PULL if f is None else f for f in cat.forced], None, "no budget")
    bad = _infeasible(cat, budget, forced, "infeasible")
    if bad is not None:
        return bad
    if not cat.auto:
        return _build(cat, forced, budget, "nothing to decide")

    candidates: list[tuple[list[int], str]] = [
        (_local_search(cat, budget, _greedy(cat, budget, forced)), "greedy + local search")
    ]
    for name, rule in (
        ("fetch all", _pull_none),
        ("pull in order", _pull_all),
        ("size rule", _size_rule(SIZE_RULE_LIMIT)),
    ):
        dec = _baseline_decisions(cat, budget, rule)
        candidates.append((_local_search(cat, budget, dec), f"baseline {name} + local search"))
    best_dec, best_name = candidates[0]
    best_key = _evaluate(cat, best_dec).key()
    for dec, name in candidates[1:]:
        key = _evaluate(cat, dec).key()
        if _better(key, best_key):
            best_dec, best_name, best_key = dec, name, key

    if len(cat.auto) <= exact_limit:
        dec, nodes, proven = _exact(cat, budget, best_dec, node_limit)
        if proven:
            algorithm = f"exact (branch and bound, {nodes} nodes)"
        else:
            algorithm = f"best found (exact search stopped at {node_limit} nodes)"
        return _build(cat, dec, budget, algorithm)
    return _build(cat, best_dec, budget, f"approximate: {best_name}")
