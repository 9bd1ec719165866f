"""`cargohold import` and `cargohold export`: image archives for air-gapped nodes.

Also :func:`content_source`, the ``--from`` / ``--allow-network`` options of ``bake`` and
``plan`` (archives in place of the registry client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cargohold.cli.fetch_cmd import (
    apply_registry_options,
    print_failures,
    raise_failures,
    record_policy,
    registry_options,
)
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import human_bytes
from cargohold.cli.progress import FetchProgress
from cargohold.cli.resources import LocalStore, open_store, registry_client, reserve_bytes
from cargohold.errors import InvalidInputError, NotFoundError
from cargohold.fetch import FetchFailure, FetchResult
from cargohold.oci.descriptor import Platform
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import Reference, parse_reference
from cargohold.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def from_options(f: F) -> F:
    """``--from PATH`` (repeatable) and ``--allow-network`` for bake and plan."""
    f = click.option("--allow-network", is_flag=True,
                     help="With --from: fetch images the archives lack from their registry.")(f)
    return click.option(
        "--from", "from_paths", multiple=True, type=click.Path(path_type=Path),
        help="Take the spec's images from this OCI layout or archive instead of a registry "
             "(repeatable).")(f)


def content_source(s: Settings, from_paths: Sequence[Path], allow_network: bool,
                   store: Any | None = None) -> Any:
    """The registry client, or with ``--from`` the archives (falling back to the registry
    only with ``--allow-network``). Either way: ``resolve``, ``fetch_manifest``,
    ``download_blob``, ``close``."""
    if not from_paths:
        if allow_network:
            raise InvalidInputError("--allow-network needs --from")
        return registry_client(s)
    from cargohold.archive.source import open_source

    return open_source(
        list(from_paths),
        store=store,
        check=_space_check(s, store),
        fallback=registry_client(s) if allow_network else None,
        strict_names=False,
    )


def _space_check(s: Settings, store: Any | None) -> Any:
    from cargohold.archive.source import space_check

    if isinstance(store, LocalStore):
        return space_check(store.root, reserve_bytes(s))
    return lambda n: None


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
    from cargohold.archive.importer import ImportCache, cache_path, import_archives

    s = app.settings
    out = app.out
    plats, given = _platforms(s, platforms)
    base = parse_reference(base_name, default_tag=False) if base_name else None
    start = time.monotonic()
    with open_store(s) as store, FetchProgress(out) as progress:
        cache = None if force else ImportCache(cache_path(Path(s.root), _store_key(s)))
        run = import_archives(
            store, list(paths), platforms=plats, all_platforms=all_platforms, base_name=base,
            records=record_policy(app, cri, pin), jobs=jobs or s.jobs, events=progress,
            check=_space_check(s, store), cache=cache,
        )
        ok = [r for r in run.results if isinstance(r, FetchResult)]
        unpacked = _unpack(app, store, ok, given, jobs) if do_unpack and ok else {}
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
            "failed": [f.to_json() for f in failures],
            "seconds": round(elapsed, 3),
        })
    else:
        from cargohold.cli.unpack_cmd import report_unpack

        for o in run.outcomes:
            if o.skipped:
                out.info(f"{o.path}: unchanged since its last import, skipped")
        for r in ok:
            out.data(f"{r.name}  {r.target.digest}  {r.blobs} blobs  "
                     f"{human_bytes(r.bytes_total)}  (record {r.record})")
            for u in unpacked.get(r.name, []):
                report_unpack(out, r.name, u)
        print_failures(out, failures, total=len(failures) + len(ok),
                       shown=progress.failures_shown)
        out.info(f"elapsed: {elapsed:.1f} s")
    raise_failures(failures, total=max(1, len(failures) + len(ok)))


def _unpack(app: App, store: Any, ok: list[FetchResult], given: list[Platform],
            jobs: int | None) -> dict[str, Any]:
    from cargohold.cli.unpack_cmd import make_unpacker, unpack_lease

    plats: list[Platform | None] = list(given) or [None]
    done: dict[str, Any] = {}
    by_digest: dict[str, Any] = {}
    with make_unpacker(app, store, jobs=jobs) as unpacker, unpack_lease(store):
        for r in ok:
            key = str(r.target.digest)
            if key not in by_digest:
                by_digest[key] = [unpacker.unpack(r.target, p) for p in plats]
            done[r.name] = by_digest[key]
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
        from cargohold.spec import load_spec

        spec = load_spec(spec_file)
        wanted += [e.ref for e in spec.images]
        spec_plats = [p for e in spec.images for p in spec.platforms_for(e)]
    if not wanted:
        raise InvalidInputError("name the images to export (REF... or --spec SPEC)")
    given = [parse_platform(p) for p in platforms] or spec_plats or \
        [parse_platform(p) for p in s.platforms]
    plats = list(dict.fromkeys(given)) or [host_platform()]
    start = time.monotonic()
    with open_store(s) as store:
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
                     f"{human_bytes(plan.size)} to {output} in {elapsed:.1f} s")


def _fetch_missing(app: App, store: Any, wanted: list[Reference], plats: list[Platform],
                   all_platforms: bool) -> None:
    from cargohold.fetch import Fetcher

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
                          records=record_policy(app, None, False))
        try:
            results = fetcher.fetch_all(missing, platforms=plats, all_platforms=all_platforms)
        finally:
            fetcher.close()
            client.close()
    raise_failures([r for r in results if isinstance(r, FetchFailure)], total=len(results))
