"""`cargohold fetch`: compressed content + image record, like `ctr content fetch`."""

from __future__ import annotations

import time
from collections.abc import Collection

import click

from cargohold.cli.fetching import (
    apply_registry_options,
    fetched_line,
    print_failures,
    raise_failures,
    registry_options,
)
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.progress import TINY, FetchProgress
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import parse_reference
from cargohold.pull.fetch import Fetcher, FetchFailure, FetchResult
from cargohold.pull.records import record_policy
from cargohold.pull.sources import registry_client
from cargohold.store.open import open_store
from cargohold.units import format_rate, format_size


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] to fetch (repeatable) [default: this host's].")
@click.option("--all-platforms", is_flag=True, help="Fetch every platform of an index.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Parallel downloads [default: 4].")
@click.option("--cri-records/--no-cri-records", "cri", default=None,
              help="Also write CRI's records (repo@digest, sha256:<config>, managed label) "
                   "[default: on with --store containerd, off otherwise].")
@click.option("--pin", is_flag=True, help="Label the records io.cri-containerd.pinned=pinned.")
@registry_options
@pass_app
def fetch(app: App, refs: tuple[str, ...], platforms: tuple[str, ...], all_platforms: bool,
          jobs: int | None, cri: bool | None, pin: bool, plain_http: bool | None,
          insecure_skip_verify: bool | None, hosts_dir: str | None, authfile: str | None) -> None:
    """Fetch images' compressed content and register them (no unpack)."""
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    s = app.settings
    parsed = [parse_reference(r) for r in refs]
    plats = [parse_platform(p) for p in (platforms or s.platforms)] or [host_platform()]
    out = app.out
    start = time.monotonic()
    with open_store(s) as store, FetchProgress(out) as progress:
        fetcher = Fetcher(store, registry_client(s), jobs=jobs or s.jobs, events=progress,
                          records=record_policy(s.store, cri, pin))
        try:
            results = fetcher.fetch_all(parsed, platforms=plats, all_platforms=all_platforms)
        finally:
            fetcher.close()
    elapsed = time.monotonic() - start
    report_fetch(app, results, elapsed, download_seconds=progress.download_seconds,
                 shown=progress.failures_shown)


def report_fetch(app: App, results: list[FetchResult | FetchFailure], elapsed: float, *,
                 download_seconds: float = 0.0, shown: Collection[str] = ()) -> None:
    """The results; the rate is the download's own (first blob start to last blob end),
    not the whole run's. ``shown``: images whose failure the progress lines showed."""
    out = app.out
    ok = [r for r in results if isinstance(r, FetchResult)]
    failed = [r for r in results if isinstance(r, FetchFailure)]
    transferred = sum(r.bytes_transferred for r in ok)
    if out.json_mode:
        out.json({
            "event": "summary",
            "images": [r.to_json() for r in ok],
            "failed": [f.to_json() for f in failed],
            "bytes_transferred": transferred,
            "seconds": round(elapsed, 3),
        })
    else:
        for r in ok:
            out.data(fetched_line(r))
        print_failures(out, failed, total=len(results), shown=shown)
        secs = download_seconds or elapsed
        rate = (f" ({format_rate(transferred / secs)})"
                if transferred >= TINY and secs > 0 else "")
        out.info(f"elapsed: {elapsed:.1f} s  total: {format_size(transferred)}{rate}")
    raise_failures(failed, total=len(results))

