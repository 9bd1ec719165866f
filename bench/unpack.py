"""Bench: cargohold's unpack (lazy `create` after `fetch`, and `pull`) against containerd's.

Run from the repository root, as root (containerd needs it)::

    .venv/bin/python -m bench.unpack            # or: .venv/bin/python bench/unpack.py
    .venv/bin/python -m bench.unpack --runs 3 --big-mb 300 --small-files 30000 --json

Setup (not timed), reusing bench/fetch.py: the same loopback ``docker-registry`` and the
same big image (two layers of real files of this machine, ``--big-mb`` MB of content),
plus a "small files" image of ``--small-files`` generated files (100-8,000 bytes, 100 per
directory; 0 leaves it out), pushed with cargohold's push code.

Measured per image, cold (fresh ``--root`` / containerd started on a fresh root each time),
alternating which client goes first from run to run (``--runs``, default 2), after
``--warmup`` (default 1) untimed rounds of the big image's create scenario (the first
unpacks after setup are slower for whoever goes first):

* **create after fetch** (the seed's penalty): ``cargohold --root R fetch --plain-http REF``
  (not timed), then timed ``cargohold --root R --json create REF c1`` (its
  ``unpack_seconds`` is the figure the plain output prints as
  ``unpacked N layers in X s (lazy)``); against ``ctr content fetch --plain-http REF``
  (not timed) then timed ``ctr containers create REF c1`` (containerd unpacks on demand);
* **pull**: ``cargohold --root R --json pull --plain-http REF`` against
  ``ctr images pull --plain-http REF``;
* **first unpack into containerd** (the node's case): on a fresh private containerd,
  ``ctr content fetch --plain-http REF`` (not timed) then timed ``cargohold --store
  containerd --address SOCK --namespace NS --json unpack REF`` (cargohold's own applier
  writing into the snapshots containerd's overlayfs snapshotter prepares), against the
  ``ctr containers create`` samples above (containerd's lazy unpack of the same state);
* **pull into containerd**: ``cargohold --store containerd --address SOCK --namespace NS
  --json pull --plain-http REF`` on a fresh private containerd, against the same ``ctr
  images pull`` samples (``--no-containerd-store`` leaves both containerd-store clients
  out; skipped with a note if the CLI refuses). ``CARGOHOLD_CONTAINERD_DIRECT=0`` in the
  environment measures containerd's diff service applying the layers instead.

Everything (registry, cargohold roots, containerd roots) lives on a fresh ext4 made on a
loop device in ``--tmp`` (see :class:`FreshFs`; ``--no-fresh-fs`` works in ``--tmp``
itself). Dirty pages are flushed (``sync``) before every timed command, so no client pays for
writing back what setup or the untimed fetch wrote; the page cache is kept (the registry's
and the fetched blobs stay cached for everyone).

Per sample: wall (spawn to reap), client user+sys CPU and peak RSS (``wait4``, via
bench.common's Spawner), containerd's CPU delta over the ctr call, and cargohold's own
unpack seconds and per-phase stats (``phases`` of its JSON output: waiting for inflated
input, sha256 in the read-ahead thread, tar parsing + file system calls, syncfs). As a
reference for the decompress share, setup also times inflating each image's layer blobs
alone in the bench process (one thread, blobs in the page cache). Each sample checks that
the unpacked tree holds at least the image's file content bytes.

stdout: markdown tables and ratio lines, the last one being
``ratio cargohold/containerd (big, first create after fetch, wall, median): X.XX``;
``--json`` prints one JSON document instead. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/unpack.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    MIB,
    Measured,
    Scratch,
    log,
    markdown_table,
    median,
    proc_cpu_seconds,
    proc_peak_rss,
    repo_root_on_path,
    tree_size,
)
from bench.fetch import (
    Bench,
    ImageSet,
    _check_prerequisites,
    big_image_spec,
    push_all,
)

repo_root_on_path()

from cargohold.devtools.registry import LocalRegistry, start_registry  # noqa: E402
from cargohold.imagebuild import BuiltImage, Dir, Entry, File, ImageSpec, LayerSpec  # noqa: E402
from cargohold.imagebuild.image import blob_path  # noqa: E402
from cargohold.unpack.decompress import CHUNK, open_decompressed  # noqa: E402

CH_CREATE = "cargohold create (after fetch)"
CTR_CREATE = "ctr containers create (after content fetch)"
CH_PULL = "cargohold pull"
CTR_PULL = "ctr images pull"
CH_CTRD_PULL = "cargohold --store containerd pull"
CH_CTRD_UNPACK = "cargohold --store containerd unpack (after ctr content fetch)"
SNAPSHOTS_DIR = Path("root") / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"


# --------------------------------------------------------------------------- images


def small_files_spec(count: int) -> tuple[ImageSpec, int]:
    """One layer of ``count`` generated files of 100-8,000 bytes, 100 per directory."""
    entries: list[Entry] = [Dir("data")]
    total = 0
    for i in range(count):
        if i % 100 == 0:
            entries.append(Dir(f"data/d{i // 100:04d}"))
        size = 100 + (i * 2654435761) % 7900
        entries.append(File(f"data/d{i // 100:04d}/f{i:06d}", size=size, seed=i))
        total += size
    layer = LayerSpec(entries, created_by=f"bench: {count} small files")
    return ImageSpec([layer], name="bench/smallfiles", cmd=["/bin/sh"]), total


@dataclass
class InflateRef:
    """Inflating an image's layer blobs alone, one after the other, in this process."""

    tar_bytes: int = 0
    inflate_seconds: float = 0.0  # decompression only
    inflate_sha256_seconds: float = 0.0  # decompression + sha256 of the tar stream


def inflate_reference(img: BuiltImage) -> InflateRef:
    """Time decompressing (and, in a second pass, decompressing + hashing) the layers of a
    built image, single-threaded, with cargohold's decompressors (ISA-L gzip, zstandard)."""
    ref = InflateRef()
    for hashing in (False, True):
        for layer in img.layer_descriptors:
            with open(blob_path(img.workdir, layer.digest), "rb") as f:
                t0 = time.perf_counter()
                h = hashlib.sha256()
                n = 0
                with open_decompressed(f, layer.media_type) as stream:
                    while chunk := stream.read(CHUNK):
                        n += len(chunk)
                        if hashing:
                            h.update(chunk)
                dt = time.perf_counter() - t0
            if hashing:
                ref.inflate_sha256_seconds += dt
            else:
                ref.inflate_seconds += dt
                ref.tar_bytes += n
    return ref


def io_pressure() -> float | None:
    """The share of the last 10 s some task stalled on I/O (``/proc/pressure/io``, %)."""
    try:
        with open("/proc/pressure/io") as f:
            first = f.readline().split()
    except OSError:
        return None
    fields = dict(kv.split("=", 1) for kv in first[1:] if "=" in kv)
    return float(fields["avg10"]) if "avg10" in fields else None


class FreshFs:
    """A new ext4 file system on a loop device (a sparse image file in a temp dir), mounted
    for the bench's scratch space.

    Why: on a shared ext4 that recently saw many files deleted (earlier benches' clean-up,
    other users' test trees), creating files is slow and erratic: ext4's inode allocator
    checks the inode table for recently deleted inodes (``recently_deleted`` in ``perf``)
    and that sys time came and went between runs, 1x-4x for both clients. A node unpacking
    at first start has a fresh disk, so a fresh file system is also the realistic case.
    Unmounting and deleting one image file at the end also leaves no deleted trees behind.
    """

    def __init__(self, parent: str | None, size_gb: int) -> None:
        self.holder = Path(tempfile.mkdtemp(prefix="cargohold-bench-unpack-fs-", dir=parent))
        self.image = self.holder / "fs.img"
        self.mnt = self.holder / "mnt"
        self.mounted = False
        try:
            self.mnt.mkdir()
            with open(self.image, "wb") as f:
                f.truncate(size_gb << 30)
            # Inode tables and journal initialised now, not by a background thread later.
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E",
                            "lazy_itable_init=0,lazy_journal_init=0", str(self.image)],
                           check=True, capture_output=True, text=True)  # fmt: skip
            subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)],
                           check=True, capture_output=True, text=True)  # fmt: skip
            self.mounted = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if self.mounted:
            res = subprocess.run(["umount", str(self.mnt)], capture_output=True, text=True)
            if res.returncode != 0:
                log(f"umount {self.mnt}: {res.stderr.strip()}; unmounting lazily")
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
            self.mounted = False
        shutil.rmtree(self.holder, ignore_errors=True)


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    image: str
    scenario: str  # "create" or "pull"
    client: str
    run: int
    wall: float
    cpu: float  # user + sys of the client
    peak_rss: int
    cpu_sys: float = 0.0  # the sys part of cpu
    daemon_cpu: float | None = None
    daemon_peak_rss: int | None = None  # VmHWM of the fresh containerd (its whole life)
    reported_seconds: float | None = None  # cargohold's unpack_seconds (create) / seconds
    phases: dict[str, float] = field(default_factory=dict)
    unpacked_bytes: int = 0
    problems: list[str] = field(default_factory=list)


#: cargohold's JSON ``phases`` (summed over layers) -> column names of the phase table.
PHASES = {
    "seconds_read": "read wait",  # waiting for inflated input (inflate not hidden)
    "seconds_decompress": "decompress",  # read + inflate in the read-ahead thread, overlapped
    "seconds_hash": "sha256",  # in the read-ahead thread, overlapped with the writes
    "seconds_write": "write",  # tar parsing + file system calls on the writing thread
    "seconds_sync": "sync",  # syncfs at the end of a layer (off by default)
}
#: The phases of the writing thread: they add up to the apply time of a layer.
SERIAL = ("seconds_read", "seconds_write", "seconds_sync")
#: Extra per-sample figures shown in the phase table.
APPLY_SUM = "apply, sum over layers"
UNPACK_WALL = "unpack wall"
FETCH_PART = "fetch part (pull)"


def _phases(unpack: dict[str, Any]) -> dict[str, float]:
    """The phase columns of one cargohold ``unpack`` JSON object (empty phases, as with
    containerd's diff service doing the work, are left out)."""
    raw = {k: float(v) for k, v in unpack.get("phases", {}).items()}
    out: dict[str, float] = {}
    if any(raw.values()):
        out = {PHASES.get(k, k): v for k, v in raw.items()}
        out[APPLY_SUM] = sum(raw.get(k, 0.0) for k in SERIAL)
    out[UNPACK_WALL] = float(unpack["seconds"])
    return out


class UnpackBench(Bench):
    """bench.fetch's Bench (spawner, private containerds, scratch) with unpack clients."""

    def _must(self, m: Measured, what: str) -> Measured:
        if m.returncode != 0:
            raise RuntimeError(
                f"{what} exited {m.returncode}:\n{m.stdout[-2000:]}{m.stderr[-4000:]}"
            )
        return m

    def _check_tree(self, s: Sample, path: Path, expected: int) -> None:
        s.unpacked_bytes = tree_size(path)
        # Layers of the bench images share no paths, so the snapshots hold the content once.
        if s.unpacked_bytes < expected:
            s.problems.append(f"{path} holds {s.unpacked_bytes} bytes, expected >= {expected}")

    @staticmethod
    def _settle() -> None:
        """Flush dirty pages before a timed command, so that it does not pay for writing
        back what setup or the untimed fetch wrote (as on a node, where the fetched blobs
        were written long before the first start). Nothing is dropped from the page cache."""
        os.sync()

    @staticmethod
    def _check_unpack(s: Sample, unpack: dict[str, Any]) -> None:
        n, total = int(unpack["chains_unpacked"]), int(unpack["chains_total"])
        if n != total:
            s.problems.append(f"unpacked {n} of {total} layers (expected all: cold store)")

    def run_cargohold(self, image: str, images: ImageSet, run: int, *, pull: bool) -> Sample:
        root = self.scratch.path("cargohold-root")
        ref = images.refs[0]
        base = [*self.cargohold, "--root", str(root), "--no-progress"]
        if pull:
            self._settle()
            m = self._must(self.spawner.run([*base, "--json", "pull", "--plain-http", ref]),
                           "cargohold pull")  # fmt: skip
            doc = json.loads(m.stdout.strip().splitlines()[-1])
            unpack = doc["images"][0]["unpack"][0]
            s = Sample(image, "pull", CH_PULL, run, m.wall, m.cpu, m.maxrss, m.sys,
                       reported_seconds=float(doc["seconds"]))  # fmt: skip
        else:
            self._must(self.spawner.run([*base, "fetch", "--plain-http", ref]), "cargohold fetch")
            self._settle()
            m = self._must(self.spawner.run([*base, "--json", "create", ref, "c1"]),
                           "cargohold create")  # fmt: skip
            doc = json.loads(m.stdout.strip().splitlines()[-1])
            unpack = doc["unpack"]
            s = Sample(image, "create", CH_CREATE, run, m.wall, m.cpu, m.maxrss, m.sys,
                       reported_seconds=float(doc["unpack_seconds"]))  # fmt: skip
            if not doc.get("lazy"):
                s.problems.append("cargohold create did not unpack (lazy: false)")
        s.phases = _phases(unpack)
        if pull:
            s.phases[FETCH_PART] = float(doc["seconds"]) - float(unpack["seconds"])
        self._check_unpack(s, unpack)
        self._check_tree(s, root / "snapshots", images.uncompressed)
        self.scratch.trash(root)
        return s

    def run_containerd(self, image: str, images: ImageSet, run: int, *, pull: bool) -> Sample:
        ctrd = self._containerd()
        ref = images.refs[0]
        try:
            ctr = [ctrd.ctr_binary, "--address", ctrd.address, "-n", f"bench-{run}"]
            if not pull:
                self._must(self.spawner.run([*ctr, "content", "fetch", "--plain-http", ref]),
                           "ctr content fetch")  # fmt: skip
            pid = ctrd.proc.pid
            self._settle()
            cpu0 = proc_cpu_seconds(pid)
            if pull:
                m = self._must(self.spawner.run([*ctr, "images", "pull", "--plain-http", ref]),
                               "ctr images pull")  # fmt: skip
            else:
                m = self._must(self.spawner.run([*ctr, "containers", "create", ref, "c1"]),
                               "ctr containers create")  # fmt: skip
            s = Sample(image, "pull" if pull else "create", CTR_PULL if pull else CTR_CREATE,
                       run, m.wall, m.cpu, m.maxrss, m.sys,
                       daemon_cpu=proc_cpu_seconds(pid) - cpu0,
                       daemon_peak_rss=proc_peak_rss(pid))  # fmt: skip
            self._check_tree(s, ctrd.base / SNAPSHOTS_DIR, images.uncompressed)
        finally:
            self._drop_containerd(ctrd)
        return s

    def run_cargohold_containerd_unpack(self, image: str, images: ImageSet, run: int) -> Sample:
        """``ctr content fetch`` (not timed), then ``cargohold --store containerd unpack``:
        the first unpack of a fetched-only image on a node, by cargohold."""
        ctrd = self._containerd()
        ref = images.refs[0]
        ns = f"bench-{run}"
        try:
            ctr = [ctrd.ctr_binary, "--address", ctrd.address, "-n", ns]
            self._must(self.spawner.run([*ctr, "content", "fetch", "--plain-http", ref]),
                       "ctr content fetch")  # fmt: skip
            pid = ctrd.proc.pid
            self._settle()
            cpu0 = proc_cpu_seconds(pid)
            m = self._must(self.spawner.run(
                [*self.cargohold, "--store", "containerd", "--address", ctrd.address,
                 "--namespace", ns, "--no-progress", "--json", "unpack", ref]
            ), "cargohold --store containerd unpack")  # fmt: skip
            unpack = json.loads(m.stdout.strip().splitlines()[-1])
            s = Sample(image, "create", CH_CTRD_UNPACK, run, m.wall, m.cpu, m.maxrss, m.sys,
                       daemon_cpu=proc_cpu_seconds(pid) - cpu0,
                       daemon_peak_rss=proc_peak_rss(pid),
                       reported_seconds=float(unpack["seconds"]))  # fmt: skip
            s.phases = _phases(unpack)
            self._check_unpack(s, unpack)
            self._check_tree(s, ctrd.base / SNAPSHOTS_DIR, images.uncompressed)
        finally:
            self._drop_containerd(ctrd)
        return s

    def run_cargohold_containerd(self, image: str, images: ImageSet, run: int) -> Sample:
        """``cargohold --store containerd pull`` into a fresh private containerd."""
        ctrd = self._containerd()
        ref = images.refs[0]
        try:
            pid = ctrd.proc.pid
            self._settle()
            cpu0 = proc_cpu_seconds(pid)
            m = self._must(self.spawner.run(
                [*self.cargohold, "--store", "containerd", "--address", ctrd.address,
                 "--namespace", f"bench-{run}", "--no-progress", "--json",
                 "pull", "--plain-http", ref]
            ), "cargohold --store containerd pull")  # fmt: skip
            doc = json.loads(m.stdout.strip().splitlines()[-1])
            unpack = doc["images"][0]["unpack"][0]
            s = Sample(image, "pull", CH_CTRD_PULL, run, m.wall, m.cpu, m.maxrss, m.sys,
                       daemon_cpu=proc_cpu_seconds(pid) - cpu0,
                       daemon_peak_rss=proc_peak_rss(pid),
                       reported_seconds=float(doc["seconds"]))  # fmt: skip
            s.phases = _phases(unpack)
            s.phases[FETCH_PART] = float(doc["seconds"]) - float(unpack["seconds"])
            self._check_unpack(s, unpack)
            self._check_tree(s, ctrd.base / SNAPSHOTS_DIR, images.uncompressed)
        finally:
            self._drop_containerd(ctrd)
        return s


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    image: str
    scenario: str
    client: str
    wall: float
    reported: float | None
    cpu: float
    daemon_cpu: float | None
    peak_rss: int
    daemon_peak_rss: int | None
    mbps: float
    walls: list[float]
    phases: dict[str, float]

    @property
    def total_cpu(self) -> float:
        return self.cpu + (self.daemon_cpu or 0.0)


def summarise(samples: list[Sample], content: dict[str, int]) -> list[Row]:
    rows: list[Row] = []
    keys = list(dict.fromkeys((s.image, s.scenario, s.client) for s in samples))
    for image, scenario, client in keys:
        ss = [s for s in samples if (s.image, s.scenario, s.client) == (image, scenario, client)]
        wall = median(s.wall for s in ss)
        reps = [s.reported_seconds for s in ss if s.reported_seconds is not None]
        dcpu = [s.daemon_cpu for s in ss if s.daemon_cpu is not None]
        drss = [s.daemon_peak_rss for s in ss if s.daemon_peak_rss is not None]
        phase_keys = list(dict.fromkeys(k for s in ss for k in s.phases))
        rows.append(Row(
            image, scenario, client, wall,
            median(reps) if reps else None,
            median(s.cpu for s in ss),
            median(dcpu) if dcpu else None,
            max(s.peak_rss for s in ss),
            max(drss) if drss else None,
            content[image] / MB / wall if wall > 0 else 0.0,
            [s.wall for s in ss],
            {k: median(s.phases[k] for s in ss if k in s.phases) for k in phase_keys},
        ))  # fmt: skip
    return rows


#: ratio key -> (cargohold client, containerd client).
PAIRS = {
    "create": (CH_CREATE, CTR_CREATE),
    "ctrd_create": (CH_CTRD_UNPACK, CTR_CREATE),
    "pull": (CH_PULL, CTR_PULL),
    "ctrd_pull": (CH_CTRD_PULL, CTR_PULL),
}


def ratios(rows: list[Row]) -> dict[str, float]:
    """``<image>_<pair>_wall`` and ``<image>_<pair>_cpu`` (CPU: client + containerd)."""
    by = {(r.image, r.client): r for r in rows}
    out: dict[str, float] = {}
    for image in dict.fromkeys(r.image for r in rows):
        for key, (ch, ct) in PAIRS.items():
            a, b = by.get((image, ch)), by.get((image, ct))
            if a and b and b.wall > 0:
                out[f"{image}_{key}_wall"] = a.wall / b.wall
            if a and b and b.total_cpu > 0:
                out[f"{image}_{key}_cpu"] = a.total_cpu / b.total_cpu
    return out


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f}"


PHASE_COLUMNS = [UNPACK_WALL, APPLY_SUM, *PHASES.values(), FETCH_PART]


def print_report(rows: list[Row], rat: dict[str, float], samples: list[Sample],
                 info: dict[str, Any]) -> None:  # fmt: skip
    for name, im in info["images"].items():
        inf = info["inflate"][name]
        print(f"{name} image: {im['layers']} layer(s), {im['uncompressed'] / MB:.0f} MB file "
              f"content, {im['compressed'] / MB:.0f} MB compressed ({im['blobs']} blobs); "
              f"inflating its layers alone (1 thread): {inf['inflate_seconds']:.2f} s, "
              f"+ sha256: {inf['inflate_sha256_seconds']:.2f} s "
              f"({inf['tar_bytes'] / MB:.0f} MB of tar)")  # fmt: skip
    print(f"runs: {info['runs']} (client order alternates) after {info['warmup']} warm-up "
          f"round(s), medians; setup {info['setup_seconds']:.0f} s (build "
          f"{info['build_seconds']:.0f} s, push {info['push_seconds']:.0f} s, warm-up incl.); "
          f"--store containerd: {info['containerd_store']}")  # fmt: skip
    print(f"scratch space (roots, containerds, registry): {info['file_system']}")
    print(f"{os.cpu_count()} CPUs; at the start of each run: 1-minute load average "
          + " / ".join(f"{x:.2f}" for x in info["load_averages"])
          + ", I/O pressure (some, avg10) "
          + " / ".join(f"{_f(x, '.0f')} %" for x in info["io_pressure"]) + "\n")  # fmt: skip
    headers = ["image", "scenario", "client", "wall s", "content MB/s", "client CPU s",
               "containerd CPU s", "client + containerd CPU s", "client peak RSS MiB",
               "containerd peak RSS MiB", "wall per run s"]  # fmt: skip
    print(markdown_table(headers, [
        (r.image, r.scenario, r.client, f"{r.wall:.2f}", f"{r.mbps:.0f}", f"{r.cpu:.2f}",
         _f(r.daemon_cpu), f"{r.total_cpu:.2f}", _mib(r.peak_rss), _mib(r.daemon_peak_rss),
         " / ".join(f"{w:.2f}" for w in r.walls))
        for r in rows
    ], align="lll" + "r" * (len(headers) - 3)))  # fmt: skip
    ph = [r for r in rows if r.phases]
    if ph:
        keys = [k for k in PHASE_COLUMNS if any(k in r.phases for r in ph)]
        print("\ncargohold's unpack phases (its JSON output; seconds, median; phases summed "
              "over layers, which run in parallel):\n")  # fmt: skip
        print(markdown_table(["image", "client", *keys],
                             [(r.image, r.client, *(_f(r.phases.get(k)) for k in keys))
                              for r in ph], align="ll" + "r" * len(keys)))  # fmt: skip
    print()
    for s in samples:
        for p in s.problems:
            print(f"PROBLEM run {s.run + 1} {s.image} {s.client}: {p}")
    ch_rss = max((s.peak_rss for s in samples if s.client.startswith("cargohold")), default=0)
    print(f"cargohold peak RSS (max over all runs): {ch_rss / MIB:.0f} MiB "
          f"(goal <= 200 MB: {'ok' if ch_rss <= 200 * MB else 'MISSED'})")  # fmt: skip
    labels = {
        "pull_wall": "pull, wall",
        "pull_cpu": "pull, CPU incl. containerd",
        "ctrd_pull_wall": "--store containerd pull vs ctr images pull, wall",
        "ctrd_pull_cpu": "--store containerd pull vs ctr images pull, CPU incl. containerd",
        "ctrd_create_wall": "--store containerd unpack vs containerd's lazy unpack (first "
                            "create after ctr content fetch), wall",
        "ctrd_create_cpu": "--store containerd unpack vs containerd's lazy unpack, CPU incl. "
                           "containerd",
        "create_cpu": "first create after fetch, CPU incl. containerd",
        "create_wall": "first create after fetch, wall",
    }
    for image in info["images"]:
        for key, label in labels.items():
            if image == "big" and key == "create_wall":
                continue  # the last line
            if f"{image}_{key}" in rat:
                print(f"ratio cargohold/containerd ({image}, {label}, median): "
                      f"{rat[f'{image}_{key}']:.2f}")  # fmt: skip
    print(f"total runtime: {info['total_seconds']:.0f} s")
    for image in info["images"]:
        r = rat.get(f"{image}_ctrd_create_wall")
        if r is not None:
            print(f"goal ({image}, --store containerd unpack / containerd's lazy unpack, wall) "
                  f"<= 0.5: {r:.2f} {'ok' if r <= 0.5 else 'MISSED'}")
    r = rat.get("big_create_wall")
    print(
        "ratio cargohold/containerd (big, first create after fetch, wall, median): "
        + ("n/a" if r is None else f"{r:.2f} (goal <= 0.5: {'ok' if r <= 0.5 else 'MISSED'})")
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=2, help="runs per client and scenario [2]")
    p.add_argument("--big-mb", type=int, default=300,
                   help="uncompressed content of the big image, MB [300]")  # fmt: skip
    p.add_argument("--small-files", type=int, default=30_000,
                   help="files in the small-files image, 0 for none [30000]")  # fmt: skip
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds of the big image's create scenario first [1]")  # fmt: skip
    p.add_argument("--tmp", default=None, help="parent of the scratch dir [$TMPDIR or /tmp]")
    p.add_argument("--no-fresh-fs", action="store_true",
                   help="work in --tmp itself, not on a fresh loop-mounted ext4 in it")  # fmt: skip
    p.add_argument("--fresh-fs-gb", type=int, default=None,
                   help="size of the fresh file system (a sparse file), GiB "
                        "[8 + 4 per run: every sample's tree is kept until the end]")  # fmt: skip
    p.add_argument("--no-containerd-store", action="store_true",
                   help="do not measure `cargohold --store containerd pull`")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.fresh_fs_gb is None:
        args.fresh_fs_gb = 8 + 4 * max(args.runs, 1)
    if args.fresh_fs_gb < 1:
        p.error("--fresh-fs-gb must be positive")
    if args.runs < 1 or args.big_mb < 1 or args.small_files < 0 or args.warmup < 0:
        p.error("--runs and --big-mb must be positive, --small-files and --warmup not negative")
    return args


Runner = Callable[[str, ImageSet, int], Sample]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    _check_prerequisites()
    fresh: FreshFs | None = None
    fs_note = "--tmp's file system (--no-fresh-fs)"
    if not args.no_fresh_fs:
        try:
            fresh = FreshFs(args.tmp, args.fresh_fs_gb)
            fs_note = f"a fresh {args.fresh_fs_gb} GiB ext4 on a loop device"
        except (OSError, subprocess.CalledProcessError) as e:
            err = getattr(e, "stderr", None) or str(e)
            fs_note = f"--tmp's file system (no fresh file system: {str(err).strip()})"
            log(f"note: {fs_note}")
    try:
        scratch = Scratch(prefix="cargohold-bench-unpack-",
                          parent=str(fresh.mnt) if fresh else args.tmp)  # fmt: skip
    except BaseException:
        if fresh is not None:
            fresh.remove()
        raise
    registry: LocalRegistry | None = None
    bench: UnpackBench | None = None
    samples: list[Sample] = []
    try:
        log(f"scratch dir {scratch.base}")
        registry = start_registry(scratch.base / "registry")
        b = bench = UnpackBench(scratch, registry)

        t0 = time.monotonic()
        log(f"building the big image ({args.big_mb} MB of real files)"
            + (f" and the {args.small_files}-file image" if args.small_files else "")
            + " ...")  # fmt: skip
        specs = {"big": big_image_spec(args.big_mb * MB)}
        if args.small_files:
            specs["smallfiles"] = small_files_spec(args.small_files)
        built = {name: spec.build(scratch.base / f"build-{name}") for name, (spec, _) in
                 specs.items()}  # fmt: skip
        t1 = time.monotonic()
        log(f"built in {t1 - t0:.1f} s; pushing to {registry.host} ...")
        images: dict[str, ImageSet] = {}
        for name, img in built.items():
            images[name] = push_all(registry.host, {name: img})
            images[name].uncompressed = specs[name][1]
        t2 = time.monotonic()
        log(f"pushed in {t2 - t1:.1f} s; timing inflate alone ...")
        inflate = {name: inflate_reference(img) for name, img in built.items()}
        for name in built:
            scratch.trash(scratch.base / f"build-{name}")
        t3 = time.monotonic()

        ctrd_runner: Runner = b.run_cargohold_containerd
        ctrd_unpack_runner: Runner = b.run_cargohold_containerd_unpack
        store_note = "not tried (--no-containerd-store)"
        scenarios: list[tuple[str, list[Runner]]] = [
            ("create", [lambda i, s, r: b.run_cargohold(i, s, r, pull=False),
                        lambda i, s, r: b.run_containerd(i, s, r, pull=False)]),
            ("pull", [lambda i, s, r: b.run_cargohold(i, s, r, pull=True),
                      lambda i, s, r: b.run_containerd(i, s, r, pull=True)]),
        ]  # fmt: skip
        if not args.no_containerd_store:
            scenarios[0][1].append(ctrd_unpack_runner)
            scenarios[1][1].append(ctrd_runner)
            store_note = "measured" + (
                " (CARGOHOLD_CONTAINERD_DIRECT=0: containerd's diff service applies)"
                if os.environ.get("CARGOHOLD_CONTAINERD_DIRECT", "1") == "0" else
                " (cargohold's applier into containerd's snapshots)")
        # The first unpacks after setup are slower for whoever goes first (measured: up to
        # 2x, for both clients); with client order alternating over few runs that would
        # bias run 1. So warm up: untimed rounds of the big image's create scenario.
        for w in range(args.warmup):
            for runner in scenarios[0][1]:
                s = runner("big", images["big"], 100 + w)  # namespace bench-10x
                log(f"warm-up {w + 1}/{args.warmup} {s.client:44} {s.wall:6.2f} s (not counted)")
        setup = time.monotonic() - started
        loads: list[float] = []  # 1-minute load average at the start of each run
        stalls: list[float | None] = []  # I/O pressure (avg10, %) at the start of each run
        for run in range(args.runs):
            loads.append(os.getloadavg()[0])
            stalls.append(io_pressure())
            log(f"run {run + 1}/{args.runs}: load average {loads[-1]:.2f}, "
                f"I/O pressure {_f(stalls[-1], '.0f')} %")  # fmt: skip
            for image, imset in images.items():
                for _scenario, runners in scenarios:
                    k = run % len(runners)
                    for runner in runners[k:] + runners[:k]:  # rotate who goes first
                        try:
                            s = runner(image, imset, run)
                        except RuntimeError as e:
                            if runner not in (ctrd_runner, ctrd_unpack_runner):
                                raise
                            # The containerd backend is optional: note why, measure the rest.
                            why = [ln for ln in str(e).splitlines() if ln.strip()]
                            store_note = "skipped, " + (why[-1] if why else "it failed")
                            log(f"--store containerd: {store_note}")
                            runners.remove(runner)
                            continue
                        samples.append(s)
                        log(f"run {run + 1}/{args.runs} {image:10} {s.client:44} "
                            f"{s.wall:6.2f} s  cpu {s.cpu:5.2f} s (sys {s.cpu_sys:5.2f})  "
                            f"rss {s.peak_rss / MIB:4.0f} MiB"
                            + (f"  containerd cpu {s.daemon_cpu:5.2f} s"
                               if s.daemon_cpu is not None else "")
                            + (f"  (reported {s.reported_seconds:.2f} s)"
                               if s.reported_seconds is not None else "")
                            + ("  PROBLEM" if s.problems else ""))  # fmt: skip

        rows = summarise(samples, {k: v.uncompressed for k, v in images.items()})
        rat = ratios(rows)
        info: dict[str, Any] = {
            "runs": args.runs,
            "warmup": args.warmup,
            "big_mb": args.big_mb,
            "small_files": args.small_files,
            "images": {k: asdict(v) for k, v in images.items()},
            "inflate": {k: asdict(v) for k, v in inflate.items()},
            "containerd_store": store_note,
            "file_system": fs_note,
            "build_seconds": t1 - t0,
            "push_seconds": t2 - t1,
            "inflate_reference_seconds": t3 - t2,
            "setup_seconds": setup,
            "load_averages": loads,
            "io_pressure": stalls,
        }
    finally:
        if bench is not None:
            bench.stop()
        if registry is not None:
            registry.stop()
        if fresh is not None:
            fresh.remove()  # one unmount and one file, not a tree of deletions
        else:
            scratch.cleanup()
    info["total_seconds"] = time.monotonic() - started  # with cleanup
    if args.json:
        doc = {
            **info,
            "medians": [{**asdict(r), "total_cpu": r.total_cpu} for r in rows],
            "ratios": rat,
            "samples": [asdict(s) for s in samples],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(rows, rat, samples, info)
    return 1 if any(s.problems for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
