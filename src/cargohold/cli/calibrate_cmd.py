"""`cargohold calibrate`: measure this store's unpack throughput, without the network.

A deterministic synthetic image (cargohold's own builder: ``--size`` bytes of generated,
2-3x compressible content over up to four gzip layers, mixed file sizes: many small files,
some medium ones, a few large ones) is written into a scratch store of the configured kind
(:mod:`cargohold.measure.scratch`: a temp store under ``<root>/tmp/`` on the same file system, or
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

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import Output
from cargohold.errors import InvalidInputError
from cargohold.measure.calibration import Calibration, calibration_path, now_iso, save_calibration
from cargohold.measure.scratch import open_scratch
from cargohold.measure.unpack_speed import CalibrateResult, measure_unpack
from cargohold.units import format_rate, format_size, parse_size

DEFAULT_SIZE = "64MB"
MIN_SIZE = 1_000_000
MB = 1e6


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
        res = measure_unpack(scratch, s, nbytes, runs, jobs, info=app.out.info)
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
