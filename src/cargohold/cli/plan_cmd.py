"""`cargohold plan`, `cargohold du`, `cargohold verify` (see docs/plan-verify-du.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from cargohold.bake.spec import load_spec
from cargohold.cli.fetching import apply_registry_options, registry_options
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.sources import from_options
from cargohold.errors import (
    BudgetError,
    CargoholdError,
    DigestMismatchError,
    NotFoundError,
)
from cargohold.measure.calibration import cost_model_for
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.pull.sources import content_source, registry_client
from cargohold.settings import apply_spec_settings
from cargohold.store.open import embedded_store_exists, open_store
from cargohold.units import format_size, parse_size

_json_option = click.option("--json", "json_local", is_flag=True, default=False,
                            help="Machine-readable output on stdout (same as the global --json).")


def _json(app: App, local: bool) -> bool:
    if local:
        app.out.json_mode = True
        app.out.live = False
    return app.out.json_mode


@contextmanager
def _snapshotter(root: Path) -> Iterator[Any | None]:
    """The root's embedded snapshotter if it has one (never creates it)."""
    if not (root / "snapshots" / "metadata.db").exists():
        yield None
        return
    from cargohold.store.embedded.snapshots import EmbeddedSnapshotter

    sn = EmbeddedSnapshotter(root)
    try:
        yield sn
    finally:
        sn.close()


@contextmanager
def _existing_store(app: App) -> Iterator[Any | None]:
    """containerd, or the embedded store if the root holds one (plan works without one)."""
    s = app.settings
    if s.store == "containerd":
        with open_store(s) as cstore:
            try:
                cstore.version()  # type: ignore[union-attr]
            except CargoholdError as e:  # plan works offline, without measured sizes
                app.out.warn(f"{e.message}: planning without the store's measurements")
                yield None
                return
            yield cstore
        return
    if s.store != "embedded":
        yield None
        return
    if not embedded_store_exists(s):
        app.out.info(f"no store at {s.root} yet: planning for an empty store")
        yield None
        return
    with open_store(s, must_exist=True) as store:
        yield store


@cli.command("plan")
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--budget", default=None, help="Disk budget (e.g. 20GB; SI or IEC units) [default: the spec's].")
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] for images the spec gives none (repeatable) "
                   "[default: settings, else this host's].")
@_json_option
@registry_options
@from_options
@pass_app
def plan_command(app: App, spec_file: Path, budget: str | None, platforms: tuple[str, ...],
                 json_local: bool, plain_http: bool | None, insecure_skip_verify: bool | None,
                 hosts_dir: str | None, authfile: str | None, from_paths: tuple[Path, ...],
                 allow_network: bool) -> None:
    """Plan which images of SPEC to pull, fetch or skip under the disk budget."""
    from cargohold.bake.catalog import budget_hint, plan_catalog, resolve_spec, unpack_ratio
    from cargohold.cli.resolve_progress import ResolveProgress

    json_mode = _json(app, json_local)
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    spec = load_spec(spec_file)
    limit = parse_size(budget) if budget is not None else spec.budget
    s = app.settings
    apply_spec_settings(s, spec)
    model, model_note = cost_model_for(Path(s.root))
    plats = [parse_platform(p) for p in (platforms or s.platforms)] or [host_platform()]
    with _existing_store(app) as store, _snapshotter(Path(s.root)) as local_sn:
        sn = store.snapshots if s.store == "containerd" and store is not None else local_sn
        ratio = unpack_ratio(store, sn) if sn is not None else unpack_ratio(None)
        client = content_source(s, from_paths, allow_network)
        try:
            catalog = resolve_spec(spec, client, store=store, default_platforms=plats,
                                   ratio=ratio.value, snapshots=sn, jobs=s.jobs,
                                   events=ResolveProgress(app.out, json_events=False))
        finally:
            client.close()
    result = plan_catalog(catalog, limit, model=model)
    if json_mode:
        doc = result.to_json()
        doc["model"]["source"] = model_note
        doc["unpack_ratio"] = ratio.value
        doc["unpack_ratio_measured"] = ratio.measured is not None
        doc["unpack_ratio_sample"] = ratio.to_json()
        doc["spec"] = str(spec_file.absolute())
        app.out.json(doc)
    else:
        rows = [
            (r.name, r.decision, format_size(r.plan.compressed_bytes),
             format_size(r.plan.unpacked_bytes), f"{r.plan.penalty_seconds:.1f} s",
             r.plan.reason)
            for r in result.images
        ]
        app.out.table(["IMAGE", "MODE", "COMPRESSED", "UNPACKED", "PENALTY", "REASON"], rows)
        line = (f"total: {format_size(result.content_bytes)} content + "
                f"{format_size(result.snapshot_bytes)} snapshots = "
                f"{format_size(result.total_bytes)}")
        if result.budget is not None:
            line += f" of {format_size(result.budget)} budget ({format_size(result.budget - result.total_bytes)} free)"
        else:
            line += " (no budget)"
        if result.present_bytes:
            line += f"; includes {format_size(result.present_bytes)} already in the store"
        app.out.data(line)
        app.out.data(f"weighted penalty: {result.total_penalty:.1f} s; {result.reason}; "
                     f"{result.algorithm}")
        app.out.info(f"unpacked sizes not measured are estimated at {ratio.describe()}")
        app.out.info(f"penalties: {model_note}")
    if not result.feasible:
        raise BudgetError(result.reason, hint=budget_hint(result))


@cli.command("du")
@click.argument("refs", nargs=-1)
@_json_option
@pass_app
def du_command(app: App, refs: tuple[str, ...], json_local: bool) -> None:
    """Disk use per image: compressed content and snapshots, exclusive and shared."""
    from cargohold.maintain.du import disk_usage

    json_mode = _json(app, json_local)
    with (open_store(app.settings, must_exist=True) as store,
          _snapshotter(Path(app.settings.root)) as sn):
        usage = disk_usage(store, list(refs) or None, snapshots=sn)
    if json_mode:
        app.out.json(usage.to_json())
        return
    rows = [
        (u.name, format_size(u.content_bytes), format_size(u.content_exclusive),
         format_size(u.content_shared), format_size(u.snapshot_bytes),
         format_size(u.snapshot_exclusive), format_size(u.snapshot_shared))
        for u in usage.images
    ]
    app.out.table(["IMAGE", "CONTENT", "EXCLUSIVE", "SHARED", "SNAPSHOTS", "EXCLUSIVE",
                   "SHARED"], rows)
    if refs:
        n = len(usage.images)
        app.out.data(
            f"total of the {n} image{'' if n == 1 else 's'} named: content "
            f"{format_size(usage.selected_content_bytes)}"
            + (f" + snapshots {format_size(usage.selected_snapshot_bytes)}"
               if usage.snapshots_available else "")
            + f" = {format_size(usage.selected_total_bytes)} (shared bytes once)")
        app.out.info(f"the whole store: content {format_size(usage.content_bytes)}"
                     + (f", snapshots {format_size(usage.snapshot_bytes)}"
                        if usage.snapshots_available else "")
                     + f", ingests {format_size(usage.ingest_bytes)}")
        return
    app.out.data(
        f"total: content {format_size(usage.content_bytes)} "
        f"({format_size(usage.shared_content_bytes)} shared, "
        f"{format_size(usage.unreferenced_bytes)} in {len(usage.unreferenced)} unreferenced blobs)"
        + (f", snapshots {format_size(usage.snapshot_bytes)}" if usage.snapshots_available
           else ", snapshots: none")
    )
    app.out.data(f"ingests (downloads in progress or interrupted): {format_size(usage.ingest_bytes)}"
                  f" in {usage.ingests}; on disk in all: {format_size(usage.total_bytes)}")
    for d, size in usage.unreferenced:
        app.out.debug(f"unreferenced {d} {format_size(size)}")


def _problems(n: int) -> str:
    return f"{n} problem" if n == 1 else f"{n} problems"


@cli.command("verify")
@click.argument("refs", nargs=-1)
@click.option("--repair", is_flag=True,
              help="Delete corrupt blobs and fetch the damaged images again.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Parallel downloads when repairing [default: 4].")
@_json_option
@registry_options
@pass_app
def verify_command(app: App, refs: tuple[str, ...], repair: bool, jobs: int | None,
                   json_local: bool, plain_http: bool | None, insecure_skip_verify: bool | None,
                   hosts_dir: str | None, authfile: str | None) -> None:
    """Re-hash every blob of the images (all, or REFs); exit 6 if any is damaged."""
    from cargohold.maintain.verify import REPAIRABLE_KINDS, count_problems, select_images, verify
    from cargohold.pull.fetch import Fetcher

    json_mode = _json(app, json_local)
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    s = app.settings
    with open_store(s, must_exist=True) as store, _snapshotter(Path(s.root)) as sn:
        checked = len(select_images(store.images, list(refs) or None))
        fetcher = Fetcher(store, registry_client(s), jobs=jobs or s.jobs) if repair else None
        try:
            problems = verify(store, list(refs) or None, repair_with=fetcher, snapshots=sn)
        finally:
            if fetcher is not None:
                fetcher.close()
    left = [p for p in problems if not p.repaired]
    for p in problems:
        prefix = "repaired" if p.repaired else p.kind
        app.out.info(f"{prefix}: {p.image}: {p.message}")
    if json_mode:
        app.out.json({"event": "verify", "images": checked, "ok": not left,
                      "problem_count": count_problems(left),
                      "problems": [p.to_json() for p in problems]})
    else:
        fixed = count_problems(p for p in problems if p.repaired)
        app.out.data(f"{checked} images checked: {_problems(count_problems(left))}"
                     + (f", {fixed} repaired" if fixed else ""))
    if left:
        damaged = sorted({p.image for p in left})
        if any(p.kind in REPAIRABLE_KINDS for p in left):
            raise DigestMismatchError(
                f"{_problems(count_problems(left))} in {', '.join(damaged)}",
                hint="run `cargohold verify --repair` (fetches damaged blobs again, restores "
                     "snapshot labels)",
            )
        raise NotFoundError(f"missing snapshots in {', '.join(damaged)}",
                            hint="pull the images again to unpack them")
