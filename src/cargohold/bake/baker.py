"""Bake: carry out a cache spec's plan into a store (the node-image build step).

:class:`Baker` runs the phases in order; every phase is idempotent, so a rerun after a
crash, a Ctrl-C or a failed image picks up where the last run stopped:

1. **plan**: resolve every entry (manifests and configs only) and decide pull / fetch /
   skip under the budget (:mod:`cargohold.bake.plan`). The plan is saved under the root
   (``bakes/<key>.json``, keyed by the spec's bytes, the store and the namespace) and a
   later bake of the same spec **reuses its decisions** as long as every image still
   resolves to the digest it was planned with: measurements taken while baking (unpacked
   sizes, a new calibration) cannot turn a finished bake into new work, and an
   interrupted one resumes with the same decisions. ``replan=True`` plans afresh.
   An infeasible plan (the critical and requested images alone exceed the budget) stops
   here with :class:`BudgetError` before anything is written; so does a plan whose new
   bytes do not fit the file system's free space less the reserve (embedded store).
2. **fetch** every image not skipped, grouped by platforms and pinning (critical images are
   pinned on containerd), writing CRI's records on containerd.
3. **unpack** the pulled images (existing chains are skipped).
4. **verify** the baked images (blobs that were already in the store re-hashed; those this
   bake downloaded were verified by the store on commit and are only size-checked; pulled
   images' chains present).
5. **measure**: the disk the baked images use (content + snapshots, shared bytes once),
   checked against the budget (unpacked sizes were estimated while planning; a bake that
   ends over budget keeps everything and raises :class:`BudgetError`).

Failed images are reported and the others kept; the CLI turns the outcome into exit codes.
A bake never deletes anything: images dropped from a spec stay until ``images rm`` + ``gc``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold import __version__
from cargohold.bake.catalog import (
    CatalogImage,
    ResolveEvents,
    UnpackRatio,
    budget_hint,
    plan_catalog,
    resolve_spec,
    unpack_ratio,
)
from cargohold.bake.plan import DEFAULT_MODEL, CostModel, Decision
from cargohold.bake.spec import CacheSpec, ImageEntry
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    ConflictError,
    DigestMismatchError,
    OutOfSpaceError,
)
from cargohold.interrupts import held, shutdown, wait_until
from cargohold.maintain.du import disk_usage
from cargohold.maintain.verify import Problem, verify
from cargohold.node.warmorder import label_record
from cargohold.oci.descriptor import Platform
from cargohold.pull.fetch import (
    CommittedBlobs,
    Fetcher,
    FetchEvents,
    FetchFailure,
    FetchResult,
    RecordPolicy,
)
from cargohold.units import format_size
from cargohold.unpack.image import Unpacker, UnpackEvents, UnpackResult

__all__ = ["BakeImage", "BakeReport", "Baker", "state_path"]

STATE_DIR = "bakes"
STATE_VERSION = 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def spec_digest(spec: CacheSpec) -> str:
    """sha256 of the spec file's bytes as :func:`~cargohold.bake.spec.load_spec` read them (what
    a reused plan is keyed by); of the spec's path for a spec parsed from text."""
    return spec.digest or "sha256:" + hashlib.sha256(spec.path.encode()).hexdigest()


def spec_path(spec: CacheSpec) -> str:
    """The spec's file as an absolute path (a spec parsed from text: its name as given)."""
    return os.path.abspath(spec.path) if spec.digest else spec.path


def state_path(root: Path, spec: CacheSpec, store: str, namespace: str) -> Path:
    key = hashlib.sha256(
        f"{spec_digest(spec)}\0{store}\0{namespace}".encode()
    ).hexdigest()[:20]
    return Path(root) / STATE_DIR / f"{key}.json"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path``: temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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

    @property
    def bytes_transferred(self) -> int:
        return self.fetch.bytes_transferred if self.fetch else 0

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
    plan: dict[str, Any]
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
                "planned_total_bytes": self.plan.get("total_bytes"),
                "planned_penalty_seconds": self.plan.get("total_penalty"),
                "seconds": round(self.seconds, 3),
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
            },
            "problems": [p.to_json() for p in self.problems],
            "plan": self.plan,
        }


class BakeEvents(ResolveEvents):
    """Progress callbacks of a bake (the CLI subclasses it): the first plan's resolution
    of the spec, phases, unpacks; fetch progress goes to the ``fetch_events`` given to
    :class:`Baker`."""

    def phase(self, name: str) -> None: ...

    def unpacked(self, image: BakeImage, result: UnpackResult) -> None: ...


@dataclass
class BakeOptions:
    budget: int | None = None
    reserve: int = 0
    jobs: int = 4
    default_platforms: Sequence[Platform] = ()
    replan: bool = False
    verify: bool = True
    cri_records: bool = False
    model: CostModel = DEFAULT_MODEL


class Baker:
    """Bakes ``spec`` into ``store`` (see the module docstring).

    ``store``: LocalStore or ContainerdStore (``content``, ``images``, ``leases``,
    ``snapshots``, ``applier``); ``registry``: a RegistryClient; ``root``: where the saved
    plans live; ``unpack_scope``: a context manager factory wrapping the unpack phase (a
    lease on containerd); ``make_fetch_progress``: wraps the fetch phase (the CLI's live
    view); ``unpack_events``: the unpack phase's per-layer progress."""

    def __init__(
        self,
        spec: CacheSpec,
        store: Any,
        registry: Any,
        *,
        root: Path,
        store_kind: str,
        namespace: str,
        options: BakeOptions,
        events: BakeEvents | None = None,
        fetch_events: FetchEvents | None = None,
        unpack_scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
        fetch_scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
        unpack_events: UnpackEvents | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.registry = registry
        self.root = Path(root)
        self.store_kind = store_kind
        self.namespace = namespace
        self.options = options
        self.events = events or BakeEvents()
        #: Blobs this bake downloaded (verified by the store on commit: verify skips them).
        self.fetch_events = CommittedBlobs(fetch_events or FetchEvents())
        self.unpack_scope = unpack_scope
        self.fetch_scope = fetch_scope
        self.unpack_events = unpack_events  # per-layer progress of the unpack phase
        self.unresolved: list[tuple[ImageEntry, CargoholdError]] = []
        self.report: BakeReport | None = None
        #: The ratio unmeasured layers are estimated at (measured when the plan is made).
        self.ratio = UnpackRatio()

    # ------------------------------------------------------------ phases

    def run(self) -> BakeReport:
        """Bake (see the module docstring). The report so far is ``self.report`` also when
        this raises (BudgetError, OutOfSpaceError, an interrupt)."""
        start = time.monotonic()
        phases: dict[str, float] = {}
        with self._timed(phases, "plan"):
            catalog = self._catalog()
            plan_doc, reused = self._plan(catalog)
        report = self.report = BakeReport(
            spec=spec_path(self.spec),
            spec_digest=spec_digest(self.spec),
            store=self.store_kind,
            namespace=self.namespace,
            budget=self.options.budget,
            reserve=self.options.reserve,
            plan=plan_doc,
            plan_reused=reused,
            images=self._images(catalog, plan_doc),
            phases=phases,
        )
        try:
            self._bake(report, catalog, phases)
        finally:
            report.seconds = time.monotonic() - start  # also for the report of a stopped bake
        return report

    def _bake(self, report: BakeReport, catalog: list[CatalogImage],
              phases: dict[str, float]) -> None:
        if not report.plan["feasible"]:
            self._save_state(report, catalog, status="failed")
            raise BudgetError(str(report.plan["reason"]), hint=budget_hint(report.plan))
        self._check_free_space(report)
        self._save_state(report, catalog, status="baking")

        with self._timed(phases, "fetch"):
            self._fetch(report)
        if not report.plan.get("refined"):
            with self._timed(phases, "replan"):
                try:
                    self._refine(report, catalog)
                except BudgetError:
                    self._save_state(report, catalog, status="failed")
                    raise
            self._save_state(report, catalog, status="baking")
        with self._timed(phases, "unpack"):
            self._unpack(report)
        if self.options.verify:
            with self._timed(phases, "verify"):
                self._verify(report)
        with self._timed(phases, "measure"):
            self._measure(report)
        for img in report.images:
            if img.status == "pending":
                img.status = "ok"
        # A bake with failures plans afresh next time (with what it did keep as present).
        self._save_state(report, catalog, status="failed" if report.failed else "complete")

    @contextmanager
    def _timed(self, phases: dict[str, float], name: str) -> Iterator[None]:
        self.events.phase(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - t0

    def _snapshots(self) -> Any | None:
        return getattr(self.store, "snapshots", None)

    def _resolve(self, spec: CacheSpec, failures: list[tuple[ImageEntry, CargoholdError]],
                 events: ResolveEvents | None = None) -> list[CatalogImage]:
        # Unmeasured layers are estimated at the ratio measured on this store.
        return resolve_spec(
            spec,
            self.registry,
            store=self.store,
            default_platforms=self.options.default_platforms,
            ratio=self.ratio.value,
            snapshots=self._snapshots(),
            failures=failures,
            jobs=self.options.jobs,
            events=events,
        )

    def _catalog(self) -> list[CatalogImage]:
        """The resolved entries; those that cannot be resolved go to ``self.unresolved``
        (reported as failed, the others baked)."""
        self.ratio = unpack_ratio(self.store, self._snapshots())
        return self._resolve(self.spec, self.unresolved, self.events)

    def _state_file(self) -> Path:
        return state_path(self.root, self.spec, self.store_kind, self.namespace)

    def _options_key(self) -> dict[str, Any]:
        """What, besides the spec and the digests, a saved plan was made for."""
        sn = self._snapshots()
        return {
            "budget": self.options.budget,
            "snapshotter": str(getattr(sn, "name", "")),
            "cri_records": self.options.cri_records,
        }

    def _plan(self, catalog: list[CatalogImage]) -> tuple[dict[str, Any], bool]:
        """The saved plan of this spec if it still applies, else a new one."""
        if not self.options.replan:
            saved = self._load_state()
            if saved is not None and self._applies(saved, catalog):
                return dict(saved["plan"]), True
        _, doc = plan_catalog(catalog, self.options.budget, model=self.options.model)
        doc["refined"] = False
        doc["unpack_ratio"] = self.ratio.to_json()
        return doc, False

    def _applies(self, saved: dict[str, Any], catalog: list[CatalogImage]) -> bool:
        """A saved plan applies while its bake finished or was interrupted (not failed),
        every image resolves to the digest and platforms it was planned with, and the
        budget, snapshotter and record policy are the same. Images that cannot be resolved
        now (a registry blip) are failed by this bake; the others keep their decisions."""
        if saved.get("status") not in ("baking", "complete"):
            return False
        if saved.get("options") != self._options_key():
            return False
        digests = saved.get("digests") or {}
        platforms = saved.get("platforms") or {}
        for c in catalog:
            name = c.image.name
            if digests.get(name) != str(c.target.digest):
                return False
            if platforms.get(name) != list(c.platforms):
                return False
        planned = {str(r["name"]) for r in saved["plan"]["images"]}
        return planned == {c.image.name for c in catalog} | {
            str(e.ref) for e, _ in self.unresolved
        }

    def _load_state(self) -> dict[str, Any] | None:
        path = self._state_file()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged state file only costs a fresh plan
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            return None
        return doc

    def _save_state(self, report: BakeReport, catalog: list[CatalogImage], status: str) -> None:
        if self.unresolved and not report.plan_reused:
            return  # never replace a plan with one made while some images did not resolve
        write_json_atomic(self._state_file(), {
            "version": STATE_VERSION,
            "status": status,
            "updated_at": _now(),
            "spec": report.spec,
            "spec_digest": report.spec_digest,
            "store": self.store_kind,
            "namespace": self.namespace,
            "options": self._options_key(),
            "digests": {c.image.name: str(c.target.digest) for c in catalog},
            "platforms": {c.image.name: list(c.platforms) for c in catalog},
            "plan": report.plan,
        })

    def _images(self, catalog: list[CatalogImage], plan_doc: dict[str, Any]) -> list[BakeImage]:
        rows = {str(r["name"]): r for r in plan_doc["images"]}
        out: list[BakeImage] = []
        for c in catalog:
            r = rows[c.image.name]
            decision: Decision = r["decision"]
            out.append(BakeImage(
                name=c.image.name,
                decision=decision,
                critical=c.image.critical,
                priority=c.image.priority,
                platforms=list(c.platforms),
                digest=str(c.target.digest),
                planned_compressed_bytes=int(r["compressed_bytes"]),
                planned_unpacked_bytes=int(r["unpacked_bytes"]),
                penalty_seconds=float(r["penalty_seconds"]),
                status="skipped" if decision == "skip" else "pending",
            ))
        for entry, error in self.unresolved:
            img = BakeImage(
                name=str(entry.ref), decision="skip", critical=entry.critical,
                priority=entry.priority, platforms=[], digest="",
                planned_compressed_bytes=0, planned_unpacked_bytes=0, penalty_seconds=0.0,
                resolved=False,
            )
            _fail(img, error)
            out.append(img)
        return out

    def _check_free_space(self, report: BakeReport) -> None:
        """Embedded store: the plan's bytes not on disk yet must fit the free space less the
        reserve (containerd's disk is not ours to see)."""
        if self.store_kind != "embedded":
            return
        need = int(report.plan.get("total_bytes") or 0)
        new = max(0, need - int(report.plan.get("present_bytes") or 0))
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if new + self.options.reserve > free:
            raise OutOfSpaceError(
                f"the plan needs {format_size(new)} more on {self.root} but only "
                f"{format_size(free)} is free and {format_size(self.options.reserve)} "
                "must stay free (reserve)",
                hint="lower the budget, free disk space, or lower the reserve",
            )

    def _entries(self) -> dict[str, ImageEntry]:
        return {str(e.ref): e for e in self.spec.images}

    def _fetch(self, report: BakeReport) -> None:
        entries = self._entries()
        groups: dict[tuple[tuple[Platform, ...], bool], list[BakeImage]] = {}
        for img in report.images:
            if img.decision == "skip" or img.status != "pending":
                continue
            plats = self.spec.platforms_for(entries[img.name]) or tuple(
                self.options.default_platforms
            )
            pin = img.critical and self.options.cri_records
            groups.setdefault((tuple(plats), pin), []).append(img)
        by_name = {i.name: i for i in report.images}
        with self.fetch_scope():
            for (plats, pin), imgs in groups.items():
                fetcher = Fetcher(
                    self.store,
                    self.registry,
                    jobs=self.options.jobs,
                    events=self.fetch_events,
                    records=RecordPolicy(cri=self.options.cri_records, pin=pin),
                )
                try:
                    results = fetcher.fetch_all(
                        [entries[i.name].ref for i in imgs], platforms=list(plats)
                    )
                finally:
                    fetcher.close()
                for res in results:
                    if isinstance(res, FetchFailure):
                        _fail(by_name[str(res.ref)], res.error)
                        continue
                    img = by_name[res.name]
                    img.fetch = res
                    label_record(self.store.images, res.name, img.priority, img.critical)
                    if str(res.target.digest) != img.digest:
                        _fail(img, ConflictError(
                            f"{img.name} moved from {img.digest} (planned) to "
                            f"{res.target.digest} during the bake",
                            hint="bake again: it plans the new digest",
                        ))

    def _refine(self, report: BakeReport, catalog: list[CatalogImage]) -> None:
        """Plan again with every fetched layer's tar size read off its blob (exact where the
        first plan estimated) and everything now in the store as a fixed cost: each fetched
        image at least fetched, pull decisions moved to where they pay most; images not
        fetched keep their decision. An infeasible result (the critical images are bigger
        than estimated) raises BudgetError; what was fetched is kept."""
        fetched = [i for i in report.images if i.fetch is not None and i.status == "pending"]
        doc = report.plan
        if not fetched:
            doc["refined"] = True
            return
        names = {i.name for i in fetched}
        entries = self._entries()
        sub = replace(self.spec, images=tuple(entries[n] for n in names))
        failures: list[tuple[ImageEntry, CargoholdError]] = []
        now = self._resolve(sub, failures)
        by_name = {i.name: i for i in report.images}
        for entry, error in failures:
            _fail(by_name[str(entry.ref)], error)
        others = [c for c in catalog if c.image.name not in names]
        result, sub_doc = plan_catalog(now, self.options.budget, model=self.options.model,
                                       allow_skip=False, also_present=others)
        if not result.feasible:
            raise BudgetError(
                f"{result.reason} (with the layer sizes read off the fetched blobs)",
                hint="the fetched content is kept; raise the budget or drop images from the "
                     "spec (the next bake plans afresh)",
            )
        rows = {str(r["name"]): r for r in doc["images"]}
        skipped_penalty = sum(
            float(r["priority"]) * float(r["penalty_seconds"])
            for name, r in rows.items() if name not in names
        )
        for new in sub_doc["images"]:
            rows[str(new["name"])].update(new)
            img = by_name[str(new["name"])]
            img.decision = new["decision"]
            img.planned_compressed_bytes = int(new["compressed_bytes"])
            img.planned_unpacked_bytes = int(new["unpacked_bytes"])
            img.penalty_seconds = float(new["penalty_seconds"])
        doc.update(
            content_bytes=sub_doc["content_bytes"],
            snapshot_bytes=sub_doc["snapshot_bytes"],
            total_bytes=sub_doc["total_bytes"],
            present_bytes=sub_doc["present_bytes"],
            total_penalty=float(sub_doc["total_penalty"]) + skipped_penalty,
            algorithm=f"{sub_doc['algorithm']}; re-planned after the fetch with layer sizes "
                      "read off the blobs",
            refined=True,
        )

    def _unpack(self, report: BakeReport) -> None:
        todo = [i for i in report.images if i.decision == "pull" and i.status == "pending"]
        if not todo:
            return
        entries = self._entries()
        opts = self.options
        with (
            self.unpack_scope(),
            Unpacker(self.store.content, self.store.snapshots, self.store.applier,
                     jobs=opts.jobs, reserve_bytes=opts.reserve,
                     events=self.unpack_events) as unpacker,
        ):

            def one(img: BakeImage) -> None:
                assert img.fetch is not None
                given = self.spec.platforms_for(entries[img.name])
                plats: list[Platform | None] = list(given) or [None]
                if not given and len(opts.default_platforms) > 0:
                    plats = list(opts.default_platforms)
                try:
                    for p in plats:
                        res = unpacker.unpack(img.fetch.target, p)
                        img.unpack.append(res)
                        self.events.unpacked(img, res)
                except CargoholdError as e:
                    _fail(img, e)
                except Exception as e:  # one image's bug must not take the others down
                    _fail(img, CargoholdError(f"unpack of {img.name} failed: {e!r}"))

            pool = ThreadPoolExecutor(max_workers=max(1, min(len(todo), opts.jobs)),
                                      thread_name_prefix="bake-unpack")
            try:
                futs = []
                for i in todo:
                    with held():  # submit waits for the thread it starts: not interruptible
                        futs.append(pool.submit(contextvars.copy_context().run, one, i))
                for fut in futs:
                    wait_until(fut.done)  # Ctrl-C / SIGTERM: see cargohold.interrupts
                    fut.result()
            except BaseException:
                unpacker.cancel.set()  # running unpacks stop and clean up
                raise
            finally:
                shutdown(pool, unpacker.cancel.set)

    def _verify(self, report: BakeReport) -> None:
        names = [i.name for i in report.images if i.status == "pending"]
        if not names:
            return
        problems = verify(self.store, names, snapshots=self._snapshots(),
                          trusted=self.fetch_events.digests, jobs=self.options.jobs)
        report.problems = problems
        by_name = {i.name: i for i in report.images}
        for p in problems:
            img = by_name.get(p.image)
            if img is not None and img.status == "pending":
                _fail(img, DigestMismatchError(
                    f"verify: {p.kind}: {p.message}",
                    hint="run `cargohold verify --repair` to fetch damaged blobs again",
                ))

    def _measure(self, report: BakeReport) -> None:
        """The disk the spec's images use: every one with a record, whatever this bake
        decided for it (an image fetched or pulled by an earlier bake still takes disk)."""
        recorded = {i.name for i in self.store.images.list()}
        names = [i.name for i in report.images if i.name in recorded]
        sn = self._snapshots()
        usage = disk_usage(self.store, names or None, snapshots=sn)
        rows = {u.name: u for u in usage.images}
        for img in report.images:
            u = rows.get(img.name)
            if u is not None:
                img.content_bytes = u.content_bytes
                img.snapshot_bytes = u.snapshot_bytes
        if names:
            report.content_bytes = usage.selected_content_bytes
            report.snapshot_bytes = usage.selected_snapshot_bytes
        report.snapshots_measured = usage.snapshots_available


def _fail(img: BakeImage, error: CargoholdError) -> None:
    img.status = "failed"
    img.exception = error
    img.error = {"error": error.kind, "message": error.message, "exit_code": error.exit_code}
