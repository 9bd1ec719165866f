"""`cargohold bench REF`: the seed's experiment as a command, in scratch stores.

Before each step the file systems are **settled** (:func:`settle`) so that no step pays for
the one before: ``sync`` (the previous step's dirty pages are written back; how long that
took is reported) and, where permitted (root, a writable ``/proc/sys/vm/drop_caches``;
``--no-drop-caches`` leaves it), the page cache, dentries and inodes are dropped, so each
step reads and writes cold, as a node's first start does.

1. **fetch**: a cold ``fetch`` of REF (compressed content + image record) into a fresh
   scratch store (:mod:`cargohold.measure.scratch`): wall seconds, bytes, MB/s; then its disk
   use (content only).
2. **first create**: what the first container of a fetched-only image pays, in that store.
   Embedded: ``cargohold create``'s own code (unpack through the store's Unpacker, container
   record, container snapshot). containerd: the Unpacker into the scratch namespace
   (containerd's snapshotter, cargohold's applier, as ``cargohold unpack --store containerd``)
   plus the container's active snapshot prepared on the image, which is what containerd
   does when a container is created from a fetched-only image (its own unpacker may differ
   a little in speed).
3. **pull**: a cold ``pull`` (fetch, then unpack) into a second fresh scratch store: wall,
   and its own phases (the fetch's and the unpack's seconds); then its disk use: content +
   snapshots (the snapshotter's usage, as ``cargohold du`` counts it).

The first scratch store is removed before the second is made (``--keep`` keeps both): on
containerd blobs are shared across namespaces, so the pull would not be cold otherwise. If
a fetch transferred less than the image (its blobs were in containerd already, e.g. in the
user's namespace), the row says "warm".

The verdict: how much disk fetch-only saves against pull, and what the first start pays.
The measured unpack (unpacked bytes / unpack seconds, and the rest of the first create as
the per-image overhead) is saved as the store's calibration (``source = "bench"``).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import click

from cargohold.cli.fetching import apply_registry_options, registry_options
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import Output
from cargohold.cli.progress import FetchProgress
from cargohold.cli.unpacking import UnpackProgress, create_with_progress, make_unpacker
from cargohold.errors import CargoholdError
from cargohold.labels import LABEL_GC_ROOT
from cargohold.maintain.du import disk_usage
from cargohold.measure.calibration import Calibration, calibration_path, now_iso, save_calibration
from cargohold.measure.scratch import Scratch, open_scratch, unpacked_bytes
from cargohold.oci.descriptor import Platform
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import Reference, parse_reference
from cargohold.pull.fetch import Fetcher, FetchEvents, FetchResult
from cargohold.pull.records import record_policy
from cargohold.pull.sources import registry_client
from cargohold.store.open import LocalStore
from cargohold.units import format_rate, format_size
from cargohold.unpack.image import UnpackResult

__all__ = ["BenchResult", "run_bench"]

BENCH_CONTAINER = "bench"
DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass
class Settle:
    """What was done before a step so that it does not pay for the one before."""

    before: str
    sync_seconds: float = 0.0
    dropped_caches: bool = False
    #: Why the caches were not dropped (empty when they were).
    note: str = ""

    def describe(self) -> str:
        done = "synced" + (" and dropped the page cache" if self.dropped_caches else "")
        text = f"before {self.before}: {done} ({self.sync_seconds:.2f} s of writeback)"
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "sync_seconds": round(self.sync_seconds, 4),
                "dropped_caches": self.dropped_caches, "note": self.note}


def settle(before: str, *, drop_caches: bool = True) -> Settle:
    """``sync``, then drop the page cache, dentries and inodes where permitted."""
    t0 = time.monotonic()
    os.sync()
    res = Settle(before, time.monotonic() - t0)
    if not drop_caches:
        res.note = "page cache kept (--no-drop-caches)"
    elif os.geteuid() != 0:
        res.note = "page cache kept: dropping it needs root"
    else:
        try:
            with open(DROP_CACHES, "w") as f:
                f.write("3\n")
            res.dropped_caches = True
        except OSError as e:
            res.note = f"page cache kept: {DROP_CACHES}: {e.strerror or e}"
    return res


@dataclass
class Step:
    seconds: float = 0.0
    #: Compressed bytes transferred from the registry.
    bytes: int = 0
    #: Compressed bytes of the image (what a cold step transfers).
    bytes_total: int = 0

    #: The pull's own phases (a fetch step: its whole time is fetch).
    fetch_seconds: float = 0.0
    unpack_seconds: float = 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def cold(self) -> bool:
        return self.bytes >= self.bytes_total

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "bytes": self.bytes,
            "bytes_total": self.bytes_total,
            "bytes_per_second": round(self.bytes_per_second),
            "cold": self.cold,
            "fetch_seconds": round(self.fetch_seconds, 4),
            "unpack_seconds": round(self.unpack_seconds, 4),
        }


@dataclass
class Disk:
    content_bytes: int = 0
    snapshot_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    def to_json(self) -> dict[str, Any]:
        return {"content_bytes": self.content_bytes, "snapshot_bytes": self.snapshot_bytes,
                "total_bytes": self.total_bytes}


@dataclass
class BenchResult:
    ref: str
    name: str = ""
    digest: str = ""
    platform: str = ""
    store: str = ""
    snapshotter: str = ""
    fetch: Step = field(default_factory=Step)
    pull: Step = field(default_factory=Step)
    #: The first create's wall seconds (the lazy penalty) and its unpack part.
    create_seconds: float = 0.0
    unpack_seconds: float = 0.0
    unpacked_bytes: int = 0
    tar_bytes: int = 0
    layers: int = 0
    fetch_disk: Disk = field(default_factory=Disk)
    pull_disk: Disk = field(default_factory=Disk)
    kept: list[str] = field(default_factory=list)
    settled: list[Settle] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        return self.pull_disk.total_bytes - self.fetch_disk.total_bytes

    @property
    def saved_percent(self) -> float:
        total = self.pull_disk.total_bytes
        return 100.0 * self.saved_bytes / total if total > 0 else 0.0

    @property
    def unpack_throughput(self) -> float:
        """Unpacked bytes per second of the first create's unpack."""
        return self.unpacked_bytes / self.unpack_seconds if self.unpack_seconds > 0 else 0.0

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.create_seconds - self.unpack_seconds)

    def verdict(self) -> str:
        return (f"fetch-only saves {format_size(self.saved_bytes)} ({self.saved_percent:.1f} %) "
                f"of disk; first start pays {self.create_seconds:.2f} s")

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "digest": self.digest,
            "platform": self.platform,
            "store": self.store,
            "snapshotter": self.snapshotter,
            "fetch": self.fetch.to_json(),
            "first_create": {
                "seconds": round(self.create_seconds, 4),
                "unpack_seconds": round(self.unpack_seconds, 4),
                "overhead_seconds": round(self.overhead_seconds, 4),
                "unpacked_bytes": self.unpacked_bytes,
                "tar_bytes": self.tar_bytes,
                "layers": self.layers,
                "unpack_throughput": round(self.unpack_throughput, 1),
            },
            "pull": self.pull.to_json(),
            "disk": {
                "fetch_only": self.fetch_disk.to_json(),
                "pull": self.pull_disk.to_json(),
                "saved_bytes": self.saved_bytes,
                "saved_percent": round(self.saved_percent, 2),
            },
            "penalty_seconds": round(self.create_seconds, 4),
            "verdict": self.verdict(),
            "kept": self.kept,
            "settled": [x.to_json() for x in self.settled],
        }


def _disk(scratch: Scratch) -> Disk:
    du = disk_usage(scratch.store)
    return Disk(du.content_bytes, du.snapshot_bytes if du.snapshots_available else 0)


def _fetch(app: App, scratch: Scratch, ref: Reference, plats: list[Platform],
           jobs: int) -> FetchResult:
    """A fetch as `cargohold fetch` does it (live progress on a TTY, nothing per blob off it)."""
    out = app.out
    progress = FetchProgress(out) if out.live else None
    events: FetchEvents = progress if progress is not None else FetchEvents()
    with progress if progress is not None else contextlib.nullcontext():
        fetcher = Fetcher(scratch.store, registry_client(app.settings), jobs=jobs,
                          events=events, records=record_policy(app.settings.store, None, False))
        try:
            return fetcher.fetch(ref, platforms=plats)
        finally:
            fetcher.close()


def _first_create(app: App, scratch: Scratch, name: str, plat: Platform | None,
                  jobs: int) -> tuple[float, UnpackResult]:
    """The first create of a fetched-only image: (wall seconds, its unpack)."""
    store = scratch.store
    if isinstance(store, LocalStore):
        t0 = time.monotonic()
        made = create_with_progress(app, store, name, BENCH_CONTAINER, plat, jobs)
        return time.monotonic() - t0, made.unpack
    events = UnpackProgress(app.out, events=False)
    t0 = time.monotonic()
    image = store.images.get(name)
    with make_unpacker(app, store, jobs=jobs, events=events) as unpacker:
        result = unpacker.unpack(image.target, plat)
    store.snapshots.prepare(f"containers/{BENCH_CONTAINER}", result.chain_id,
                            labels={LABEL_GC_ROOT: now_iso()})
    return time.monotonic() - t0, result


def run_bench(app: App, ref: Reference, plat: Platform | None, jobs: int,
              keep: bool, drop_caches: bool = True) -> BenchResult:
    s = app.settings
    out = app.out
    given = [plat] if plat is not None else [parse_platform(p) for p in s.platforms]
    fetch_plats = given or [host_platform()]
    unpack_plat = given[0] if given else None
    res = BenchResult(ref=str(ref), store=s.store)

    def settled(before: str) -> None:
        res.settled.append(settle(before, drop_caches=drop_caches))
        out.info(res.settled[-1].describe())

    with open_scratch(s, "bench", keep=keep, warn=out.warn) as a:
        out.info(f"fetch into {a.where}")
        settled("the fetch")
        t0 = time.monotonic()
        fr = _fetch(app, a, ref, fetch_plats, jobs)
        seconds = time.monotonic() - t0
        res.fetch = Step(seconds, fr.bytes_transferred, fr.bytes_total, fetch_seconds=seconds)
        res.name, res.digest = fr.name, str(fr.target.digest)
        res.fetch_disk = _disk(a)
        out.info(f"fetch: {format_size(fr.bytes_transferred)} in {res.fetch.seconds:.2f} s; "
                 f"first create")
        settled("the first create")
        res.create_seconds, unpack = _first_create(app, a, fr.name, unpack_plat, jobs)
        res.unpack_seconds = unpack.seconds
        res.unpacked_bytes = unpacked_bytes(a.store.snapshots, unpack)
        res.tar_bytes = unpack.bytes_uncompressed
        res.layers = unpack.chains_total
        res.platform = unpack.platform
        res.snapshotter = unpack.snapshotter
        if keep:
            res.kept.append(a.where)

    with open_scratch(s, "bench", keep=keep, warn=out.warn) as b:
        out.info(f"first create: {res.create_seconds:.2f} s; pull into {b.where}")
        settled("the pull")
        t0 = time.monotonic()
        pr = _fetch(app, b, ref, fetch_plats, jobs)
        t1 = time.monotonic()
        with make_unpacker(app, b.store, jobs=jobs,
                           events=UnpackProgress(out, events=False)) as unpacker:
            unpacker.unpack(pr.target, unpack_plat)
        t2 = time.monotonic()
        res.pull = Step(t2 - t0, pr.bytes_transferred, pr.bytes_total,
                        fetch_seconds=t1 - t0, unpack_seconds=t2 - t1)
        res.pull_disk = _disk(b)
        if keep:
            res.kept.append(b.where)
    return res


def report(out: Output, res: BenchResult, cal: Calibration | None, path: str) -> None:
    if out.json_mode:
        out.json({
            "event": "bench",
            **res.to_json(),
            "calibration": cal.to_json() if cal is not None else None,
            "calibration_path": path if cal is not None else None,
        })
        return
    fd, pd = res.fetch_disk, res.pull_disk

    def warm(step: Step) -> str:
        return "" if step.cold else " (warm: blobs were present)"

    pull = res.pull
    rows = [
        ("fetch (content only)", f"{res.fetch.seconds:.2f} s", format_size(res.fetch.bytes),
         f"{format_rate(res.fetch.bytes_per_second)}{warm(res.fetch)}",
         format_size(fd.total_bytes)),
        ("first create (lazy unpack)", f"{res.create_seconds:.2f} s",
         format_size(res.unpacked_bytes),
         f"unpack {format_rate(res.unpack_throughput)} in {res.unpack_seconds:.2f} s", ""),
        ("pull (fetch + unpack)", f"{pull.seconds:.2f} s", format_size(pull.bytes),
         f"fetch {pull.fetch_seconds:.2f} s + unpack {pull.unpack_seconds:.2f} s"
         f"{warm(pull)}",
         f"{format_size(pd.total_bytes)} ({format_size(pd.content_bytes)} content + "
         f"{format_size(pd.snapshot_bytes)} snapshots)"),
    ]
    out.data(f"{res.name}  {res.platform}  {res.store} store ({res.snapshotter})")
    out.table(["STEP", "WALL", "BYTES", "RATE", "DISK"], rows)
    out.data(res.verdict())
    if res.settled:
        dropped = all(x.dropped_caches for x in res.settled)
        note = "" if dropped else f" ({res.settled[-1].note})"
        out.data("each step started after a sync" + (" and a dropped page cache" if dropped
                                                     else note))
    for where in res.kept:
        out.info(f"kept: {where}")
    if cal is not None:
        out.info(f"calibration saved to {path}: unpack {format_rate(cal.unpack_throughput)}, "
                 f"overhead {cal.per_image_overhead:.3f} s")


@cli.command()
@click.argument("ref")
@click.option("--platform", default=None,
              help="os/arch[/variant] to fetch and unpack [default: this host's].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Parallel downloads, and layers applied at once [default: 4].")
@click.option("--keep", is_flag=True,
              help="Keep the scratch stores (under <root>/tmp, or containerd namespaces).")
@click.option("--drop-caches/--no-drop-caches", default=True, show_default=True,
              help="Drop the page cache between steps (root only; a sync always).")
@registry_options
@pass_app
def bench(app: App, ref: str, platform: str | None, jobs: int | None, keep: bool,
          drop_caches: bool, plain_http: bool | None, insecure_skip_verify: bool | None,
          hosts_dir: str | None, authfile: str | None) -> None:
    """Measure fetch-only vs pull for REF in scratch stores: cold fetch, the first
    create's lazy unpack, cold pull, and the disk each keeps. Saves the measured unpack
    speed as the store's calibration."""
    apply_registry_options(app, plain_http=plain_http, insecure_skip_verify=insecure_skip_verify,
                           hosts_dir=hosts_dir, authfile=authfile)
    s = app.settings
    parsed = parse_reference(ref)
    plat = parse_platform(platform) if platform else None
    res = run_bench(app, parsed, plat, jobs or s.jobs, keep, drop_caches)
    cal: Calibration | None = None
    if res.unpacked_bytes > 0 and res.unpack_seconds > 0:
        try:
            cal = Calibration(
                unpack_throughput=res.unpack_throughput,
                per_image_overhead=res.overhead_seconds,
                source="bench",
                store=s.store,
                measured_at=now_iso(),
                sample_bytes=res.unpacked_bytes,
            )
        except CargoholdError as e:  # pragma: no cover - guarded above
            app.out.warn(f"not saving the calibration: {e.message}")
        else:
            save_calibration(s.root, cal)
    else:
        app.out.warn("the image unpacked nothing: calibration not saved")
    report(app.out, res, cal, str(calibration_path(s.root)))
