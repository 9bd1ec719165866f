"""Measuring a store's unpack throughput without the network (what ``cargohold calibrate``
runs; the command saves and prints the result).

A deterministic synthetic image (cargohold's own builder: ``size`` bytes of generated,
2-3x compressible content over up to four gzip layers, mixed file sizes: many small files,
some medium ones, a few large ones) is written into a scratch store
(:mod:`cargohold.measure.scratch`) and unpacked through that store's own snapshotter and
applier with the :class:`~cargohold.unpack.image.Unpacker`, as ``cargohold unpack`` does;
``runs`` times (snapshots removed in between), the median is taken. A tiny one-layer image
is unpacked (and a container snapshot prepared on it) in every run too: the per-image fixed
cost (see ``cargohold calibrate``'s module docstring for how the two combine).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import InvalidInputError, OutOfSpaceError
from cargohold.imagebuild.entries import Dir, Entry, File, Hardlink, Symlink
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_GC_ROOT
from cargohold.measure.calibration import now_iso
from cargohold.measure.scratch import (
    Scratch,
    import_blobs,
    median,
    remove_all_snapshots,
    unpacked_bytes,
)
from cargohold.pull.pipeline import store_unpacker
from cargohold.settings import Settings
from cargohold.store.open import reserve_bytes
from cargohold.unpack.image import UnpackEvents

__all__ = [
    "CalibrateResult",
    "check_space",
    "measure_unpack",
    "synthetic_image",
    "tiny_image",
]

#: Layers of the synthetic image: one per 8 MiB, at most this many.
MAX_LAYERS = 4
_SEED = 0xCA11B
MB = 1e6
MB = 1e6

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

#: Where :func:`measure_unpack` reports each step (a line of text).
Info = Callable[[str], None]


def _quiet(line: str) -> None:
    return None


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


def check_space(scratch: Scratch, size: int, reserve: int) -> None:
    """Refuse a sample that would cross the reserve: building it and storing its blobs
    need about ``size`` each on the scratch file system (an upper bound: compressed is
    smaller), and on the embedded store unpacking it another ``size``."""
    st = os.statvfs(scratch.dir)
    free = st.f_bavail * st.f_frsize
    need = size * (3 if scratch.kind == "embedded" else 1)
    if free - need < reserve:
        raise OutOfSpaceError(
            f"a {size / MB:.0f} MB calibration needs about {need / MB:.0f} MB on "
            f"{scratch.dir} ({free / MB:.0f} MB free), which would leave less than the "
            f"reserve of {reserve} bytes",
            hint="use a smaller --size, free disk space or lower the reserve",
        )


def measure_unpack(scratch: Scratch, settings: Settings, size: int, runs: int,
                   jobs: int | None = None, info: Info = _quiet) -> CalibrateResult:
    """Build the synthetic image and the tiny one into ``scratch`` and time ``runs``
    unpacks of each (snapshots removed before every run); ``info`` gets a line per step.
    The settings give the reserve and the default jobs."""
    check_space(scratch, size, reserve_bytes(settings))
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
    info(f"built a {size / MB:.0f} MB sample ({layers}, "
             f"{res.compressed_bytes / MB:.1f} MB gzip) in {time.monotonic() - t0:.1f} s; "
             f"unpacking into {scratch.where}")
    sn = store.snapshots
    with store_unpacker(store, settings, jobs=jobs, events=UnpackEvents()) as unpacker:
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
            info(f"run {run + 1}/{runs}: {res.sample_bytes / MB:.1f} MB in {seconds:.2f} s; "
                     f"tiny first create {res.overhead_seconds[-1]:.3f} s")
        remove_all_snapshots(sn)
    return res
