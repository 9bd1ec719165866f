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
   bake downloaded were hashed as they were written, before they were committed, and are
   only size-checked; pulled images' chains present).
5. **measure**: the disk the baked images use (content + snapshots, shared bytes once),
   checked against the budget (unpacked sizes were estimated while planning; a bake that
   ends over budget keeps everything and raises :class:`BudgetError`).

Failed images are reported and the others kept; the CLI turns the outcome into exit codes.
A bake never deletes anything: images dropped from a spec stay until ``images rm`` + ``gc``.
"""

from __future__ import annotations

import contextvars
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cargohold.atomicfile import write_json_atomic
from cargohold.bake.catalog import (
    CatalogImage,
    CatalogPlan,
    Downloads,
    ResolveEvents,
    UnpackRatio,
    budget_hint,
    plan_catalog,
    resolve_spec,
    unpack_ratio,
)
from cargohold.bake.plan import DEFAULT_MODEL, CostModel
from cargohold.bake.report import BakeImage, BakeReport, fail
from cargohold.bake.spec import CacheSpec, ImageEntry
from cargohold.bake.state import PlanKey, SavedBake, load_state, spec_digest, spec_path, state_path
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    DigestMismatchError,
    OutOfSpaceError,
)
from cargohold.interrupts import held, shutdown, wait_future
from cargohold.leasing import leased
from cargohold.maintain.du import disk_usage
from cargohold.maintain.verify import verify
from cargohold.node.warmorder import label_record
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.pull.fetch import (
    CommittedBlobs,
    Fetcher,
    FetchEvents,
    FetchFailure,
    RecordPolicy,
    Registry,
    ingest_ref,
)
from cargohold.store.interfaces import Snapshotter, Store
from cargohold.units import format_size
from cargohold.unpack.image import Unpacker, UnpackEvents, UnpackResult

__all__ = ["BakeImage", "BakeReport", "Baker", "state_path"]

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
        store: Store,
        registry: Registry,
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
        #: Manifests and configs the plan downloaded: the fetch stores them and goes on.
        self.downloads = Downloads()
        self.report: BakeReport | None = None
        #: The ratio unmeasured layers are estimated at (measured when the plan is made).
        self.ratio = UnpackRatio()
        #: What each resolved image was planned with (set by the plan phase).
        self.targets: dict[str, Descriptor] = {}

    # ------------------------------------------------------------ phases

    def run(self) -> BakeReport:
        """Bake (see the module docstring). The report so far is ``self.report`` also when
        this raises (BudgetError, OutOfSpaceError, an interrupt)."""
        start = time.monotonic()
        phases: dict[str, float] = {}
        with self._timed(phases, "plan"):
            catalog = self._catalog()
            self.targets = {c.image.name: c.target for c in catalog}
            plan, reused = self._plan(catalog)
        report = self.report = BakeReport(
            spec=spec_path(self.spec),
            spec_digest=spec_digest(self.spec),
            store=self.store_kind,
            namespace=self.namespace,
            budget=self.options.budget,
            reserve=self.options.reserve,
            plan=plan,
            plan_reused=reused,
            images=self._images(catalog, plan),
            phases=phases,
        )
        try:
            self._bake(report, catalog, phases)
        finally:
            report.seconds = time.monotonic() - start  # also for the report of a stopped bake
        return report

    def _bake(self, report: BakeReport, catalog: list[CatalogImage],
              phases: dict[str, float]) -> None:
        if not report.plan.feasible:
            self._save_state(report, catalog, status="failed")
            raise BudgetError(report.plan.reason, hint=budget_hint(report.plan))
        self._check_free_space(report)
        self._save_state(report, catalog, status="baking")

        with self._timed(phases, "fetch"):
            self._fetch(report, catalog)
        if not report.plan.refined:
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

    def _snapshots(self) -> Snapshotter:
        return self.store.snapshots

    def _resolve(self, spec: CacheSpec, failures: list[tuple[ImageEntry, CargoholdError]],
                 events: ResolveEvents | None = None,
                 roots: Mapping[str, Descriptor] | None = None) -> list[CatalogImage]:
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
            downloads=self.downloads,
            roots=roots,
        )

    def _catalog(self) -> list[CatalogImage]:
        """The resolved entries; those that cannot be resolved go to ``self.unresolved``
        (reported as failed, the others baked)."""
        self.ratio = unpack_ratio(self.store, self._snapshots())
        return self._resolve(self.spec, self.unresolved, self.events)

    def _state_file(self) -> Path:
        return state_path(self.root, self.spec, self.store_kind, self.namespace)

    def _options_key(self) -> PlanKey:
        """What, besides the spec and the digests, a saved plan was made for."""
        sn = self._snapshots()
        return PlanKey(self.options.budget, sn.name,
                       self.options.cri_records)

    def _plan(self, catalog: list[CatalogImage]) -> tuple[CatalogPlan, bool]:
        """The saved plan of this spec if it still applies, else a new one."""
        if not self.options.replan:
            saved = load_state(self._state_file())
            if saved is not None and self._applies(saved, catalog):
                return saved.plan, True
        fresh = plan_catalog(catalog, self.options.budget, model=self.options.model)
        return replace(fresh, refined=False, unpack_ratio=self.ratio), False

    def _applies(self, saved: SavedBake, catalog: list[CatalogImage]) -> bool:
        """A saved plan applies while its bake finished or was interrupted (not failed),
        every image resolves to the digest and platforms it was planned with, and the
        budget, snapshotter and record policy are the same. Images that cannot be resolved
        now (a registry blip) are failed by this bake; the others keep their decisions."""
        if saved.status not in ("baking", "complete"):
            return False
        if saved.options != self._options_key():
            return False
        for c in catalog:
            name = c.image.name
            if saved.digests.get(name) != str(c.target.digest):
                return False
            if saved.platforms.get(name) != tuple(c.platforms):
                return False
        planned = {r.name for r in saved.plan.images}
        return planned == {c.image.name for c in catalog} | {
            str(e.ref) for e, _ in self.unresolved
        }

    def _save_state(self, report: BakeReport, catalog: list[CatalogImage], status: str) -> None:
        if self.unresolved and not report.plan_reused:
            return  # never replace a plan with one made while some images did not resolve
        write_json_atomic(self._state_file(), SavedBake(
            status=status,
            spec=report.spec,
            spec_digest=report.spec_digest,
            store=self.store_kind,
            namespace=self.namespace,
            options=self._options_key(),
            digests={c.image.name: str(c.target.digest) for c in catalog},
            platforms={c.image.name: tuple(c.platforms) for c in catalog},
            plan=report.plan,
        ).to_json())

    def _images(self, catalog: list[CatalogImage], plan: CatalogPlan) -> list[BakeImage]:
        out: list[BakeImage] = []
        for c in catalog:
            r = plan.row(c.image.name).plan
            out.append(BakeImage(
                name=c.image.name,
                decision=r.decision,
                critical=c.image.critical,
                priority=c.image.priority,
                platforms=list(c.platforms),
                digest=str(c.target.digest),
                planned_compressed_bytes=r.compressed_bytes,
                planned_unpacked_bytes=r.unpacked_bytes,
                penalty_seconds=r.penalty_seconds,
                status="skipped" if r.decision == "skip" else "pending",
            ))
        for entry, error in self.unresolved:
            img = BakeImage(
                name=str(entry.ref), decision="skip", critical=entry.critical,
                priority=entry.priority, platforms=[], digest="",
                planned_compressed_bytes=0, planned_unpacked_bytes=0, penalty_seconds=0.0,
                resolved=False,
            )
            fail(img, error)
            out.append(img)
        return out

    def _check_free_space(self, report: BakeReport) -> None:
        """Embedded store: the plan's bytes not on disk yet must fit the free space less the
        reserve (containerd's disk is not ours to see)."""
        if self.store_kind != "embedded":
            return
        new = max(0, report.plan.total_bytes - report.plan.present_bytes)
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

    def _keep(self, img: BakeImage, blobs: Sequence[tuple[str, int]]) -> None:
        """Store the manifests and configs of ``img`` the plan downloaded (the fetch then
        finds them and goes on from them: nothing is downloaded twice)."""
        content = self.store.content
        for digest, _ in blobs:
            got = self.downloads.get(digest)
            if got is None:
                continue
            try:
                w = content.writer(ingest_ref(got.desc), total=got.desc.size,
                                   expected=got.desc.digest)
            except CargoholdError:
                continue  # stored already, or another writer's (the fetch waits for it)
            try:
                with w:
                    w.truncate(0)
                    w.write(got.data)
                    w.commit(got.desc.size, got.desc.digest, got.labels)
            except CargoholdError:
                continue  # the fetch downloads it (and reports what fails)
            self.fetch_events.blob_started(got.ref, got.desc, 0)
            self.fetch_events.blob_done(got.desc, "done", got.desc.size)
            img.plan_transferred += got.desc.size

    def _fetch(self, report: BakeReport, catalog: list[CatalogImage]) -> None:
        blobs = {c.image.name: c.image.blobs for c in catalog}
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
        with self.fetch_scope(), leased(self.store, "bake"):
            for imgs in groups.values():
                for img in imgs:
                    self._keep(img, blobs[img.name])
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
                        [entries[i.name].ref for i in imgs], platforms=list(plats),
                        roots=[self._root(i) for i in imgs],
                    )
                finally:
                    fetcher.close()
                for res in results:
                    if isinstance(res, FetchFailure):
                        fail(by_name[str(res.ref)], res.error)
                        continue
                    img = by_name[res.name]
                    img.fetch = res
                    label_record(self.store.images, res.name, img.priority, img.critical)

    def _root(self, img: BakeImage) -> Descriptor:
        """The descriptor ``img`` was planned with (the fetch does not resolve it again)."""
        return self.targets[img.name]

    def _refine(self, report: BakeReport, catalog: list[CatalogImage]) -> None:
        """Plan again with every fetched layer's tar size read off its blob (exact where the
        first plan estimated) and everything now in the store as a fixed cost: each fetched
        image at least fetched, pull decisions moved to where they pay most; images not
        fetched keep their decision. An infeasible result (the critical images are bigger
        than estimated) raises BudgetError; what was fetched is kept."""
        fetched = [i for i in report.images if i.fetch is not None and i.status == "pending"]
        if not fetched:
            report.plan = replace(report.plan, refined=True)
            return
        names = {i.name for i in fetched}
        entries = self._entries()
        sub = replace(self.spec, images=tuple(entries[n] for n in names))
        failures: list[tuple[ImageEntry, CargoholdError]] = []
        # Resolved and fetched already: read off the store, the registry is not asked again.
        now = self._resolve(sub, failures,
                            roots={i.name: i.fetch.target for i in fetched if i.fetch})
        by_name = {i.name: i for i in report.images}
        for entry, error in failures:
            fail(by_name[str(entry.ref)], error)
        others = [c for c in catalog if c.image.name not in names]
        new = plan_catalog(now, self.options.budget, model=self.options.model,
                           allow_skip=False, also_present=others)
        if not new.feasible:
            raise BudgetError(
                f"{new.reason} (with the layer sizes read off the fetched blobs)",
                hint="the fetched content is kept; raise the budget or drop images from the "
                     "spec (the next bake plans afresh)",
            )
        old = report.plan
        skipped_penalty = sum(r.plan.weighted_penalty for r in old.images if r.name not in names)
        rows = {r.name: r for r in new.images}
        for r in new.images:
            img = by_name[r.name]
            img.decision = r.decision
            img.planned_compressed_bytes = r.plan.compressed_bytes
            img.planned_unpacked_bytes = r.plan.unpacked_bytes
            img.penalty_seconds = r.plan.penalty_seconds
        report.plan = replace(
            old,
            images=tuple(rows.get(r.name, r) for r in old.images),
            content_bytes=new.content_bytes,
            snapshot_bytes=new.snapshot_bytes,
            present_bytes=new.present_bytes,
            total_penalty=new.total_penalty + skipped_penalty,
            algorithm=f"{new.algorithm}; re-planned after the fetch with layer sizes "
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
                    fail(img, e)
                except Exception as e:  # one image's bug must not take the others down
                    fail(img, CargoholdError(f"unpack of {img.name} failed: {e!r}"))

            pool = ThreadPoolExecutor(max_workers=max(1, min(len(todo), opts.jobs)),
                                      thread_name_prefix="bake-unpack")
            try:
                futs = []
                for i in todo:
                    with held():  # submit waits for the thread it starts: not interruptible
                        futs.append(pool.submit(contextvars.copy_context().run, one, i))
                for fut in futs:
                    wait_future(fut)  # Ctrl-C / SIGTERM: see cargohold.interrupts
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
                fail(img, DigestMismatchError(
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


