"""Turn a cache spec into the planner's input: one :class:`~cargohold.bake.plan.PlanImage` per entry.

Only manifests and configs are read (from the store when it holds them, verified, else from
the registry); no layer is downloaded. For every entry of the spec:

* the reference is resolved, its index or manifest read, and for an index the manifests of
  ``spec.platforms_for(entry)`` (default: the caller's platforms, else this host's) chosen
  as ``fetch`` would choose them;
* ``blobs`` = ``(digest, size)`` of the index, the chosen manifests, their configs and
  layers (what a fetch keeps);
* ``chains`` = the chain ID of every layer (from the config's ``diff_ids``) with the unpacked
  size of that layer:

  - **measured** when the chain is unpacked in this store already (the snapshotter's usage
    of the committed snapshot named by the chain ID; for a snapshotter whose snapshots are
    full copies, :func:`usage_excludes_parents` false, the difference to its parent's usage);
  - else, when the layer blob is in the store already, its **tar size** read off the blob
    without inflating it (:func:`local_tar_size`: the gzip trailer's ISIZE, the zstd frame
    header's content size, the size of an uncompressed layer);
  - else **estimated** as ``estimate_unpacked(layer compressed size, ratio)``, where
    ``ratio`` = unpacked / compressed bytes over the layers of this store's images that are
    unpacked, each of at least :data:`RATIO_MIN_LAYER` (1 MB) compressed, clamped to
    :data:`RATIO_RANGE` (1-8x) (:func:`unpack_ratio`), or, when no such layer is unpacked
    (or no snapshotter is available), :data:`~cargohold.bake.plan.DEFAULT_UNPACK_RATIO` (2.5).

Entries are resolved concurrently (``jobs`` at a time; the registry client's per-host limit
still applies), each reported to :class:`ResolveEvents` as it resolves or fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cargohold.bake.plan import (
    DEFAULT_MODEL,
    CostModel,
    Decision,
    ImagePlan,
    PlanImage,
    plan,
    totals_json,
)
from cargohold.bake.resolve import (
    MAX_CONFIG_SIZE,
    CatalogImage,
    Downloaded,
    Downloads,
    ResolveEvents,
    resolve_entry,
    resolve_spec,
)
from cargohold.bake.sizes import (
    RATIO_MIN_LAYER,
    RATIO_RANGE,
    UnpackRatio,
    chain_layer_sizes,
    local_tar_size,
    ratio_of,
    snapshotter_of,
    unpack_ratio,
    usage_excludes_parents,
)
from cargohold.errors import BudgetError

__all__ = [
    "MAX_CONFIG_SIZE",
    "RATIO_MIN_LAYER",
    "RATIO_RANGE",
    "CatalogImage",
    "CatalogPlan",
    "Downloaded",
    "Downloads",
    "PlanRow",
    "ResolveEvents",
    "UnpackRatio",
    "budget_hint",
    "chain_layer_sizes",
    "local_tar_size",
    "plan_catalog",
    "present_footprint",
    "ratio_of",
    "resolve_entry",
    "resolve_spec",
    "snapshotter_of",
    "unpack_ratio",
    "usage_excludes_parents",
]


def present_footprint(catalog: Sequence[CatalogImage]) -> list[PlanImage]:
    """What the store already holds of the catalog's images, one present pseudo-image
    (:attr:`PlanImage.present <cargohold.bake.plan.PlanImage>`) per image holding something,
    named as the image: its blobs and chains are disk in use whatever the plan decides
    (nothing is deleted), so an image sharing them pays nothing more for them, pulling an
    image whose chains are all committed is free, and an infeasible plan names the images
    whose bytes the store holds."""
    out: list[PlanImage] = []
    for c in catalog:
        if c.present_blobs or c.present_chains:
            out.append(PlanImage(name=c.image.name, priority=0.0, mode_request="pull",
                                 blobs=c.present_blobs, chains=c.present_chains, present=True))
    return out



@dataclass(frozen=True)
class PlanRow:
    """One spec image's row of a catalog plan: the planner's decision (relabelled where the
    store holds the image already) and what resolving it found."""

    plan: ImagePlan
    platforms: tuple[str, ...]
    digest: str
    measured_chains: int = 0
    blob_sized_chains: int = 0

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def decision(self) -> Decision:
        return self.plan.decision

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "platforms": list(self.platforms),
            "digest": self.digest,
            "measured_chains": self.measured_chains,
            "blob_sized_chains": self.blob_sized_chains,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PlanRow:
        return cls(
            ImagePlan.from_json(doc),
            tuple(str(p) for p in doc["platforms"]),
            str(doc["digest"]),
            int(doc["measured_chains"]),
            int(doc["blob_sized_chains"]),
        )


@dataclass(frozen=True)
class CatalogPlan:
    """The plan of a catalog (:func:`plan_catalog`): one :class:`PlanRow` per image (the
    present pseudo-images left out), the totals (which include ``present_bytes``, what the
    store holds already) and the cost model's throughput figures. ``refined`` and
    ``unpack_ratio`` are a bake's (None in a plan that is not one): whether it was
    re-planned after the fetch, and the ratio unmeasured layers were estimated at."""

    images: tuple[PlanRow, ...]
    feasible: bool
    reason: str
    algorithm: str
    budget: int | None
    content_bytes: int
    snapshot_bytes: int
    total_penalty: float
    present_bytes: int
    unpack_throughput: float
    per_image_overhead: float
    refined: bool | None = None
    unpack_ratio: UnpackRatio | None = None

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    def row(self, name: str) -> PlanRow:
        for r in self.images:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            **totals_json(self),
            "images": [r.to_json() for r in self.images],
            "present_bytes": self.present_bytes,
            "model": {"unpack_throughput": self.unpack_throughput,
                      "per_image_overhead": self.per_image_overhead},
        }
        if self.refined is not None:
            doc["refined"] = self.refined
        if self.unpack_ratio is not None:
            doc["unpack_ratio"] = self.unpack_ratio.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CatalogPlan:
        """The plan :meth:`to_json` wrote (KeyError, TypeError, ValueError if it is not one)."""
        budget = doc["budget"]
        ratio = doc.get("unpack_ratio")
        refined = doc.get("refined")
        return cls(
            images=tuple(PlanRow.from_json(r) for r in doc["images"]),
            feasible=bool(doc["feasible"]),
            reason=str(doc["reason"]),
            algorithm=str(doc["algorithm"]),
            budget=None if budget is None else int(budget),
            content_bytes=int(doc["content_bytes"]),
            snapshot_bytes=int(doc["snapshot_bytes"]),
            total_penalty=float(doc["total_penalty"]),
            present_bytes=int(doc["present_bytes"]),
            unpack_throughput=float(doc["model"]["unpack_throughput"]),
            per_image_overhead=float(doc["model"]["per_image_overhead"]),
            refined=None if refined is None else bool(refined),
            unpack_ratio=None if ratio is None else UnpackRatio.from_json(ratio),
        )


def budget_hint(plan: CatalogPlan) -> str:
    """The hint of an infeasible plan."""
    if plan.present_bytes:
        return ("raise the budget, drop images from the spec, or free what the store holds of "
                "the images named (`containers rm` their containers, `images rm`, then `gc`)")
    return BudgetError.hint


def _held_already(row: ImagePlan, c: CatalogImage, model: CostModel) -> ImagePlan:
    """The row relabelled to what the store holds of its image already: pulled when its
    layers are all unpacked, fetched when its blobs are all there (else the row itself)."""
    committed = {ch for ch, _ in c.present_chains}
    held = {d for d, _ in c.present_blobs}
    unpacked = bool(c.image.chains) and all(ch in committed for ch, _ in c.image.chains)
    fetched = bool(c.image.blobs) and all(d in held for d, _ in c.image.blobs)
    if unpacked and (row.decision == "fetch" or fetched) and row.requested != "fetch":
        # Its layers are all unpacked already: it is pulled, at no cost.
        if row.decision != "pull" or row.requested == "auto":
            return replace(row, decision="pull", penalty_seconds=0.0,
                           reason="pulled already: its layers are unpacked in the store")
    elif fetched and row.decision == "skip":
        left = sum(size for ch, size in c.image.chains if ch not in committed)
        return replace(row, decision="fetch", penalty_seconds=model.fetch_penalty(left),
                       reason="fetched already: its blobs are in the store")
    return row


def plan_catalog(
    catalog: Sequence[CatalogImage],
    budget: int | None,
    *,
    model: CostModel = DEFAULT_MODEL,
    allow_skip: bool = True,
    also_present: Sequence[CatalogImage] = (),
) -> CatalogPlan:
    """Plan the catalog's images with what the store already holds of them as a fixed cost
    (:func:`present_footprint`): the images' rows (the present pseudo-images left out) with
    each image's platforms, digest and how its chains were sized, the totals (which include
    the present bytes), and ``present_bytes``. ``also_present``: other images whose present
    blobs and chains count as fixed too (not planned)."""
    fixed = present_footprint([*catalog, *also_present])
    images = [c.image for c in catalog] + fixed
    result = plan(images, budget, model=model, allow_skip=allow_skip)
    planned = result.images[:len(catalog)]  # the present pseudo-images come after
    total_penalty = result.total_penalty
    rows: list[PlanRow] = []
    for ip, c in zip(planned, catalog, strict=True):
        row = _held_already(ip, c, model)
        if row is not ip:  # the plan's penalty follows the row's
            total_penalty += row.priority * (row.penalty_seconds - ip.penalty_seconds)
        rows.append(PlanRow(row, c.platforms, str(c.target.digest), c.measured_chains,
                            c.blob_sized_chains))
    reason = result.reason
    if result.feasible and [r.decision for r in rows] != [i.decision for i in planned]:
        # The summary counts what the rows say now ("N pulled, ...; X of Y").
        counts = [sum(1 for r in rows if r.decision == d) for d in ("pull", "fetch", "skip")]
        reason = "; ".join([
            f"{counts[0]} pulled, {counts[1]} fetched, {counts[2]} skipped",
            *reason.split("; ", 1)[1:]])
    present_blobs = {d: size for f in fixed for d, size in f.blobs}
    present_chains = {ch: size for f in fixed for ch, size in f.chains}
    return CatalogPlan(
        images=tuple(rows),
        feasible=result.feasible,
        reason=reason,
        algorithm=result.algorithm,
        budget=result.budget,
        content_bytes=result.content_bytes,
        snapshot_bytes=result.snapshot_bytes,
        total_penalty=total_penalty,
        present_bytes=sum(present_blobs.values()) + sum(present_chains.values()),
        unpack_throughput=model.unpack_throughput,
        per_image_overhead=model.per_image_overhead,
    )
