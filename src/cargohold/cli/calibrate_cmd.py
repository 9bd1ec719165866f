"""`cargohold calibrate`: measure this store's unpack throughput, without the network.

A deterministic synthetic image (cargohold's own builder: ``--size`` bytes of generated,
2-3x compressible content over up to four gzip layers, mixed file sizes: many small files,
some medium ones, a few large ones) is written into a scratch store of the configured kind
(:mod:`cargohold.cli.scratch`: a temp store under ``<root>/tmp/`` on the same file system, or
a scratch containerd namespace under a lease) and unpacked through that store's own
snapshotter and applier with the :class:`~cargohold.unpack.image.Unpacker`, as ``cargohold
unpack`` does; ``--runs`` times (snapshots removed in between), the median is taken.

* ``per_image_overhead`` = the median time of a first create of a tiny image (one small
  layer unpacked, plus the container's snapshot prepared on it): what a first start pays
  whatever the image's size;
* ``unpack_throughput`` = the sample's unpacked size (the snapshotter's usage of its layers,
  what the planner divides by the throughput) / (the sample's median unpack time - the tiny
  image's median unpack time), so that ``per_image_overhead + size / throughput`` (the
  planner's penalty) gives back the sample's time instead of counting the fixed cost twice.
  That fixed part is capped at half the sample's time (a sample too small to tell the two
  apart; a warning says so).

The result is saved as a :class:`~cargohold.measure.calibration.Calibration` (``source =
"calibrate"``) in ``<root>/calibration.json``, which the planner reads. The user's images,
content and snapshots are never touched; the reserve applies as for every unpack.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import click

from cargohold.bake.spec import parse_size
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import Output
from cargohold.cli.resources import reserve_bytes
from cargohold.cli.scratch import (
    Scratch,
    import_blobs,
    median,
    open_scratch,
    remove_all_snapshots,
    unpacked_bytes,
)
from cargohold.cli.unpacking import make_unpacker
from cargohold.errors import InvalidInputError, OutOfSpaceError
from cargohold.imagebuild.entries import Dir, Entry, File, Hardlink, Symlink
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_GC_ROOT
from cargohold.measure.calibration import Calibration, calibration_path, now_iso, save_calibration
from cargohold.units import format_rate, format_size
from cargohold.unpack.image import UnpackEvents

__all__ = ["CalibrateResult", "measure_unpack", "synthetic_image", "tiny_image"]

DEFAULT_SIZE = "64MB"
MIN_SIZE = 1_000_000
#: Layers of the synthetic image: one per 8 MiB, at most this many.
MAX_LAYERS = 4
_SEED = 0xCA11B

# ---------------------------------------------------------------- the synthetic image


def _sized_files(prefix: str, budget: int, seed: int, size_of: Any, per_dir: int
                 ) -> list[Entry]:
    """Files of ``size_of(i)`` bytes (the last one cut to fit) totalling ``budget``, in
    subdirectories of ``per_dir`` files."""
    out: list[Entry] = []
    left = budget
    i = 0
    while left > 0:
        if i % per_dir == 0:
            out.append(Dir(f"{prefix}/{i // per_dir:03d}"))
        n = min(int(size_of(i)), left)
        out.append(File(f"{prefix}/{i // per_dir:03d}/f{i:05d}", size=n, seed=seed + i))
        left -= n
        i += 1
    return out


def _layer_entries(size: int, layer: int) -> list[Entry]:
    """About ``size`` content bytes: 10 % small files (0.5-16 KiB), 30 % medium files
    (64 KiB-1 MiB), 60 % large files (4-8 MiB), plus a symlink and a hard link."""
    top = f"calibrate/layer{layer}"
    seed = _SEED * 1_000_003 + layer * 100_000
    small = size // 10
    medium = size * 3 // 10
    large = size - small - medium
    out: list[Entry] = [Dir("calibrate"), Dir(top)]
    for kind in ("small", "medium", "large"):
        out.append(Dir(f"{top}/{kind}"))
    out += _sized_files(f"{top}/small", small, seed,
                        lambda i: 512 + (i * 7919) % (16 * 1024 - 512), 200)
    out += _sized_files(f"{top}/medium", medium, seed + 30_000,
                        lambda i: (64 << 10) + (i * 104_729) % (960 << 10), 50)
    out += _sized_files(f"{top}/large", large, seed + 60_000,
                        lambda i: (4 << 20) + (i * 1_048_573) % (4 << 20), 50)
    first = next((e for e in out if isinstance(e, File)), None)
    if first is not None:
        out.append(Symlink(f"{top}/first", first.path.removeprefix(f"{top}/")))
        out.append(Hardlink(f"{top}/first.link", first.path))
    return out


def synthetic_image(size: int) -> ImageSpec:
    """The calibration sample: ``size`` bytes of generated file content (deterministic:
    the same size gives the same digests), gzip, one layer per 8 MiB (1 to 4)."""
    if size < 1:
        raise InvalidInputError("the calibration image needs a size > 0")
    n = max(1, min(MAX_LAYERS, size // (8 << 20)))
    per = [size // n + (1 if i < size % n else 0) for i in range(n)]
    layers = [
        LayerSpec(_layer_entries(b, i), compression="gzip", created_by=f"calibrate layer {i}")
        for i, b in enumerate(per)
    ]
    return ImageSpec(layers, name="cargohold/calibrate", cmd=["/bin/sh"])


def tiny_image() -> ImageSpec:
    """One small layer: its first create is (almost) all fixed cost."""
    return ImageSpec(
        [LayerSpec([Dir("etc"), File("etc/calibrate", b"cargohold calibrate\n"),
                    File("hello", size=4096, seed=_SEED)],
                   compression="gzip", created_by="calibrate tiny layer")],
        name="cargohold/calibrate-tiny",
        cmd=["/hello"],
    )


# ---------------------------------------------------------------- measuring


@dataclass
class CalibrateResult:
    #: Median-relevant samples: seconds per unpack of the sample, per first create of tiny.
    seconds: list[float] = field(default_factory=list)
    overhead_seconds: list[float] = field(default_factory=list)
    #: The unpack part of each tiny first create (the fixed cost inside ``seconds``).
    tiny_unpack_seconds: list[float] = field(default_factory=list)
    sample_bytes: int = 0
    tar_bytes: int = 0
    compressed_bytes: int = 0
    layers: int = 0
    snapshotter: str = ""

    @property
    def median_seconds(self) -> float:
        return median(self.seconds)

    @property
    def fixed_capped(self) -> bool:
        """Whether the tiny image's unpack took more than half the sample's (too small)."""
        return median(self.tiny_unpack_seconds) > self.median_seconds / 2

    @property
    def fixed_seconds(self) -> float:
        """The per-image fixed cost inside the sample's median unpack time."""
        return min(median(self.tiny_unpack_seconds), self.median_seconds / 2)

    @property
    def throughput(self) -> float:
        t = self.median_seconds - self.fixed_seconds
        return self.sample_bytes / t if t > 0 else 0.0

    @property
    def overhead(self) -> float:
        return median(self.overhead_seconds)


def _check_space(app: App, scratch: Scratch, size: int) -> None:
    """Refuse a sample that would cross the reserve: building it and storing its blobs
    need about ``size`` each on the scratch file system (an upper bound: compressed is
    smaller), and on the embedded store unpacking it another ``size``."""
    reserve = reserve_bytes(app.settings)
    st = os.statvfs(scratch.dir)
    free = st.f_bavail * st.f_frsize
    need = size * (3 if scratch.kind == "embedded" else 1)
    if free - need < reserve:
        raise OutOfSpaceError(
            f"a {format_size(size)} calibration needs about {format_size(need)} on "
            f"{scratch.dir} ({format_size(free)} free), which would leave less than the "
            f"reserve of {reserve} bytes",
            hint="use a smaller --size, free disk space or lower the reserve",
        )


def measure_unpack(app: App, scratch: Scratch, size: int, runs: int,
                   jobs: int | None = None) -> CalibrateResult:
    """Build the synthetic image and the tiny one into ``scratch`` and time ``runs``
    unpacks of each (snapshots removed before every run)."""
    out = app.out
    _check_space(app, scratch, size)
    store = scratch.store
    t0 = time.monotonic()
    sample = synthetic_image(size).build(scratch.workdir / "sample")
    tiny = tiny_image().build(scratch.workdir / "tiny")
    import_blobs(store.content, sample)
    import_blobs(store.content, tiny)
    res = CalibrateResult(
        compressed_bytes=sum(d.size for d in sample.layer_descriptors),
        layers=len(sample.layer_descriptors),
        snapshotter=store.snapshots.name,
    )
    layers = f"{res.layers} layer" + ("s" if res.layers > 1 else "")
    out.info(f"built a {format_size(size)} sample ({layers}, "
             f"{format_size(res.compressed_bytes)} gzip) in {time.monotonic() - t0:.1f} s; "
             f"unpacking into {scratch.where}")
    sn = store.snapshots
    with make_unpacker(app, store, jobs=jobs, events=UnpackEvents()) as unpacker:
        for run in range(runs):
            remove_all_snapshots(sn)
            t0 = time.monotonic()
            r = unpacker.unpack(sample.root)
            seconds = time.monotonic() - t0
            if run == 0:
                res.sample_bytes = unpacked_bytes(sn, r)
                res.tar_bytes = r.bytes_uncompressed
            res.seconds.append(seconds)
            t0 = time.monotonic()
            rt = unpacker.unpack(tiny.root)
            res.tiny_unpack_seconds.append(time.monotonic() - t0)
            sn.prepare(f"calibrate-container-{run}", rt.chain_id,
                       labels={LABEL_GC_ROOT: now_iso()})
            res.overhead_seconds.append(time.monotonic() - t0)
            out.info(f"run {run + 1}/{runs}: {format_size(res.sample_bytes)} in {seconds:.2f} s; "
                     f"tiny first create {res.overhead_seconds[-1]:.3f} s")
        remove_all_snapshots(sn)
    return res


def calibration_line(res: CalibrateResult) -> str:
    runs = len(res.seconds)
    how = f"median of {runs}" if runs > 1 else "1 run"
    fixed = (f"; {res.fixed_seconds:.2f} s of it per-image overhead"
             if res.fixed_seconds >= 0.01 else "")
    return (f"unpack throughput: {format_rate(res.throughput)} "
            f"({format_size(res.sample_bytes)} in {res.median_seconds:.2f} s, {how}{fixed})")


def report(out: Output, res: CalibrateResult, cal: Calibration, path: str) -> None:
    if out.json_mode:
        out.json({
            "event": "calibration",
            **cal.to_json(),
            "path": path,
            "runs": len(res.seconds),
            "seconds": [round(s, 4) for s in res.seconds],
            "median_seconds": round(res.median_seconds, 4),
            "overhead_seconds": [round(s, 4) for s in res.overhead_seconds],
            "tiny_unpack_seconds": [round(s, 4) for s in res.tiny_unpack_seconds],
            "fixed_seconds": round(res.fixed_seconds, 4),
            "tar_bytes": res.tar_bytes,
            "compressed_bytes": res.compressed_bytes,
            "layers": res.layers,
            "snapshotter": res.snapshotter,
        })
        return
    out.data(calibration_line(res))
    out.data(f"per-image overhead: {res.overhead:.3f} s (first create of a one-layer image, "
             f"median of {len(res.overhead_seconds)})")
    out.info(f"saved to {path} ({cal.store} store, {res.snapshotter} snapshotter)")


@cli.command()
@click.option("--size", default=DEFAULT_SIZE, show_default=True,
              help="Unpacked size of the synthetic image (e.g. 64MB, 256MiB).")
@click.option("--runs", type=click.IntRange(1, 50), default=2, show_default=True,
              help="Unpacks to time; the median counts.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Layers applied at once (overlay) [default: 4].")
@pass_app
def calibrate(app: App, size: str, runs: int, jobs: int | None) -> None:
    """Measure this store's unpack throughput (no network) and save it for the planner.

    Unpacks a synthetic image in a scratch store (a temp root under <root>/tmp, or a scratch
    containerd namespace), removed afterwards; saves <root>/calibration.json."""
    nbytes = parse_size(size)
    if nbytes < MIN_SIZE:
        raise InvalidInputError(f"--size {size}: at least {format_size(MIN_SIZE)}, please")
    s = app.settings
    with open_scratch(s, "calibrate", warn=app.out.warn) as scratch:
        res = measure_unpack(app, scratch, nbytes, runs, jobs)
    if res.throughput <= 0:  # pragma: no cover - a clock that does not move
        raise InvalidInputError("the unpack took no measurable time; use a larger --size")
    if res.fixed_capped:
        app.out.warn("the sample unpacked in less than twice the time of a tiny image: "
                     "the throughput is rough; use a larger --size")
    cal = Calibration(
        unpack_throughput=res.throughput,
        per_image_overhead=res.overhead,
        source="calibrate",
        store=s.store,
        measured_at=now_iso(),
        sample_bytes=res.sample_bytes,
    )
    save_calibration(s.root, cal)
    report(app.out, res, cal, str(calibration_path(s.root)))
