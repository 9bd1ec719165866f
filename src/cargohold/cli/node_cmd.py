"""`cargohold status`, `evict`, `doctor` and `metrics`: keeping a node's cache healthy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.run_metrics import RunCounters, recorded_run, textfile_option
from cargohold.errors import (
    CargoholdError,
    CheckFailedError,
    InvalidInputError,
    PartialFailureError,
    TargetNotReachedError,
)
from cargohold.store.open import LocalStore, open_store, open_store_and_snapshots
from cargohold.units import format_size

if TYPE_CHECKING:
    from cargohold.store.interfaces import Snapshotter, Store

# ---------------------------------------------------------------- status


@cli.command("status")
@click.argument("refs", nargs=-1)
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None,
              help="Show the images this spec names (absent ones too).")
@pass_app
def status_command(app: App, refs: tuple[str, ...], spec_file: Path | None) -> None:
    """Per image: tier (unpacked / partial / fetched / absent), critical, pinned, priority,
    bytes exclusive and shared, and the containers using it; totals."""
    from cargohold.node.inventory import select, take_inventory

    names = list(refs)
    if spec_file is not None:
        from cargohold.bake.spec import load_spec

        names += [str(e.ref) for e in load_spec(spec_file).images]
    with open_store_and_snapshots(app.settings) as (store, sn):
        inv = take_inventory(store, sn)
    rows = select(inv, names) if names else inv.images
    if app.out.json_mode:
        doc = inv.to_json()
        doc["images"] = [r.to_json() for r in rows]
        app.out.json(doc)
        return
    table = []
    for r in rows:
        flags = ",".join(f for f, on in (("critical", r.critical), ("pinned", r.pinned)) if on)
        table.append((
            r.name, r.tier, flags or "-", f"{r.priority:g}",
            format_size(r.content_bytes), format_size(r.content_exclusive),
            format_size(r.snapshot_bytes), format_size(r.snapshot_exclusive),
            ",".join(r.containers) or "-",
        ))
    app.out.table(["IMAGE", "TIER", "FLAGS", "PRIO", "CONTENT", "EXCL", "SNAPSHOTS", "EXCL",
                   "CONTAINERS"], table)
    tiers = inv.tiers()
    app.out.data(
        f"total: {len(inv.images)} images ({tiers['unpacked']} unpacked, {tiers['partial']} "
        f"partial, {tiers['fetched']} fetched); content {format_size(inv.content_bytes)}, "
        f"snapshots {format_size(inv.snapshot_bytes)}")
    for r in rows:
        for p in r.problems:
            app.out.warn(f"{r.name}: {p}")


# ---------------------------------------------------------------- evict


def _needed_bytes(keep_free: str | None, free: str | None, space: Any) -> int:
    from cargohold.node.disk import free_target, parse_keep_free, store_fs_not_found
    from cargohold.units import parse_size

    if (keep_free is None) == (free is None):
        raise InvalidInputError("give exactly one of --keep-free SIZE|PCT and --free SIZE")
    if free is not None:
        n = parse_size(free)
        if n <= 0:
            raise InvalidInputError(f"--free {free!r}: must be more than 0 bytes")
        return n
    assert keep_free is not None
    if space is None:
        raise store_fs_not_found(hint="use --free SIZE")
    return max(0, free_target(space, parse_keep_free(keep_free)) - int(space.free))


@cli.command("evict")
@click.option("--keep-free", default=None, metavar="SIZE|PCT",
              help="Free space to reach on the store's file system (e.g. 20% or 10GiB).")
@click.option("--free", "free", default=None, metavar="SIZE", help="Bytes to free.")
@click.option("--allow-delete", is_flag=True,
              help="When demotion is not enough, delete whole images (never critical, pinned "
                   "or in use).")
@click.option("--dry-run", is_flag=True, help="Only print what would go and what it frees.")
@textfile_option
@pass_app
def evict_command(app: App, keep_free: str | None, free: str | None, allow_delete: bool,
                  dry_run: bool, metrics_dir: Path | None) -> None:
    """Free disk by demoting unpacked images (their snapshots go, their record and
    compressed content stay), lowest value first; with --allow-delete, then whole images.
    Exit 13 when the target cannot be reached."""
    from cargohold.node.disk import parse_keep_free

    if keep_free is not None:  # usage errors before touching anything
        parse_keep_free(keep_free)
    with recorded_run(app, "evict", metrics_dir, record=not dry_run) as counters:
        _evict(app, keep_free, free, allow_delete, dry_run, counters)


def _evict(app: App, keep_free: str | None, free: str | None, allow_delete: bool,
           dry_run: bool, counters: RunCounters) -> None:
    """Plan, carry out, collect garbage, measure and report; the bytes demoted and deleted go
    into ``counters``. TargetNotReachedError / PartialFailureError at the end."""
    from cargohold.measure.calibration import cost_model
    from cargohold.node.disk import fs_space, store_path
    from cargohold.node.evict import carry_out
    from cargohold.node.evict_plan import plan_evict
    from cargohold.node.inventory import take_inventory

    s = app.settings
    with open_store_and_snapshots(app.settings) as (store, sn):
        where = store_path(store, Path(s.root))
        before = fs_space(where) if where is not None else None
        needed = _needed_bytes(keep_free, free, before)
        inv = take_inventory(store, sn)
        model, _ = cost_model(Path(s.root))
        plan = plan_evict(inv, needed, allow_delete=allow_delete, model=model)
        if before is not None:
            app.out.info(f"{before.path}: {format_size(before.free)} free of "
                         f"{format_size(before.total)}; to free: {format_size(needed)}")
        for img, why in plan.kept:
            app.out.debug(f"kept {img.name}: {why}")
        if dry_run:
            _report_dry_run(app, plan)
            _check_reached(plan, plan.planned_bytes, allow_delete)
            return
        outcomes = (carry_out(store, sn, plan, on_done=lambda r: _report_outcome(app, r))
                    if plan.actions else [])
    deletes = [o for o in outcomes if o.action.action == "delete"]
    content_freed = _collect(app, [o.action.image.content_exclusive for o in deletes
                                   if o.records_deleted])
    after = fs_space(where) if where is not None else None
    demoted = sum(o.removed_bytes for o in outcomes if o.action.action == "demote")
    deleted = sum(o.removed_bytes for o in deletes) + content_freed
    counters.demoted_bytes, counters.deleted_bytes = demoted, deleted
    if app.out.json_mode:
        app.out.json({"event": "summary", "command": "evict", "dry_run": False,
                      **plan.to_json(), "outcomes": [o.to_json() for o in outcomes],
                      "freed_bytes": demoted + deleted,
                      "free_before_bytes": before.free if before else None,
                      "free_after_bytes": after.free if after else None})
    else:
        line = f"freed {format_size(demoted + deleted)} ({len(outcomes)} images)"
        if before is not None and after is not None:
            line += (f"; free space {format_size(before.free)} -> {format_size(after.free)} "
                     f"(measured {format_size(after.free - before.free)})")
        app.out.data(line)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise PartialFailureError(
            f"{len(failed)} of {len(outcomes)} evictions failed: "
            + "; ".join(f"{o.action.image.name}: {o.error}" for o in failed),
            hint="those images are left partial; the next evict finishes them")
    _check_reached(plan, demoted + deleted, allow_delete)


def _report_dry_run(app: App, plan: Any) -> None:
    if app.out.json_mode:
        app.out.json({"event": "summary", "command": "evict", "dry_run": True,
                      **plan.to_json()})
        return
    for a in plan.actions:
        app.out.data(f"would {a.action} {a.image.name}  {format_size(a.bytes)}  "
                     f"({len(a.chains)} snapshots)")
    app.out.data(f"would free {format_size(plan.planned_bytes)} of "
                 f"{format_size(plan.needed)} asked")


def _report_outcome(app: App, res: Any) -> None:
    a = res.action
    if app.out.json_mode:
        app.out.event("evicted", **res.to_json())
    elif res.ok:
        extra = f", {len(res.records_deleted)} records" if res.records_deleted else ""
        app.out.data(f"{a.action}d {a.image.name}  {format_size(res.removed_bytes)}  "
                     f"({len(res.removed)} snapshots{extra})")
    else:
        app.out.warn(f"{a.action} {a.image.name} failed: {res.error}")


def _collect(app: App, deleted_content: list[int]) -> int:
    """Let the garbage collector take what deleted records leave (containerd: always, so the
    demoted snapshots' files are gone before measuring); the content bytes it freed: what the
    embedded gc removed, the deleted images' exclusive content on containerd (its collector
    runs synchronously), 0 when it could not run (the content stays until the next gc)."""
    s = app.settings
    if s.store == "containerd":
        with open_store(s) as store:
            store.collect_garbage()
        return sum(deleted_content)
    if not deleted_content:
        return 0
    from cargohold.store.embedded.containers import ContainerRoots
    from cargohold.store.embedded.gc import collect
    from cargohold.store.open import open_embedded

    try:
        with open_embedded(s, exclusive=True) as store:
            hook = None
            if store.has_snapshots:
                sn = store.snapshots
                hook = ContainerRoots(sn, store.containers, sn.name)
            res = collect(store, snapshot_hook=hook)
    except CargoholdError as e:
        app.out.warn(f"the deleted images' content stays until `cargohold gc`: {e.message}")
        return 0
    app.out.info(f"gc removed {len(res.removed)} items, {format_size(res.bytes_freed)}")
    return int(res.bytes_freed)


def _check_reached(plan: Any, freed: int, allow_delete: bool) -> None:
    if freed >= plan.needed:
        return
    why = "; ".join(f"{i.name}: {r}" for i, r in plan.kept[:5])
    raise TargetNotReachedError(
        f"could not reach the target: {format_size(freed)} freed of {format_size(plan.needed)} "
        "asked" + (f" (kept: {why})" if why else ""),
        hint=("nothing else may go: free disk elsewhere" if allow_delete
              else "--allow-delete also deletes whole images (never critical, pinned or in use)"))


# ---------------------------------------------------------------- doctor


@cli.command("doctor")
@click.option("--containerd-config", type=click.Path(path_type=Path),
              default=Path("/etc/containerd/config.toml"), show_default=True)
@click.option("--kubelet-config", type=click.Path(path_type=Path),
              default=Path("/var/lib/kubelet/config.yaml"), show_default=True)
@click.option("--keep-free", default="20%", show_default=True, metavar="SIZE|PCT",
              help="The evict floor to check against kubelet's image GC threshold.")
@click.option("--no-verify", is_flag=True, help="Skip re-hashing the store's blobs.")
@pass_app
def doctor_command(app: App, containerd_config: Path, kubelet_config: Path, keep_free: str,
                   no_verify: bool) -> None:
    """Check the node: containerd, its pin support and config, kubelet's image GC settings
    against the evict floor, critical images, the store. Exit 14 when a check fails."""
    from cargohold.node.disk import parse_keep_free
    from cargohold.node.doctor import FAIL, worst

    parse_keep_free(keep_free)
    checks = _doctor_checks(app, containerd_config, kubelet_config, keep_free, no_verify)
    if app.out.json_mode:
        app.out.json({"event": "doctor", "status": worst(checks),
                      "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            app.out.data(f"{c.status:<4}  {c.name:<24}  {c.message}")
            if c.advice and c.status != "ok":
                app.out.data(f"{'':<4}  {'':<24}  -> {c.advice}")
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        raise CheckFailedError(f"{len(failed)} checks failed: {', '.join(failed)}")


def _doctor_checks(app: App, containerd_config: Path, kubelet_config: Path, keep_free: str,
                   no_verify: bool) -> list[Any]:
    from cargohold.node import doctor as d
    from cargohold.node.disk import fs_space, parse_keep_free, store_path

    s = app.settings
    checks: list[d.Check] = []
    try:
        facts = d.read_containerd_config(containerd_config)
        checks += d.check_containerd_config(facts, containerd_config, s.snapshotter)
    except d.ConfigError as e:
        checks.append(d.Check("containerd-config", d.FAIL, str(e), "fix the file"))
    try:
        kfacts = d.read_kubelet_config(kubelet_config)
    except d.ConfigError as e:
        checks.append(d.Check("kubelet-config", d.FAIL, str(e), "fix the file"))
        kfacts = None
        kubelet_ok = False
    else:
        kubelet_ok = True
    try:
        with open_store_and_snapshots(app.settings) as (store, sn):
            if not isinstance(store, LocalStore):
                v = store.version()
                checks.append(d.Check("containerd", d.OK,
                                      f"containerd {v.version} at {s.address}"))
                checks.append(d.check_pin_support(v.version))
            pct = _keep_free_pct(parse_keep_free(keep_free), store_path(store, Path(s.root)),
                                 fs_space)
            if kubelet_ok:
                checks += d.check_kubelet_config(kfacts, kubelet_config, pct)
            checks += _store_checks(app, store, sn, no_verify)
    except CargoholdError as e:
        name = "containerd" if s.store == "containerd" else "store"
        checks.append(d.Check(name, d.FAIL, e.message, e.hint_text()))
        if kubelet_ok:
            checks += d.check_kubelet_config(kfacts, kubelet_config, None)
    return checks


def _keep_free_pct(keep: tuple[int | None, float | None], where: Path | None,
                   fs_space: Any) -> float | None:
    size, pct = keep
    if pct is not None:
        return pct
    if where is None or size is None:
        return None
    total = fs_space(where).total
    return 100.0 * size / total if total else None


def _store_checks(app: App, store: Store, sn: Snapshotter | None, no_verify: bool) -> list[Any]:
    from cargohold.node import doctor as d
    from cargohold.node.inventory import take_inventory

    out: list[d.Check] = []
    inv = take_inventory(store, sn)
    critical = [i for i in inv.images if i.critical]
    if not critical:
        out.append(d.Check("critical-images", d.WARN, "no image is labelled critical",
                           "bake a spec with `critical = true` on pause, coredns, ..."))
    bad = [i for i in critical if i.tier != "unpacked"]
    if bad:
        out.append(d.Check("critical-images", d.FAIL,
                           "not unpacked: " + ", ".join(f"{i.name} ({i.tier})" for i in bad),
                           "run `cargohold bake` (or `pull`) for them"))
    elif critical:
        out.append(d.Check("critical-images", d.OK,
                           f"{len(critical)} critical images present, complete and unpacked"))
    if app.settings.store == "containerd" and critical:
        unpinned = [i.name for i in critical if not i.pinned]
        if unpinned:
            out.append(d.Check("critical-pinned", d.FAIL, "not pinned: " + ", ".join(unpinned),
                               "`cargohold --store containerd fetch --pin REF` or re-bake"))
        else:
            out.append(d.Check("critical-pinned", d.OK, "every critical image is pinned"))
    if no_verify:
        return out
    from cargohold.maintain.verify import verify

    problems = verify(store, None, snapshots=sn)
    if problems:
        out.append(d.Check("store-verify", d.FAIL,
                           f"{len(problems)} problems: " + "; ".join(
                               f"{p.image}: {p.message}" for p in problems[:3]),
                           "run `cargohold verify --repair`"))
    else:
        out.append(d.Check("store-verify", d.OK,
                           f"{len(inv.images)} images verified (every blob re-hashed)"))
    return out


# ---------------------------------------------------------------- metrics


@cli.command("metrics")
@click.option("--textfile", "textfile_dir", type=click.Path(path_type=Path), default=None,
              help="Write DIR/cargohold.prom atomically (node_exporter's textfile collector); "
                   "without it, print the metrics on stdout.")
@pass_app
def metrics_command(app: App, textfile_dir: Path | None) -> None:
    """Prometheus metrics: images per tier, store bytes, bytes evicted, last runs."""
    from cargohold.cli.run_metrics import refresh_textfile
    from cargohold.node.metrics import check_textfile_dir

    if textfile_dir is not None:
        check_textfile_dir(textfile_dir)
        app.out.info(f"wrote {refresh_textfile(app, textfile_dir)}")
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = refresh_textfile(app, Path(tmp)).read_text(encoding="utf-8")
    if app.out.json_mode:
        from cargohold.node.metrics import parse_exposition

        app.out.json({"event": "metrics", "metrics": parse_exposition(text)})
    else:
        app.out.data(text.rstrip("\n"))
