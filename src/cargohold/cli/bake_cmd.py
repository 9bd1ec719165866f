"""`cargohold bake SPEC`: plan, fetch, unpack, record, verify and report (see cargohold.bake.baker)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cargohold import __version__
from cargohold.atomicfile import write_json_atomic
from cargohold.bake.baker import (
    BakeEvents,
    BakeImage,
    BakeOptions,
    Baker,
    BakeReport,
)
from cargohold.bake.spec import load_spec
from cargohold.cli.fetching import apply_registry_options, registry_options
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import Output
from cargohold.cli.progress import FetchProgress
from cargohold.cli.resolve_progress import ResolveProgress
from cargohold.cli.run_metrics import recorded_run, textfile_option
from cargohold.cli.sources import from_options
from cargohold.cli.unpacking import UnpackProgress, summary_line
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    Interrupted,
    PartialFailureError,
    batch_error,
)
from cargohold.measure.calibration import cost_model_for
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.pull.pipeline import unpack_lease
from cargohold.pull.sources import content_source
from cargohold.settings import apply_spec_settings
from cargohold.store.open import open_store, reserve_bytes
from cargohold.units import format_size, parse_size
from cargohold.unpack.image import UnpackResult

if TYPE_CHECKING:
    from cargohold.store.interfaces import Store


class _BakeProgress(ResolveProgress, BakeEvents):
    """Resolution lines (ResolveProgress), phases and unpacked images."""

    def phase(self, name: str) -> None:
        if self.out.json_mode:
            self.out.event("phase", phase=name)
        else:
            self.out.info(f"== {name}")

    def unpacked(self, image: BakeImage, result: UnpackResult) -> None:
        if self.out.json_mode:
            self.out.event("unpacked", name=image.name, **result.to_json())
        elif result.already_unpacked:
            self.out.debug(summary_line(image.name, result))
        else:
            self.out.info(summary_line(image.name, result))


@cli.command("bake")
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--budget", default=None, help="Disk budget (e.g. 20GB; SI or IEC units) [default: the spec's].")
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] for images the spec gives none (repeatable) "
                   "[default: the spec's, settings, else this host's].")
@click.option("--report", "report_file", type=click.Path(path_type=Path), default=None,
              help="Write the bake report (JSON) to this file.")
@click.option("--replan", is_flag=True,
              help="Plan afresh instead of reusing the last bake's plan of this spec.")
@click.option("--no-verify", is_flag=True, help="Skip re-hashing the baked images.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Parallel downloads and layer applies [default: the spec's, else 4].")
@click.option("--cri-records/--no-cri-records", "cri", default=None,
              help="Write CRI's records and pin critical images "
                   "[default: on with --store containerd, off otherwise].")
@click.option("--json", "json_local", is_flag=True, default=False,
              help="Machine-readable output on stdout (same as the global --json).")
@registry_options
@from_options
@textfile_option
@pass_app
def bake_command(app: App, spec_file: Path, budget: str | None, platforms: tuple[str, ...],
                 report_file: Path | None, replan: bool, no_verify: bool, jobs: int | None,
                 cri: bool | None, json_local: bool, plain_http: bool | None,
                 insecure_skip_verify: bool | None, hosts_dir: str | None,
                 authfile: str | None, from_paths: tuple[Path, ...],
                 allow_network: bool, metrics_dir: Path | None) -> None:
    """Build the image cache of SPEC within its disk budget: plan, fetch, unpack, verify."""
    with recorded_run(app, "bake", metrics_dir):
        _bake(app, spec_file, budget, platforms, report_file, replan, no_verify, jobs, cri,
              json_local, plain_http, insecure_skip_verify, hosts_dir, authfile, from_paths,
              allow_network)


def _bake(app: App, spec_file: Path, budget: str | None, platforms: tuple[str, ...],
          report_file: Path | None, replan: bool, no_verify: bool, jobs: int | None,
          cri: bool | None, json_local: bool, plain_http: bool | None,
          insecure_skip_verify: bool | None, hosts_dir: str | None, authfile: str | None,
          from_paths: tuple[Path, ...], allow_network: bool) -> None:
    out = app.out
    if json_local:
        out.json_mode = True
        out.live = False
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    spec = load_spec(spec_file)
    s = app.settings
    apply_spec_settings(s, spec)
    if jobs is not None:
        s.jobs = jobs
    limit = parse_size(budget) if budget is not None else spec.budget
    plats = [parse_platform(p) for p in (platforms or s.platforms)] or [host_platform()]
    model, model_note = cost_model_for(Path(s.root))
    containerd = s.store == "containerd"
    options = BakeOptions(
        budget=limit,
        reserve=reserve_bytes(s),
        jobs=s.jobs,
        default_platforms=plats,
        replan=replan,
        verify=not no_verify,
        cri_records=containerd if cri is None else cri,
        model=model,
    )
    out.info(f"baking {spec.path} into the {s.store} store"
             + (f" (namespace {s.namespace})" if containerd else f" at {s.root}")
             + f"; budget {format_size(limit) if limit is not None else 'none'}; {model_note}")
    if report_file is not None:
        report_file.unlink(missing_ok=True)  # never leave an earlier run's report behind
    progress = FetchProgress(out)
    baker: Baker | None = None
    error: BaseException | None = None
    try:
        with open_store(s) as store:
            client = content_source(s, from_paths, allow_network, store)
            try:
                baker = Baker(
                    spec, store, client,
                    root=Path(s.root),
                    store_kind=s.store,
                    namespace=s.namespace,
                    options=options,
                    events=_BakeProgress(out),
                    fetch_events=progress,
                    fetch_scope=lambda: progress,
                    unpack_scope=lambda: _unpack_scope(store, progress),
                    unpack_events=UnpackProgress(out, display=progress),
                )
                baker.run()
            finally:
                client.close()
    except BaseException as e:
        error = e
        raise
    finally:
        report = baker.report if baker is not None else None
        if report_file is not None:
            _write_report(report_file, report, error)
            if error is not None:
                out.info(f"report of the stopped bake written to {report_file}")
    assert report is not None and baker is not None
    _print(out, report)
    if not report.plan_reused:
        out.info(f"unpacked sizes not measured were estimated at {baker.ratio.describe()}")
    if report_file is not None:
        out.info(f"report written to {report_file}")
    _raise_outcome(report)


@contextmanager
def _unpack_scope(store: Store, progress: FetchProgress) -> Iterator[None]:
    """The unpack phase: under a lease (containerd), with the live display on a TTY."""
    with unpack_lease(store), progress:
        yield


def _write_report(path: Path, report: BakeReport | None, error: BaseException | None) -> None:
    """The report, with the error that stopped the bake (if any): a failed CI job keeps it."""
    doc: dict[str, Any] = report.to_json() if report is not None else {
        "tool": {"name": "cargohold", "version": __version__}, "images": []}
    if error is not None:
        if isinstance(error, CargoholdError):
            doc["error"] = {"error": error.kind, "message": error.message,
                            "exit_code": error.exit_code}
        elif isinstance(error, KeyboardInterrupt):
            doc["error"] = {"error": "interrupted", "message": "interrupted",
                            "exit_code": Interrupted.exit_code}
        else:
            doc["error"] = {"error": "internal", "message": repr(error), "exit_code": 1}
    write_json_atomic(path, doc)


def _print(out: Output, r: BakeReport) -> None:
    if out.json_mode:
        out.json({"event": "summary", **r.to_json()})
        return
    rows = []
    for i in r.images:
        # What the image takes on disk, whatever the plan decided for it.
        rows.append((
            i.name, i.decision if i.resolved else "-",
            i.digest[7:19] if i.digest.startswith("sha256:") else i.digest,
            format_size(i.content_bytes) if i.content_bytes or i.status == "ok" else "-",
            format_size(i.snapshot_bytes) if i.snapshot_bytes or (
                i.decision == "pull" and i.status == "ok") else "-",
            f"{i.fetch_seconds:.2f} s" if i.fetch else "-",
            f"{i.unpack_seconds:.2f} s" if i.unpack else "-",
            i.status if i.status != "failed" or not i.error else f"failed: {i.error['message']}",
        ))
    out.table(["IMAGE", "MODE", "DIGEST", "CONTENT", "SNAPSHOTS", "FETCH", "UNPACK", "STATUS"],
              rows)
    line = (f"{len(r.ok)} of {len(r.images)} images baked ({r.count('pull')} pulled, "
            f"{r.count('fetch')} fetched, {r.count('skip')} skipped"
            + (f", {len(r.failed)} failed" if r.failed else "") + "): "
            f"content {format_size(r.content_bytes)} + snapshots {format_size(r.snapshot_bytes)}"
            f" = {format_size(r.total_bytes)}")
    if r.budget is not None:
        line += f" of {format_size(r.budget)} budget"
        line += (f" (OVER by {format_size(r.over_budget)})" if r.over_budget
                 else f" ({format_size(r.budget - r.total_bytes)} free)")
    out.data(line)
    transferred = sum(i.bytes_transferred for i in r.images)
    out.data(f"transferred {format_size(transferred)} in {r.seconds:.1f} s; expected first-start"
             f" penalty {r.plan.total_penalty:.1f} s (priority-weighted); "
             + ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items()))
    if r.plan_reused:
        out.info("reused the plan of the last bake of this spec (--replan to plan again)")
    if r.nothing_done and not r.over_budget:
        out.data("nothing to do: every image of the spec was already baked (verified)")
    elif r.nothing_done:
        out.data("nothing fetched, recorded or unpacked: every image was baked already, but "
                 "the spec's images take more disk than the budget (see below)")


def _raise_outcome(r: BakeReport) -> None:
    if r.failed:
        verify_failed = any(i.error and i.error.get("message", "").startswith("verify:")
                            for i in r.failed)
        err = batch_error(
            [(i.name, i.exception or PartialFailureError(str((i.error or {}).get("message"))))
             for i in r.failed], len(r.images),
            hint=("run `cargohold verify --repair`, then bake again" if verify_failed else
                  "everything else is baked and kept; fix the cause and bake again"),
        )
        assert err is not None
        err = copy.copy(err)  # the report keeps the image's own error as it was
        if len(r.images) == 1:
            err.message = f"{r.failed[0].name}: {err.message}"
        if r.over_budget:
            err.message += (f"; the baked images are {format_size(r.over_budget)} over the "
                            "budget" + _causes(r))
        raise err
    if r.over_budget:
        outside = any(i.decision != "pull" and i.snapshot_bytes for i in r.images)
        raise BudgetError(
            f"the spec's images use {format_size(r.total_bytes)}, "
            f"{format_size(r.over_budget)} over the budget of {format_size(r.budget or 0)}"
            + _causes(r),
            hint=("raise the budget, or free what the images named hold (`containers rm` their "
                  "containers, `images rm`, `gc`) and bake again" if outside else
                  "raise the budget, or `images rm` some images and `gc`, then "
                  "`cargohold bake --replan` (it plans with the sizes measured now)"),
        )


#: Images an over-budget message names at most.
_NAMED_CAUSES = 3


def _causes(r: BakeReport) -> str:
    """`` because of big:1.0: 96.9 MB of snapshots the plan did not pull (...)``: the images
    whose bytes put the bake over its budget, the most first until they make up the excess
    (at most :data:`_NAMED_CAUSES`), then how many more took more than planned."""
    causes = r.over_budget_causes()
    named: list[str] = []
    covered = 0
    for name, size, why in causes:
        if covered >= r.over_budget or len(named) == _NAMED_CAUSES:
            break
        named.append(f"{name}: {why}")
        covered += size
    rest = causes[len(named):]
    if rest:
        named.append(f"{len(rest)} more took {format_size(sum(c[1] for c in rest))} more "
                     "than planned")
    return f" because of {'; '.join(named)}" if named else ""
