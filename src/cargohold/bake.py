"""Bake: carry out a cache spec's plan into a store (the node-image build step).

:class:`Baker` runs the phases in order; every phase is idempotent, so a rerun after a
crash, a Ctrl-C or a failed image picks up where the last run stopped:

1. **plan**: resolve every entry (manifests and configs only) and decide pull / fetch /
   skip under the budget (:mod:`cargohold.plan`). The plan is saved under the root
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
4. **verify** the baked images (every blob re-hashed, pulled images' chains present).
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
from cargohold.catalog import CatalogImage, measured_ratio, resolve_spec
from cargohold.du import disk_usage
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    DigestMismatchError,
    InvalidInputError,
    OutOfSpaceError,
)
from cargohold.fetch import Fetcher, FetchEvents, FetchFailure, FetchResult, RecordPolicy
from cargohold.oci.descriptor import Platform
from cargohold.plan import DEFAULT_MODEL, DEFAULT_UNPACK_RATIO, CostModel, Decision, plan
from cargohold.spec import CacheSpec, ImageEntry, format_size
from cargohold.unpack.image import Unpacker, UnpackResult
from cargohold.verify import Problem, verify

__all__ = ["BakeImage", "BakeReport", "Baker", "state_path"]

STATE_DIR = "bakes"
STATE_VERSION = 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def spec_digest(spec: CacheSpec) -> str:
    """sha256 of the spec file's bytes (what a reused plan is keyed by)."""
    return "sha256:" + hashlib.sha256(Path(spec.path).read_bytes()).hexdigest()


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
            "mode": self.decision,
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
        return sum(1 for i in self.images if i.decision == decision)

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
                "bytes_transferred": sum(i.bytes_transferred for i in self.images),
                "planned_total_bytes": self.plan.get("total_bytes"),
                "planned_penalty_seconds": self.plan.get("total_penalty"),
                "seconds": round(self.seconds, 3),
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
            },
            "problems": [p.to_json() for p in self.problems],
            "plan": self.plan,
        }


class BakeEvents:
    """Progress callbacks of a bake (the CLI subclasses it); fetch progress goes to the
    ``fetch_events`` given to :class:`Baker`."""

    def phase(self, name: str, detail: str = "") -> None: ...

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
    check_free_space: bool = True


class Baker:
    """Bakes ``spec`` into ``store`` (see the module docstring).

    ``store``: LocalStore or ContainerdStore (``content``, ``images``, ``leases``,
    ``snapshots``, ``applier``); ``registry``: a RegistryClient; ``root``: where the saved
    plans live; ``unpack_scope``: a context manager factory wrapping the unpack phase (a
    lease on containerd); ``make_fetch_progress``: wraps the fetch phase (the CLI's live
    view)."""

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
    ) -> None:
        self.spec = spec
        self.store = store
        self.registry = registry
        self.root = Path(root)
        self.store_kind = store_kind
        self.namespace = namespace
        self.options = options
        self.events = events or BakeEvents()
        self.fetch_events = fetch_events or FetchEvents()
        self.unpack_scope = unpack_scope
        self.fetch_scope = fetch_scope
        self.unresolved: list[tuple[ImageEntry, CargoholdError]] = []

    # ------------------------------------------------------------ phases

    def run(self) -> BakeReport:
        start = time.monotonic()
        phases: dict[str, float] = {}
        with self._timed(phases, "plan"):
            catalog = self._catalog()
            plan_doc, reused = self._plan(catalog)
        report = BakeReport(
            spec=self.spec.path,
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
        if not plan_doc["feasible"]:
            raise BudgetError(str(plan_doc["reason"]))
        self._check_free_space(report)
        self._save_state(report, catalog, status="baking")

        with self._timed(phases, "fetch"):
            self._fetch(report)
        if not report.plan.get("refined"):
            with self._timed(phases, "replan"):
                self._refine(report)
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
        report.seconds = time.monotonic() - start
        self._save_state(report, catalog, status="failed" if report.failed else "complete")
        return report

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

    def _catalog(self) -> list[CatalogImage]:
        """The resolved entries; those that cannot be resolved go to ``self.unresolved``
        (reported as failed, the others baked)."""
        sn = self._snapshots()
        ratio = measured_ratio(self.store, sn) or DEFAULT_UNPACK_RATIO
        return resolve_spec(
            self.spec,
            self.registry,
            store=self.store,
            default_platforms=self.options.default_platforms,
            ratio=ratio,
            snapshots=sn,
            failures=self.unresolved,
        )

    def _state_file(self) -> Path:
        return state_path(self.root, self.spec, self.store_kind, self.namespace)

    def _plan(self, catalog: list[CatalogImage]) -> tuple[dict[str, Any], bool]:
        digests = {c.image.name: str(c.target.digest) for c in catalog}
        if not self.options.replan:
            saved = self._load_state()
            if (
                saved is not None
                and saved.get("digests") == digests
                and saved.get("budget") == self.options.budget
            ):
                return dict(saved["plan"]), True
        result = plan([c.image for c in catalog], self.options.budget, model=self.options.model)
        doc = result.to_json()
        for img, c in zip(doc["images"], catalog, strict=True):
            img["platforms"] = list(c.platforms)
            img["digest"] = str(c.target.digest)
            img["measured_chains"] = c.measured_chains
            img["blob_sized_chains"] = c.blob_sized_chains
        doc["refined"] = False
        doc["model"] = {
            "unpack_throughput": self.options.model.unpack_throughput,
            "per_image_overhead": self.options.model.per_image_overhead,
        }
        return doc, False

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
        write_json_atomic(self._state_file(), {
            "version": STATE_VERSION,
            "status": status,
            "updated_at": _now(),
            "spec": self.spec.path,
            "spec_digest": report.spec_digest,
            "store": self.store_kind,
            "namespace": self.namespace,
            "budget": self.options.budget,
            "digests": {c.image.name: str(c.target.digest) for c in catalog},
            "plan": report.plan,
        })

    def _images(self, catalog: list[CatalogImage], plan_doc: dict[str, Any]) -> list[BakeImage]:
        rows = {str(r["name"]): r for r in plan_doc["images"]}
        out: list[BakeImage] = []
        for c in catalog:
            r = rows.get(c.image.name)
            if r is None:  # pragma: no cover - a reused plan always covers the digests
                raise InvalidInputError(f"saved plan has no entry for {c.image.name}")
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
            )
            _fail(img, error)
            out.append(img)
        return out

    def _check_free_space(self, report: BakeReport) -> None:
        """Embedded store: the plan's bytes not yet on disk must fit the free space less
        the reserve (containerd's disk is not ours to see)."""
        if not self.options.check_free_space or self.store_kind != "embedded":
            return
        existing = {i.name for i in self.store.images.list()}
        names = [i.name for i in report.images if i.status != "skipped" and i.name in existing]
        have = 0
        if names:
            usage = disk_usage(self.store, names, snapshots=self._snapshots())
            have = usage.selected_content_bytes + usage.selected_snapshot_bytes
        need = int(report.plan.get("total_bytes") or 0)
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        new = max(0, need - have)
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
            if img.decision == "skip":
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
                    if str(res.target.digest) != img.digest:
                        img.digest = str(res.target.digest)  # the tag moved since planning

    def _refine(self, report: BakeReport) -> None:
        """Plan again over the fetched images, now with every layer's tar size read off its
        blob (exact where the first plan estimated), each at least fetched: pull decisions
        move to where they pay most, skipped images stay skipped. An infeasible result (the
        critical images alone are bigger than estimated) raises BudgetError; what was
        fetched is kept."""
        fetched = [i for i in report.images if i.fetch is not None and i.status == "pending"]
        if not fetched:
            report.plan["refined"] = True
            return
        entries = self._entries()
        sub = replace(self.spec, images=tuple(entries[i.name] for i in fetched))
        failures: list[tuple[ImageEntry, CargoholdError]] = []
        catalog = resolve_spec(
            sub,
            self.registry,
            store=self.store,
            default_platforms=self.options.default_platforms,
            ratio=measured_ratio(self.store, self._snapshots()) or DEFAULT_UNPACK_RATIO,
            snapshots=self._snapshots(),
            failures=failures,
        )
        by_name = {i.name: i for i in report.images}
        for entry, error in failures:
            _fail(by_name[str(entry.ref)], error)
        result = plan([c.image for c in catalog], self.options.budget,
                      model=self.options.model, allow_skip=False)
        if not result.feasible:
            raise BudgetError(f"{result.reason} (layer sizes read off the fetched blobs)",
                              hint="the fetched content is kept; raise the budget or drop "
                                   "images, then bake again")
        doc = report.plan
        rows = {str(r["name"]): r for r in doc["images"]}
        skipped_penalty = sum(
            float(r["priority"]) * float(r["penalty_seconds"])
            for name, r in rows.items() if r["decision"] == "skip"
        )
        for ip, c in zip(result.images, catalog, strict=True):
            row = rows[ip.name]
            row.update(ip.to_json())
            row["measured_chains"] = c.measured_chains
            row["blob_sized_chains"] = c.blob_sized_chains
            img = by_name[ip.name]
            img.decision = ip.decision
            img.planned_compressed_bytes = ip.compressed_bytes
            img.planned_unpacked_bytes = ip.unpacked_bytes
            img.penalty_seconds = ip.penalty_seconds
        doc.update(
            content_bytes=result.content_bytes,
            snapshot_bytes=result.snapshot_bytes,
            total_bytes=result.total_bytes,
            total_penalty=result.total_penalty + skipped_penalty,
            algorithm=f"{result.algorithm}; re-planned after the fetch with layer sizes "
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
                     jobs=opts.jobs, reserve_bytes=opts.reserve) as unpacker,
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

            with ThreadPoolExecutor(max_workers=max(1, min(len(todo), opts.jobs)),
                                    thread_name_prefix="bake-unpack") as pool:
                futs = [pool.submit(contextvars.copy_context().run, one, i) for i in todo]
                for fut in futs:
                    try:
                        fut.result()
                    except KeyboardInterrupt:
                        unpacker.cancel.set()
                        raise

    def _verify(self, report: BakeReport) -> None:
        names = [i.name for i in report.images if i.status == "pending"]
        if not names:
            return
        problems = verify(self.store, names, snapshots=self._snapshots())
        report.problems = problems
        by_name = {i.name: i for i in report.images}
        for p in problems:
            img = by_name.get(p.image)
            if img is not None and img.status == "pending":
                _fail(img, DigestMismatchError(f"verify: {p.kind}: {p.message}"))

    def _measure(self, report: BakeReport) -> None:
        names = [i.name for i in report.images if i.status in ("pending", "ok")]
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
