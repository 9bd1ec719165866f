"""The planner's search (see :mod:`cargohold.bake.plan` for the cost model and the
algorithm): the validated, indexed catalog, the incremental state of a set of decisions,
greedy, local search and branch and bound. Internal to the planner."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cargohold.errors import InvalidInputError
from cargohold.units import format_size

if TYPE_CHECKING:
    from cargohold.bake.plan import CostModel, Mode, PlanImage

_MODES: tuple[Mode, ...] = ("pull", "fetch", "auto")
PULL, FETCH, SKIP, OPEN = 0, 1, 2, 3
_REL_TOL = 1e-9


def _fmt(n: float) -> str:
    return format_size(n)


def _need_free(need: int, free: int) -> str:
    """ "needs X more, Y free", in bytes when rounding would make them look equal."""
    a, b = _fmt(need), _fmt(free)
    if a == b:
        a, b = f"{need} bytes", f"{free} bytes"
    return f"needs {a} more, {b} free"


class _Catalog:
    """The images, validated and indexed: blobs and chains as integers."""

    def __init__(
        self, images: Sequence[PlanImage], model: CostModel, *, allow_skip: bool = True
    ) -> None:
        self.model = model
        self.allow_skip = allow_skip
        #: What an auto image may become, and the least of it.
        self.choices = (PULL, FETCH, SKIP) if allow_skip else (PULL, FETCH)
        self.floor = SKIP if allow_skip else FETCH
        self.images = list(images)
        n = len(self.images)
        self.n = n
        blob_index: dict[str, int] = {}
        chain_index: dict[str, int] = {}
        self.blob_size: list[int] = []
        self.chain_size: list[int] = []
        self.blobs: list[tuple[int, ...]] = []
        self.chains: list[tuple[int, ...]] = []
        self.w: list[float] = []
        self.forced: list[int | None] = []
        seen: set[str] = set()
        for img in self.images:
            if not img.present:
                if img.name in seen:
                    raise InvalidInputError(f"plan: image {img.name!r} is listed twice")
                seen.add(img.name)
            p = img.priority
            if isinstance(p, bool) or not isinstance(p, int | float):
                raise InvalidInputError(f"plan: {img.name}: priority must be a number")
            if not math.isfinite(p) or p < 0:
                raise InvalidInputError(f"plan: {img.name}: priority must be >= 0 (got {p})")
            if img.mode_request not in _MODES:
                raise InvalidInputError(
                    f"plan: {img.name}: mode must be one of pull, fetch, auto "
                    f"(got {img.mode_request!r})"
                )
            if img.critical and img.mode_request == "fetch":
                raise InvalidInputError(
                    f"plan: {img.name}: a critical image is always pulled, not fetched"
                )
            self.w.append(float(p))
            req = img.requested
            self.forced.append(PULL if req == "pull" else FETCH if req == "fetch" else None)
            self.blobs.append(self._index(img.name, "blob", img.blobs, blob_index, self.blob_size))
            self.chains.append(
                self._index(img.name, "chain", img.chains, chain_index, self.chain_size)
            )
        self.blob_users: list[list[int]] = [[] for _ in self.blob_size]
        self.chain_users: list[list[int]] = [[] for _ in self.chain_size]
        for i in range(n):
            for b in self.blobs[i]:
                self.blob_users[b].append(i)
            for c in self.chains[i]:
                self.chain_users[c].append(i)
        self.comp = [sum(self.blob_size[b] for b in self.blobs[i]) for i in range(n)]
        self.unp = [sum(self.chain_size[c] for c in self.chains[i]) for i in range(n)]
        self.auto = [i for i in range(n) if self.forced[i] is None]

    @staticmethod
    def _index(
        name: str,
        what: str,
        items: Iterable[tuple[str, int]],
        index: dict[str, int],
        sizes: list[int],
    ) -> tuple[int, ...]:
        out: list[int] = []
        for key, size in items:
            if size < 0:
                raise InvalidInputError(f"plan: {name}: {what} {key} has a negative size")
            k = index.get(key)
            if k is None:
                k = index[key] = len(sizes)
                sizes.append(size)
            elif sizes[k] != size:
                raise InvalidInputError(
                    f"plan: {name}: {what} {key} has size {size}, another image gives it {sizes[k]}"
                )
            if k not in out:
                out.append(k)
        return tuple(out)

    def penalty(self, d: int, u: int, m: int) -> float:
        if d == FETCH:
            return self.model.fetch_penalty(u)
        if d == SKIP:
            return self.model.skip_penalty(m, u)
        return 0.0  # pulled, or undecided in the search


Key = tuple[float, int, int]  # (objective, skipped images, disk bytes)


def _better(a: Key, b: Key) -> bool:
    tol = _REL_TOL * max(1.0, abs(a[0]), abs(b[0]))
    if a[0] < b[0] - tol:
        return True
    if a[0] > b[0] + tol:
        return False
    return (a[1], a[2]) < (b[1], b[2])


class _State:
    """Decisions plus what follows from them, updated incrementally by :meth:`set`.

    ``kc[b]``: kept images holding blob b; ``pc[c]``: pulled images with chain c;
    ``u[i]`` / ``m[i]``: unpacked bytes of i's chains nobody pulled / compressed bytes of
    i's blobs nobody keeps. With ``track`` also the optimistic counterparts for the branch
    and bound (undecided images counted as pulled) and ``lb``, the sum of the decided
    images' lowest possible weighted penalties.
    """

    def __init__(self, cat: _Catalog, dec: Sequence[int], *, track: bool = False) -> None:
        self.cat = cat
        self.dec = list(dec)
        self.track = track
        self.kc = [0] * len(cat.blob_size)
        self.pc = [0] * len(cat.chain_size)
        self.pkc = [0] * len(cat.blob_size)
        self.ppc = [0] * len(cat.chain_size)
        for i, d in enumerate(self.dec):
            if d in (PULL, FETCH):
                for b in cat.blobs[i]:
                    self.kc[b] += 1
            if d == PULL:
                for c in cat.chains[i]:
                    self.pc[c] += 1
            if d != SKIP:
                for b in cat.blobs[i]:
                    self.pkc[b] += 1
            if d in (PULL, OPEN):
                for c in cat.chains[i]:
                    self.ppc[c] += 1
        self.content = sum(s for s, k in zip(cat.blob_size, self.kc, strict=True) if k)
        self.snap = sum(s for s, k in zip(cat.chain_size, self.pc, strict=True) if k)
        bs, cs = cat.blob_size, cat.chain_size
        self.u = [sum(cs[c] for c in cat.chains[i] if not self.pc[c]) for i in range(cat.n)]
        self.m = [sum(bs[b] for b in cat.blobs[i] if not self.kc[b]) for i in range(cat.n)]
        self.umin = [sum(cs[c] for c in cat.chains[i] if not self.ppc[c]) for i in range(cat.n)]
        self.mmin = [sum(bs[b] for b in cat.blobs[i] if not self.pkc[b]) for i in range(cat.n)]
        self.pen = [cat.penalty(self.dec[i], self.u[i], self.m[i]) for i in range(cat.n)]
        self.lbpen = [cat.penalty(self.dec[i], self.umin[i], self.mmin[i]) for i in range(cat.n)]
        self.obj = sum(w * p for w, p in zip(cat.w, self.pen, strict=True))
        self.lb = sum(w * p for w, p in zip(cat.w, self.lbpen, strict=True))
        self.skips = sum(1 for d in self.dec if d == SKIP)

    @property
    def disk(self) -> int:
        return self.content + self.snap

    def key(self) -> Key:
        return (self.obj, self.skips, self.disk)

    def set(self, i: int, d: int) -> None:
        old = self.dec[i]
        if old == d:
            return
        cat = self.cat
        touched = {i}
        was_kept, is_kept = old in (PULL, FETCH), d in (PULL, FETCH)
        if was_kept != is_kept:
            step = 1 if is_kept else -1
            for b in cat.blobs[i]:
                k = self.kc[b]
                self.kc[b] = k + step
                if (k == 0) if is_kept else (k == 1):
                    size = cat.blob_size[b]
                    self.content += step * size
                    for j in cat.blob_users[b]:
                        self.m[j] -= step * size
                        touched.add(j)
        was_pulled, is_pulled = old == PULL, d == PULL
        if was_pulled != is_pulled:
            step = 1 if is_pulled else -1
            for c in cat.chains[i]:
                k = self.pc[c]
                self.pc[c] = k + step
                if (k == 0) if is_pulled else (k == 1):
                    size = cat.chain_size[c]
                    self.snap += step * size
                    for j in cat.chain_users[c]:
                        self.u[j] -= step * size
                        touched.add(j)
        if self.track:
            was_pk, is_pk = old != SKIP, d != SKIP
            if was_pk != is_pk:
                step = 1 if is_pk else -1
                for b in cat.blobs[i]:
                    k = self.pkc[b]
                    self.pkc[b] = k + step
                    if (k == 0) if is_pk else (k == 1):
                        for j in cat.blob_users[b]:
                            self.mmin[j] -= step * cat.blob_size[b]
                            touched.add(j)
            was_pp, is_pp = old in (PULL, OPEN), d in (PULL, OPEN)
            if was_pp != is_pp:
                step = 1 if is_pp else -1
                for c in cat.chains[i]:
                    k = self.ppc[c]
                    self.ppc[c] = k + step
                    if (k == 0) if is_pp else (k == 1):
                        for j in cat.chain_users[c]:
                            self.umin[j] -= step * cat.chain_size[c]
                            touched.add(j)
        self.skips += (d == SKIP) - (old == SKIP)
        self.dec[i] = d
        w, dec = cat.w, self.dec
        for j in touched:
            p = cat.penalty(dec[j], self.u[j], self.m[j])
            self.obj += w[j] * (p - self.pen[j])
            self.pen[j] = p
            if self.track:
                q = cat.penalty(dec[j], self.umin[j], self.mmin[j])
                self.lb += w[j] * (q - self.lbpen[j])
                self.lbpen[j] = q

    def pull_bytes(self, i: int) -> int:
        """Extra disk if i (not pulled) were pulled."""
        cat = self.cat
        extra = sum(cat.chain_size[c] for c in cat.chains[i] if not self.pc[c])
        if self.dec[i] not in (PULL, FETCH):
            extra += sum(cat.blob_size[b] for b in cat.blobs[i] if not self.kc[b])
        return extra

    def keep_bytes(self, i: int) -> int:
        """Extra disk if i (not kept) were fetched."""
        cat = self.cat
        return sum(cat.blob_size[b] for b in cat.blobs[i] if not self.kc[b])


@dataclass
class _Eval:
    obj: float
    content: int
    snap: int
    skips: int
    pen: list[float]

    @property
    def disk(self) -> int:
        return self.content + self.snap

    def key(self) -> Key:
        return (self.obj, self.skips, self.disk)


def _evaluate(cat: _Catalog, dec: Sequence[int]) -> _Eval:
    """The objective and disk of complete decisions, from scratch."""
    kept: set[int] = set()
    pulled: set[int] = set()
    for i, d in enumerate(dec):
        if d in (PULL, FETCH):
            kept.update(cat.blobs[i])
        if d == PULL:
            pulled.update(cat.chains[i])
    pen: list[float] = []
    for i, d in enumerate(dec):
        u = sum(cat.chain_size[c] for c in cat.chains[i] if c not in pulled)
        m = sum(cat.blob_size[b] for b in cat.blobs[i] if b not in kept)
        pen.append(cat.penalty(d, u, m))
    return _Eval(
        obj=sum(w * p for w, p in zip(cat.w, pen, strict=True)),
        content=sum(cat.blob_size[b] for b in kept),
        snap=sum(cat.chain_size[c] for c in pulled),
        skips=sum(1 for d in dec if d == SKIP),
        pen=pen,
    )


def _forced_decisions(cat: _Catalog) -> list[int]:
    return [cat.floor if f is None else f for f in cat.forced]


def _fits(disk: int, budget: int | None) -> bool:
    return budget is None or disk <= budget


# ---- greedy


def _upgrade(st: _State, i: int, d: int) -> tuple[float, int]:
    """(objective decrease, extra bytes) of moving i up to d (fetch or pull)."""
    cat = st.cat
    model = cat.model
    old = st.dec[i]
    w = cat.w
    gain = w[i] * st.pen[i]
    extra = 0
    if old == SKIP:
        for b in cat.blobs[i]:
            if not st.kc[b]:
                size = cat.blob_size[b]
                extra += size
                for j in cat.blob_users[b]:
                    if j != i and st.dec[j] == SKIP:
                        gain += w[j] * size / model.skip_bandwidth
    if d == PULL:
        acc: dict[int, int] = {}
        for c in cat.chains[i]:
            if not st.pc[c]:
                size = cat.chain_size[c]
                extra += size
                for j in cat.chain_users[c]:
                    if j != i and st.dec[j] != PULL:
                        acc[j] = acc.get(j, 0) + size
        for j, s in acc.items():
            before = st.u[j]
            gain += w[j] * (s / model.unpack_throughput)
            if before > 0 and before == s:
                gain += w[j] * model.per_image_overhead
    else:
        gain -= w[i] * model.fetch_penalty(st.u[i])
    return gain, extra


def _greedy(cat: _Catalog, budget: int, start: Sequence[int]) -> list[int]:
    st = _State(cat, start)
    while True:
        free = budget - st.disk
        best: tuple[float, float] | None = None
        move = (-1, -1)
        for i in cat.auto:
            cur = st.dec[i]
            for d in (FETCH, PULL) if cur == SKIP else (PULL,) if cur == FETCH else ():
                gain, extra = _upgrade(st, i, d)
                if extra > free or gain <= 1e-12:
                    continue
                score = (gain / extra if extra else math.inf, gain)
                if best is None or score > best:
                    best, move = score, (i, d)
        if best is None:
            return st.dec
        st.set(*move)


# ---- local search


def _local_search(cat: _Catalog, budget: int, dec: Sequence[int], max_passes: int = 8) -> list[int]:
    st = _State(cat, dec)
    autos = cat.auto
    for _ in range(max_passes):
        improved = False
        # single changes
        for i in autos:
            cur = st.dec[i]
            best_key, best_d = st.key(), cur
            for d in cat.choices:
                if d == cur:
                    continue
                st.set(i, d)
                if st.disk <= budget and _better(st.key(), best_key):
                    best_key, best_d = st.key(), d
                st.set(i, cur)
            if best_d != cur:
                st.set(i, best_d)
                improved = True
        # swaps: one image down a step, another up a step
        for down, up in ((PULL, FETCH), (FETCH, SKIP)) if cat.allow_skip else ((PULL, FETCH),):
            higher = [i for i in autos if st.dec[i] == down]
            lower = [j for j in autos if st.dec[j] == up]
            for i in higher:
                if st.dec[i] != down:
                    continue
                base = st.key()
                st.set(i, up)
                free = budget - st.disk
                best_key, best_j = base, -1
                for j in lower:
                    if st.dec[j] != up or j == i:
                        continue
                    need = st.pull_bytes(j) if down == PULL else st.keep_bytes(j)
                    if need > free:
                        continue
                    st.set(j, down)
                    if st.disk <= budget and _better(st.key(), best_key):
                        best_key, best_j = st.key(), j
                    st.set(j, up)
                if best_j >= 0:
                    st.set(best_j, down)
                    improved = True
                    lower = [j for j in autos if st.dec[j] == up]
                else:
                    st.set(i, down)
        if not improved:
            break
    return st.dec


# ---- branch and bound


class _NodeLimit(Exception):
    pass


def _open_bound(st: _State, undecided: Sequence[int], budget: int) -> float:
    """A lower bound on the weighted penalties of the ``undecided`` (OPEN) images of a
    tracking state (``_State.lb`` bounds the decided ones).

    For an undecided j, ``e`` = the unpacked bytes of the chains only j could still
    unpack (no pulled or other undecided image has them) and ``x`` = the compressed bytes
    of the blobs only j could still keep; these sets are disjoint across images and not
    on disk yet. Relaxed, j picks skip (costs 0 bytes, pays at least the skip penalty of
    downloading ``x`` and unpacking ``e``), fetch (``x`` bytes, the fetch penalty of
    ``e``) or pull (``x + e`` bytes, nothing), and the bytes picked fit in the budget
    left. The linear relaxation of that multiple-choice knapsack (greedy over the convex
    hull of each image's options, best penalty per byte first, the last one fractional)
    bounds the undecided images' penalties from below. Options that no longer fit at
    all (``x`` or ``x + e`` plus what j shares with decided images) are left out.
    """
    cat = st.cat
    model = cat.model
    allow_skip = cat.allow_skip
    disk = st.disk
    room = budget - disk
    total = 0.0
    steps: list[tuple[float, float, int]] = []  # (saving per byte, saving, bytes)
    for j in undecided:
        keep = sum(cat.blob_size[b] for b in cat.blobs[j] if not st.kc[b])
        pull = keep + sum(cat.chain_size[c] for c in cat.chains[j] if not st.pc[c])
        e = sum(cat.chain_size[c] for c in cat.chains[j] if st.ppc[c] <= 1)
        x = sum(cat.blob_size[b] for b in cat.blobs[j] if st.pkc[b] <= 1)
        w = cat.w[j]
        fetch_loss = w * model.fetch_penalty(e)
        can_pull = disk + pull <= budget
        if not allow_skip:
            room -= x  # fetched at least: its own blobs come anyway
            total += fetch_loss
            if can_pull and fetch_loss > 0:
                steps.append((fetch_loss / e, fetch_loss, e))
            continue
        skip_loss = w * model.skip_penalty(x, e)
        total += skip_loss
        if disk + keep > budget:
            continue  # skipped for sure
        to_fetch = skip_loss - fetch_loss
        if not can_pull or fetch_loss <= 0:
            steps.append((to_fetch / x if x else math.inf, to_fetch, x))
        elif x and to_fetch / x < fetch_loss / e:
            # fetching is not on the hull: skip -> pull in one step
            steps.append((skip_loss / (x + e), skip_loss, x + e))
        else:
            steps.append((to_fetch / x if x else math.inf, to_fetch, x))
            steps.append((fetch_loss / e, fetch_loss, e))
    steps.sort(key=lambda t: t[0], reverse=True)
    for _, saving, size in steps:
        if room <= 0 and size > 0:
            break
        if size <= room:
            room -= size
            total -= saving
        else:
            total -= saving * room / size
            room = 0
    return max(total, 0.0)


def _exact(
    cat: _Catalog, budget: int, incumbent: Sequence[int], node_limit: int
) -> tuple[list[int], int, bool]:
    """(best decisions, nodes visited, proven optimal)."""
    model = cat.model
    full_pen = [model.fetch_penalty(cat.unp[i]) for i in range(cat.n)]
    order = sorted(cat.auto, key=lambda i: (-cat.w[i] * full_pen[i], i))
    start = [OPEN if f is None else f for f in cat.forced]
    st = _State(cat, start, track=True)
    best_dec = list(incumbent)
    best_key = _evaluate(cat, best_dec).key()
    nodes = 0

    def dfs(k: int) -> None:
        nonlocal nodes, best_key, best_dec
        nodes += 1
        if nodes > node_limit:
            raise _NodeLimit
        if k == len(order):
            key = st.key()
            if _better(key, best_key):
                best_key, best_dec = key, list(st.dec)
            return
        lb = st.lb + _open_bound(st, order[k:], budget)
        tol = _REL_TOL * max(1.0, abs(best_key[0]))
        if lb > best_key[0] + tol:
            return
        if lb >= best_key[0] - tol and (st.skips, st.disk) >= (best_key[1], best_key[2]):
            return
        i = order[k]
        for d in cat.choices:
            st.set(i, d)
            if st.disk <= budget:
                dfs(k + 1)
        st.set(i, OPEN)

    try:
        dfs(0)
    except _NodeLimit:
        return best_dec, nodes, False
    return best_dec, nodes, True
