"""`cargohold unpack` and `cargohold pull`: layers into snapshots, like containerd's unpacker.

``unpack`` works on images already fetched (idempotent: chains already committed are skipped
and listed); ``pull`` is ``fetch`` followed by ``unpack`` (what ``ctr images pull`` does).
"""

from __future__ import annotations

import time

import click

from cargohold.cli.fetching import (
    apply_registry_options,
    fetched_line,
    print_failures,
    raise_failures,
    registry_options,
)
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.progress import FetchProgress
from cargohold.cli.unpacking import (
    UnpackProgress,
    make_unpacker,
    parse_platform_option,
    report_unpack,
)
from cargohold.oci.descriptor import Platform
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import parse_reference
from cargohold.pull.pipeline import pull_images, unpack_lease
from cargohold.pull.records import lookup_name, record_policy
from cargohold.pull.sources import registry_client
from cargohold.store.open import open_store, reserve_bytes


@cli.command()
@click.argument("ref")
@click.option("--platform", default=None,
              help="os/arch[/variant] to unpack [default: this host's for an index; the "
                   "image's own for a single manifest].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Layers applied at once (overlay) [default: 4].")
@pass_app
def unpack(app: App, ref: str, platform: str | None, jobs: int | None) -> None:
    """Unpack a fetched image's layers into snapshots (idempotent)."""
    plat = parse_platform_option(platform)
    out = app.out
    with open_store(app.settings, must_exist=True) as store:
        name = lookup_name(store.images, ref)
        img = store.images.get(name)
        with (
            FetchProgress(out) as display,  # the layers live on a TTY
            make_unpacker(app, store, jobs=jobs,
                          events=UnpackProgress(out, display=display)) as unpacker,
            unpack_lease(store),
        ):
            result = unpacker.unpack(img.target, plat)
    if out.json_mode:
        out.json({"event": "summary", "name": name, **result.to_json()})
        return
    report_unpack(out, name, result)


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] to fetch and unpack (repeatable) [default: this host's].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Parallel downloads, and layers applied at once [default: 4].")
@registry_options
@pass_app
def pull(app: App, refs: tuple[str, ...], platforms: tuple[str, ...], jobs: int | None,
         plain_http: bool | None, insecure_skip_verify: bool | None, hosts_dir: str | None,
         authfile: str | None) -> None:
    """Fetch images and unpack them (like `ctr images pull`)."""
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    s = app.settings
    parsed = [parse_reference(r) for r in refs]
    given = [parse_platform(p) for p in (platforms or s.platforms)]
    plats = given or [host_platform()]
    # Unpack the platforms asked for; without --platform an index gets the host's and a
    # single-platform image its own.
    unpack_plats: list[Platform | None] = list(given) or [None]
    out = app.out
    start = time.monotonic()
    with open_store(s) as store, FetchProgress(out) as progress:
        # The fetch overlapped with the unpack (cargohold.pull.pipeline); on a TTY the
        # layers show in the live display with the downloads.
        result = pull_images(
            store, registry_client(s), parsed, platforms=plats, unpack_platforms=unpack_plats,
            jobs=jobs or s.jobs, reserve_bytes=reserve_bytes(s),
            records=record_policy(s.store, None, False), fetch_events=progress,
            unpack_events=UnpackProgress(out, display=progress),
        )
    elapsed = time.monotonic() - start
    if out.json_mode:
        out.json({
            "event": "summary",
            "images": [i.to_json() for i in result.images],
            "failed": [f.to_json() for f in result.failures],
            "bytes_transferred": result.bytes_transferred,
            "seconds": round(elapsed, 3),
        })
    else:
        for i in result.images:
            out.data(fetched_line(i.fetch))
            for u in i.unpacks:
                report_unpack(out, i.name, u)
        print_failures(out, result.failures, total=len(parsed), shown=progress.failures_shown)
        out.info(f"elapsed: {elapsed:.1f} s")
    raise_failures(result.failures, total=len(parsed))
