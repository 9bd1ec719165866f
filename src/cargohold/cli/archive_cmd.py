"""`cargohold import` and `cargohold export`: image archives for air-gapped nodes.

(``bake`` / ``plan --from`` take their archives through :mod:`cargohold.pull.sources`.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cargohold.cli.fetching import (
    apply_registry_options,
    print_failures,
    raise_failures,
    registry_options,
)
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.progress import FetchProgress
from cargohold.cli.unpacking import make_unpacker, report_unpack
from cargohold.errors import InvalidInputError, NotFoundError
from cargohold.leasing import leased
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import Reference, parse_reference
from cargohold.pull.fetch import FetchFailure, FetchResult
from cargohold.pull.records import record_policy
from cargohold.pull.sources import registry_client, space_check
from cargohold.settings import Settings
from cargohold.store.open import open_store
from cargohold.units import format_size

if TYPE_CHECKING:
    from cargohold.store.interfaces import Store


def _platforms(s: Settings, given: tuple[str, ...]) -> tuple[list[Platform], list[Platform]]:
    parsed = [parse_platform(p) for p in (given or s.platforms)]
    return parsed or [host_platform()], parsed


def _store_key(s: Settings) -> str:
    if s.store == "containerd":
        return f"containerd-{s.namespace}-{s.address}"
    return "embedded"


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] of an index to import (repeatable) [default: this host's].")
@click.option("--all-platforms", is_flag=True, help="Import every platform of an index.")
@click.option("--base-name", default=None, metavar="REPO",
              help="Repository for images named only by a bare tag (REPO:TAG) or not at all "
                   "(REPO@DIGEST).")
@click.option("--cri-records/--no-cri-records", "cri", default=None,
              help="Also write CRI's records (repo@digest, sha256:<config>, managed label) "
                   "[default: on with --store containerd, off otherwise].")
@click.option("--pin", is_flag=True, help="Label the records io.cri-containerd.pinned=pinned.")
@click.option("--unpack", "do_unpack", is_flag=True,
              help="Unpack the imported images into snapshots (as pull does).")
@click.option("--force", is_flag=True,
              help="Read every archive, also files imported before and unchanged.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Blobs copied at once [default: 4].")
@pass_app
def import_command(app: App, paths: tuple[Path, ...], platforms: tuple[str, ...],
                   all_platforms: bool, base_name: str | None, cri: bool | None, pin: bool,
                   do_unpack: bool, force: bool, jobs: int | None) -> None:
    """Import image archives: OCI layouts (directory, tar, tar.gz, tar.zst), docker-archives
    (`docker save`, Docker 25+), or a directory of them (k3s style)."""
    from cargohold.archive.importer import (
        ImportCache,
        cache_options,
        cache_path,
        import_archives,
    )

    s = app.settings
    out = app.out
    plats, given = _platforms(s, platforms)
    base = parse_reference(base_name, default_tag=False) if base_name else None
    records = record_policy(app.settings.store, cri, pin)
    start = time.monotonic()
    with open_store(s) as store, FetchProgress(out) as progress:
        cache = None if force else ImportCache(
            cache_path(Path(s.root), _store_key(s)),
            cache_options(cri=records.cri, pin=records.pin, unpack=do_unpack,
                          platforms=sorted(str(p) for p in plats), all_platforms=all_platforms,
                          base_name=str(base) if base else None))
        run = import_archives(
            store, list(paths), platforms=plats, all_platforms=all_platforms, base_name=base,
            records=records, jobs=jobs or s.jobs, events=progress,
            check=space_check(s, store), cache=cache,
        )
        ok = [r for r in run.results if isinstance(r, FetchResult)]
        unpacked: dict[str, Any] = {}
        earlier: dict[str, Any] = {}
        if do_unpack:
            # The images of skipped archives too: an earlier import may have recorded them
            # and not unpacked them (interrupted), or their snapshots went since (evict).
            skipped = [t for o in run.outcomes if o.skipped for t in o.recorded]
            done = _unpack(app, store, [(r.name, r.target) for r in ok] + skipped, given, jobs)
            unpacked = {r.name: done[r.name] for r in ok if r.name in done}
            earlier = {n: u for n, u in done.items() if n not in unpacked
                       and not all(x.already_unpacked for x in u)}
        if cache is not None:
            run.remember(cache)  # only now: records, pins and unpack are all done
    elapsed = time.monotonic() - start
    failures: list[FetchFailure] = [r for r in run.results if isinstance(r, FetchFailure)]
    failures += [FetchFailure(str(o.path), o.error) for o in run.outcomes
                 if o.error is not None and not o.refs]
    if out.json_mode:
        out.json({
            "event": "summary",
            "archives": [o.to_json() for o in run.outcomes],
            "images": [{**r.to_json(), **({"unpack": [u.to_json() for u in unpacked[r.name]]}
                                           if r.name in unpacked else {})} for r in ok],
            "unpacked_skipped": [{"name": n, "unpack": [x.to_json() for x in u]}
                                 for n, u in earlier.items()],
            "failed": [f.to_json() for f in failures],
            "seconds": round(elapsed, 3),
        })
    else:
        for o in run.outcomes:
            if o.skipped:
                out.info(f"{o.path}: unchanged since its last import, skipped")
        for r in ok:
            out.data(f"{r.name}  {r.target.digest}  {r.blobs} blobs  "
                     f"{format_size(r.bytes_total)}  (record {r.record})")
            for u in unpacked.get(r.name, []):
                report_unpack(out, r.name, u)
        for name, us in earlier.items():
            for u in us:
                report_unpack(out, name, u)
        print_failures(out, failures, total=len(failures) + len(ok),
                       shown=progress.failures_shown)
        out.info(f"elapsed: {elapsed:.1f} s")
    raise_failures(failures, total=max(1, len(failures) + len(ok)))


def _unpack(app: App, store: Store, images: list[tuple[str, Descriptor]], given: list[Platform],
            jobs: int | None) -> dict[str, Any]:
    """Unpack each (name, target) for each platform asked for (else the host's), under a
    lease as containerd's unpacker does; an image already unpacked costs a lookup."""
    plats: list[Platform | None] = list(given) or [None]
    done: dict[str, Any] = {}
    by_digest: dict[str, Any] = {}
    if not images:
        return done
    with make_unpacker(app, store, jobs=jobs) as unpacker, leased(store, "unpack"):
        for name, target in images:
            key = str(target.digest)
            if key not in by_digest:
                by_digest[key] = [unpacker.unpack(target, p) for p in plats]
            done[name] = by_digest[key]
    return done


@cli.command("export")
@click.argument("refs", nargs=-1)
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None,
              help="Export every image of this cache spec.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="An OCI layout directory, or a .tar, .tar.gz or .tar.zst file.")
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] of an index to export (repeatable) [default: the spec's, "
                   "settings, else this host's].")
@click.option("--all-platforms", is_flag=True, help="Export every platform of an index.")
@click.option("--fetch", "do_fetch", is_flag=True,
              help="Fetch images that are not in the store first.")
@registry_options
@pass_app
def export_command(app: App, refs: tuple[str, ...], spec_file: Path | None, output: Path,
                   platforms: tuple[str, ...], all_platforms: bool, do_fetch: bool,
                   plain_http: bool | None, insecure_skip_verify: bool | None,
                   hosts_dir: str | None, authfile: str | None) -> None:
    """Write images of the store as an OCI image layout (a directory or a tar stream)."""
    from cargohold.archive.export import export_summary, plan_export, write_layout

    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    s = app.settings
    wanted: list[Reference] = [parse_reference(r) for r in refs]
    spec_plats: list[Platform] = []
    if spec_file is not None:
        from cargohold.bake.spec import load_spec

        spec = load_spec(spec_file)
        wanted += [e.ref for e in spec.images]
        spec_plats = [p for e in spec.images for p in spec.platforms_for(e)]
    if not wanted:
        raise InvalidInputError("name the images to export (REF... or --spec SPEC)")
    given = [parse_platform(p) for p in platforms] or spec_plats or \
        [parse_platform(p) for p in s.platforms]
    plats = list(dict.fromkeys(given)) or [host_platform()]
    start = time.monotonic()
    # Without --fetch export only reads: a mistyped --root is not a new, empty store.
    with open_store(s, must_exist=not do_fetch) as store:
        if do_fetch:
            _fetch_missing(app, store, wanted, plats, all_platforms)
        images = []
        for ref in dict.fromkeys(wanted):
            name = str(ref)
            try:
                images.append((name, store.images.get(name).target))
            except NotFoundError:
                raise NotFoundError(f"{name}: no such image record",
                                    hint="fetch it first, or pass --fetch") from None
        plan = plan_export(store.content, images, platforms=plats, all_platforms=all_platforms)
        write_layout(output, store.content, plan)
    elapsed = time.monotonic() - start
    if app.out.json_mode:
        app.out.json({"event": "summary", "output": str(output), **export_summary(plan),
                      "seconds": round(elapsed, 3)})
    else:
        for d in plan.entries:
            app.out.data(f"{d.annotations['io.containerd.image.name']}  {d.digest}")
        app.out.info(f"wrote {len(plan.entries)} images, {len(plan.blobs)} blobs, "
                     f"{format_size(plan.size)} to {output} in {elapsed:.1f} s")


def _fetch_missing(app: App, store: Store, wanted: list[Reference], plats: list[Platform],
                   all_platforms: bool) -> None:
    from cargohold.pull.fetch import Fetcher

    missing = []
    for ref in wanted:
        try:
            store.images.get(str(ref))
        except NotFoundError:
            missing.append(ref)
    if not missing:
        return
    s = app.settings
    client = registry_client(s)
    with FetchProgress(app.out) as progress:
        fetcher = Fetcher(store, client, jobs=s.jobs, events=progress,
                          records=record_policy(app.settings.store, None, False))
        try:
            results = fetcher.fetch_all(missing, platforms=plats, all_platforms=all_platforms)
        finally:
            fetcher.close()
            client.close()
    raise_failures([r for r in results if isinstance(r, FetchFailure)], total=len(results))
