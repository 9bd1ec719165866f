"""`cargohold unpack` and `cargohold pull`: layers into snapshots, like containerd's unpacker.

``unpack`` works on images already fetched (idempotent: chains already committed are skipped
and listed); ``pull`` is ``fetch`` followed by ``unpack`` (what ``ctr images pull`` does).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import click

from cargohold.cli.fetch_cmd import fetched_line
from cargohold.cli.fetching import (
    apply_registry_options,
    print_failures,
    raise_failures,
    record_policy,
    registry_options,
)
from cargohold.cli.images_cmd import lookup_name
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.progress import FetchProgress
from cargohold.cli.unpacking import UnpackProgress, make_unpacker, report_unpack
from cargohold.errors import CargoholdError
from cargohold.interrupts import held, shutdown, wait_until
from cargohold.leasing import leased
from cargohold.oci.descriptor import Platform
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import Reference, parse_reference
from cargohold.pull.blobwait import FetchBoard, WaitingContent, current_ref
from cargohold.pull.fetch import Fetcher, FetchFailure, FetchResult
from cargohold.pull.sources import registry_client
from cargohold.store.open import open_store, reserve_bytes
from cargohold.unpack.image import (
    Unpacker,
    UnpackResult,
)


@contextmanager
def unpack_lease(store: Any) -> Iterator[None]:
    """Unpack under a lease, as containerd's unpacker does: a garbage collector cannot take
    snapshots half-way, and the ``extract-*`` snapshots of a killed unpack are found (its
    lease's owner is dead) and removed by the next command. The lease goes afterwards: the
    config label keeps the committed snapshots."""
    with leased(store, "unpack"):
        yield


def parse_platform_option(text: str | None) -> Platform | None:
    return parse_platform(text) if text else None


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
        name = lookup_name(store, ref)
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
    unpacked: dict[str, list[UnpackResult]] = {}
    unpack_errors: dict[str, CargoholdError] = {}
    fetched: list[FetchResult | FetchFailure] = []
    cancel = threading.Event()
    with open_store(s) as store, FetchProgress(out) as progress:
        # Fetch in one thread; unpack each image as soon as it is resolved, each layer as
        # soon as its blob is in (cargohold.pull.blobwait), as containerd's pull does.
        board = FetchBoard(progress)
        fetcher = Fetcher(store, registry_client(s), jobs=jobs or s.jobs, events=board,
                          records=record_policy(app, None, False), cancel=cancel)

        fetch_crash: list[BaseException] = []

        def run_fetch() -> None:
            try:
                fetched.extend(fetcher.fetch_all(parsed, platforms=plats))
            except BaseException as e:  # re-raised in the main thread after the join
                fetch_crash.append(e)
            finally:
                board.finish()

        fetch_thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(run_fetch,), name="pull-fetch", daemon=True)

        def fetch_ended() -> bool:
            return not fetch_thread.is_alive()

        # On a TTY the layers show in the live display with the downloads.
        unpack_progress = UnpackProgress(out, display=progress)
        # Ctrl-C / SIGTERM raise KeyboardInterrupt in this thread: every wait here polls
        # and every thread start is held (cargohold.interrupts), so it is never a
        # RuntimeError, and no thread outlives the store.
        try:
            with held():  # Thread.start waits for the thread: not interruptible
                fetch_thread.start()
            content = WaitingContent(store.content, board, cancel)
            with (
                Unpacker(content, store.snapshots, store.applier, jobs=jobs or s.jobs,
                         reserve_bytes=reserve_bytes(s), events=unpack_progress,
                         cancel=cancel, check_blobs=False) as unpacker,
                unpack_lease(store),
            ):

                def one(ref: Reference) -> list[UnpackResult]:
                    current_ref.set(str(ref))  # this worker's own context (copied at submit)
                    target = board.wait_resolved(ref, cancel)
                    return [unpacker.unpack(target, p) for p in unpack_plats]

                pool = ThreadPoolExecutor(max_workers=max(1, min(len(parsed), jobs or s.jobs)),
                                          thread_name_prefix="pull")
                try:
                    futs = []
                    for ref in parsed:
                        with held():
                            futs.append((ref, pool.submit(contextvars.copy_context().run,
                                                          one, ref)))
                    for ref, fut in futs:
                        wait_until(fut.done)
                        try:
                            unpacked[str(ref)] = fut.result()
                        except CargoholdError as e:
                            unpack_errors[str(ref)] = e
                except BaseException:
                    fetcher.abort()  # now, before the pool waits for its workers
                    raise
                finally:
                    shutdown(pool, fetcher.abort)
                wait_until(fetch_ended, fetcher.abort)
        except BaseException:
            fetcher.abort()  # the fetch and the unpacks stop and clean up
            wait_until(fetch_ended, fetcher.abort)
            raise
        finally:
            fetcher.close()
    if fetch_crash:
        raise fetch_crash[0]
    ok = [r for r in fetched if isinstance(r, FetchResult)]
    failures = [r for r in fetched if isinstance(r, FetchFailure)]
    fetch_failed = {str(f.ref) for f in failures}
    # An image whose fetch failed fails for that reason; the others for their unpack's.
    failures += [FetchFailure(name, e) for name, e in unpack_errors.items()
                 if name not in fetch_failed]
    unpacked = {r.name: unpacked[str(r.ref)] for r in ok if str(r.ref) in unpacked}
    elapsed = time.monotonic() - start
    done = [r for r in ok if r.name in unpacked]
    if out.json_mode:
        out.json({
            "event": "summary",
            "images": [{**r.to_json(), "unpack": [u.to_json() for u in unpacked[r.name]]}
                       for r in done],
            "failed": [f.to_json() for f in failures],
            "bytes_transferred": sum(r.bytes_transferred for r in ok),
            "seconds": round(elapsed, 3),
        })
    else:
        for r in done:
            out.data(fetched_line(r))
            for u in unpacked[r.name]:
                report_unpack(out, r.name, u)
        print_failures(out, failures, total=len(parsed), shown=progress.failures_shown)
        out.info(f"elapsed: {elapsed:.1f} s")
    raise_failures(failures, total=len(parsed))
