"""What a bake did, per image and in all (:class:`BakeReport`; ``to_json`` is the ``--report``
file and the ``--json`` summary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cargohold import __version__
from cargohold.bake.catalog import CatalogPlan
from cargohold.bake.plan import Decision
from cargohold.bake.state import now as _now
from cargohold.errors import CargoholdError
from cargohold.maintain.verify import Problem
from cargohold.pull.fetch import FetchResult
from cargohold.units import format_size
from cargohold.unpack.image import UnpackResult

__all__ = ["BakeImage", "BakeReport", "fail"]


@dataclass
class BakeImage:
    """One spec entry's outcome."""

    name: str
    decision: Decision
    critical: bool
    priority: float
    platforms: list[str]
    digest: str
    planned_compressed_bytes: int
    planned_unpacked_bytes: int
    penalty_seconds: float
    status: str = "pending"  # ok | failed | skipped
    error: dict[str, Any] | None = None
    fetch: FetchResult | None = None
    unpack: list[UnpackResult] = field(default_factory=list)
    content_bytes: int = 0
    snapshot_bytes: int = 0
    exception: CargoholdError | None = field(default=None, repr=False)
    #: False for an entry that could not be resolved: it has no decision (``mode`` null).
    resolved: bool = True

    #: Bytes of its manifests and configs the plan downloaded and the fetch stored.
    plan_transferred: int = 0

    @property
    def bytes_transferred(self) -> int:
        return self.plan_transferred + (self.fetch.bytes_transferred if self.fetch else 0)

    @property
    def fetch_seconds(self) -> float:
        return self.fetch.seconds if self.fetch else 0.0

    @property
    def unpack_seconds(self) -> float:
        return sum(u.seconds for u in self.unpack if not u.already_unpacked)

    @property
    def planned_bytes(self) -> int:
        """What the plan expected it to take on disk: its blobs if kept, its chains if
        pulled (shared bytes counted in each image that has them, as :attr:`measured_bytes`)."""
        kept = self.planned_compressed_bytes if self.decision != "skip" else 0
        return kept + (self.planned_unpacked_bytes if self.decision == "pull" else 0)

    @property
    def measured_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    def over_plan(self) -> tuple[int, str] | None:
        """``(bytes, why)`` when it takes more disk than planned, else None: snapshots of an
        image the plan did not pull (unpacked outside the bake: a container's first start,
        ``pull``, ``unpack``), content of one it skipped (an earlier fetch), or more bytes
        than estimated."""
        excess = self.measured_bytes - self.planned_bytes
        if excess <= 0:
            return None
        if self.decision != "pull" and self.snapshot_bytes > 0:
            return excess, (f"{format_size(self.snapshot_bytes)} of snapshots the plan did not "
                            "pull (unpacked outside the bake: a container's first start, "
                            "`pull` or `unpack`)")
        if self.decision == "skip" and self.content_bytes > 0:
            return excess, (f"{format_size(self.content_bytes)} of content the plan skipped "
                            "(fetched outside this bake)")
        return excess, (f"{format_size(excess)} more than planned (layer sizes estimated or "
                        "read off the blobs; files take whole blocks)")

    @property
    def did_work(self) -> bool:
        """Whether this run wrote anything for the image (blobs, a record, a snapshot)."""
        if self.plan_transferred:
            return True
        if self.fetch is not None and (
            self.fetch.bytes_transferred or self.fetch.record != "unchanged"
        ):
            return True
        return any(not u.already_unpacked for u in self.unpack)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "platforms": self.platforms,
            "mode": self.decision if self.resolved else None,
            "critical": self.critical,
            "priority": self.priority,
            "status": self.status,
            "error": self.error,
            "planned": {
                "compressed_bytes": self.planned_compressed_bytes,
                "unpacked_bytes": self.planned_unpacked_bytes,
                "penalty_seconds": round(self.penalty_seconds, 3),
            },
            "bytes": {
                "content": self.content_bytes,
                "snapshots": self.snapshot_bytes,
                "transferred": self.bytes_transferred,
            },
            "durations": {
                "fetch_seconds": round(self.fetch_seconds, 3),
                "unpack_seconds": round(self.unpack_seconds, 3),
            },
            "record": self.fetch.record if self.fetch else None,
            "unpack": [
                {
                    "platform": u.platform,
                    "chain_id": u.chain_id,
                    "chains_total": u.chains_total,
                    "chains_unpacked": u.chains_unpacked,
                    "bytes_uncompressed": u.bytes_uncompressed,
                    "seconds": round(u.seconds, 3),
                }
                for u in self.unpack
            ],
        }


@dataclass
class BakeReport:
    """What a bake did; ``to_json`` is the ``--report`` file."""

    spec: str
    spec_digest: str
    store: str
    namespace: str
    budget: int | None
    reserve: int
    plan: CatalogPlan
    plan_reused: bool
    images: list[BakeImage]
    started_at: str = field(default_factory=_now)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    content_bytes: int = 0
    snapshot_bytes: int = 0
    snapshots_measured: bool = False

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    @property
    def failed(self) -> list[BakeImage]:
        return [i for i in self.images if i.status == "failed"]

    @property
    def ok(self) -> list[BakeImage]:
        return [i for i in self.images if i.status == "ok"]

    @property
    def nothing_done(self) -> bool:
        """A rerun that found everything in place: nothing fetched, recorded or unpacked."""
        return not self.failed and not any(i.did_work for i in self.images)

    @property
    def over_budget(self) -> int:
        """Bytes over the budget after the bake (0 when within it or without one)."""
        if self.budget is None:
            return 0
        return max(0, self.total_bytes - self.budget)

    def count(self, decision: Decision) -> int:
        """Images with this decision that did not fail (a failed image counts only as
        failed, so the counts add up to the images)."""
        return sum(1 for i in self.images if i.decision == decision and i.status != "failed")

    def over_budget_causes(self) -> list[tuple[str, int, str]]:
        """``(image, bytes, why)`` of the images that take more disk than the plan gave
        them, the most first: what put the bake over its budget."""
        causes = []
        for img in self.images:
            over = img.over_plan()
            if over is not None:
                causes.append((img.name, over[0], over[1]))
        return sorted(causes, key=lambda c: (-c[1], c[0]))

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": {"name": "cargohold", "version": __version__},
            "spec": self.spec,
            "spec_digest": self.spec_digest,
            "store": self.store,
            "namespace": self.namespace if self.store == "containerd" else None,
            "started_at": self.started_at,
            "plan_reused": self.plan_reused,
            "nothing_done": self.nothing_done,
            "images": [i.to_json() for i in self.images],
            "totals": {
                "images": len(self.images),
                "pulled": self.count("pull"),
                "fetched": self.count("fetch"),
                "skipped": self.count("skip"),
                "failed": len(self.failed),
                "budget_bytes": self.budget,
                "reserve_bytes": self.reserve,
                "content_bytes": self.content_bytes,
                "snapshot_bytes": self.snapshot_bytes if self.snapshots_measured else None,
                "total_bytes": self.total_bytes,
                "over_budget_bytes": self.over_budget,
                "over_plan": [{"name": n, "bytes": b, "reason": why}
                              for n, b, why in self.over_budget_causes()],
                "bytes_transferred": sum(i.bytes_transferred for i in self.images),
                "planned_total_bytes": self.plan.total_bytes,
                "planned_penalty_seconds": self.plan.total_penalty,
                "seconds": round(self.seconds, 3),
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
            },
            "problems": [p.to_json() for p in self.problems],
            "plan": self.plan.to_json(),
        }

def fail(img: BakeImage, error: CargoholdError) -> None:
    img.status = "failed"
    img.exception = error
    img.error = {"error": error.kind, "message": error.message, "exit_code": error.exit_code}
