"""Bench: cold `cargohold fetch` against cold `ctr content fetch`, same registry, same images.

Run from the repository root, as root (containerd needs it)::

    .venv/bin/python -m bench.fetch            # or: .venv/bin/python bench/fetch.py
    .venv/bin/python -m bench.fetch --runs 5 --big-mb 800 --json

Setup (not timed): builds a ~400 MB (uncompressed, ``--big-mb``) two-layer image from
real files of this machine (``/usr/lib/x86_64-linux-gnu`` and ``/usr/share``, each cut
to its share of the size) and 20 small images (cargohold's samples plus generated app
images, most on one of two shared base layers), pushes them to a loopback
``docker-registry`` in a temp dir, and starts private containerds (own root, state and
socket in the temp dir; config from ``tests/rig/containerd.py``).

Measured, alternating the order of the clients from run to run (``--runs``, default 3):

* big image: ``cargohold --root FRESH --json fetch --plain-http REF`` against
  ``ctr --address SOCK -n bench-N content fetch --plain-http REF`` on a containerd
  started with a fresh root for that run (startup not timed), so both are really cold;
* 20 small images: cargohold with all refs in one call; cargohold with one ref per call
  (sequentially, same fresh root); ctr one ref per call (sequentially, same fresh
  containerd: how a script would loop, since ``ctr content fetch`` takes one ref).

Per run: wall time (spawn to reap; summed over the calls of a loop), MiB/s of distinct
compressed blob bytes, user+sys CPU and peak RSS of the client process (``os.wait4``),
and for ctr the containerd daemon's CPU delta (``/proc/<pid>/stat``; the daemon does the
downloading, ctr only drives it) and peak RSS (VmHWM of the fresh daemon). Each run is
checked: cargohold must report every distinct byte transferred, and both stores must
hold exactly the distinct blob bytes afterwards (a problem is printed, exit status 1).

stdout: a markdown table of medians and ratio lines, the last one being
``ratio cargohold/ctr (big image wall time, median): X.XX``; ``--json`` prints one JSON
document instead. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/fetch.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    MIB,
    Scratch,
    Spawner,
    capped_entries,
    cargohold_command,
    content_bytes,
    log,
    markdown_table,
    median,
    proc_cpu_seconds,
    proc_peak_rss,
    repo_root_on_path,
    tree_size,
)

repo_root_on_path()

from cargohold.devtools.registry import LocalRegistry, start_registry  # noqa: E402
from cargohold.errors import CargoholdError  # noqa: E402
from cargohold.imagebuild import (  # noqa: E402
    BuiltImage,
    Compression,
    Dir,
    Entry,
    File,
    ImageSpec,
    LayerSpec,
    Symlink,
    samples,
)
from cargohold.oci.reference import parse_reference  # noqa: E402
from cargohold.registry.client import RegistryClient  # noqa: E402
from cargohold.registry.push import push_image  # noqa: E402

#: Real trees the big image's layers are cut from (first two that exist).
BIG_SOURCES: tuple[tuple[str, str], ...] = (
    ("/usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"),
    ("/usr/share", "usr/share"),
    ("/usr/lib", "usr/lib"),
    ("/usr/bin", "usr/bin"),
)
SMALL_COUNT = 20
#: Client names (rows of the table).
CH = "cargohold"
CH_EACH = "cargohold, 1 ref per call"
CH_CTRD = "cargohold --store containerd"
CTR = "ctr content fetch"
CONTENT_DIR = Path("root") / "io.containerd.content.v1.content" / "blobs"


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """Pushed images of one scenario; ``compressed`` is what a cold fetch must transfer."""

    refs: list[str]
    blobs: int = 0  # distinct blobs (layers, configs, manifests)
    compressed: int = 0  # their bytes
    layers: int = 0  # distinct layer blobs
    uncompressed: int = 0  # regular-file content bytes of the layers (approximate for small)


def big_image_spec(size: int) -> tuple[ImageSpec, int]:
    """Two layers of real files, each cut to about half of ``size`` content bytes."""
    sources = [(Path(p), prefix) for p, prefix in BIG_SOURCES if Path(p).is_dir()][:2]
    if len(sources) < 2:
        raise SystemExit(f"need two of {', '.join(p for p, _ in BIG_SOURCES)} for the big image")
    layers: list[LayerSpec] = []
    total = 0
    for i, (path, prefix) in enumerate(sources):
        cap = size // 2 if i == 0 else size - total
        entries = capped_entries(path, prefix, cap, mtime=0)
        total += content_bytes(entries())
        layers.append(LayerSpec(entries, created_by=f"bench: {path} (<= {cap} bytes)"))
    if total < 0.9 * size:
        log(f"warning: only {total / MB:.0f} MB of real files found for a {size / MB:.0f} MB image")
    return ImageSpec(layers, name="bench/big", cmd=["/bin/sh"]), total


def _runtime_base() -> LayerSpec:
    """A second shared base (~3 MB generated): a language runtime some apps sit on."""
    entries: list[Entry] = [
        Dir("usr"),
        Dir("usr/lib"),
        Dir("usr/lib/runtime"),
        File("usr/lib/runtime/libruntime.so", mode=0o755, size=1_800_000, seed=7001),
        File("usr/lib/runtime/stdlib.zip", size=1_200_000, seed=7002),
        Dir("usr/bin"),
        Symlink("usr/bin/runtime", "../lib/runtime/libruntime.so"),
    ]
    return LayerSpec(entries, created_by="bench runtime base")


def _app(
    name: str, sizes: Sequence[int], seed: int, compression: Compression = "gzip"
) -> LayerSpec:
    entries: list[Entry] = [Dir("opt"), Dir(f"opt/{name}")]
    for j, n in enumerate(sizes):
        entries.append(File(f"opt/{name}/part{j}", mode=0o755, size=n, seed=seed * 100 + j))
    entries.append(File(f"opt/{name}/config.toml", f'name = "{name}"\n'.encode()))
    return LayerSpec(entries, compression=compression, created_by=f"bench app {name}")


def small_image_specs(count: int = SMALL_COUNT) -> dict[str, ImageSpec]:
    """cargohold's small samples, then generated app images up to ``count``: a third on
    the samples' base layer, a third on a generated runtime base, a third standalone."""
    specs: dict[str, ImageSpec] = dict(samples.small_images())
    specs["critical"] = samples.critical_image()
    try:
        specs["busybox"] = samples.busybox()
    except CargoholdError as e:  # no static busybox here: one more generated image instead
        log(f"note: busybox sample skipped ({e})")
    bases: list[LayerSpec | None] = [samples.base_layer(), _runtime_base(), None]
    sizes = [150_000, 600_000, 1_200_000, 2_500_000, 4_000_000]
    i = 0
    while len(specs) < count:
        name = f"svc-{i:02d}"
        base = bases[i % 3]
        parts = [sizes[i % len(sizes)]] + ([300_000] if i % 4 == 1 else [])
        app = _app(name, parts, 9000 + i, compression="zstd" if i % 5 == 4 else "gzip")
        layers = [app] if base is None else [base, app]
        specs[name] = ImageSpec(layers, name=f"bench/{name}", entrypoint=[f"/opt/{name}/part0"])
        i += 1
    return dict(list(specs.items())[:count])


def push_all(host: str, built: dict[str, BuiltImage]) -> ImageSet:
    client = RegistryClient(plain_http=True)
    out = ImageSet(refs=[])
    seen: dict[str, tuple[int, bool]] = {}
    for name, img in built.items():
        ref = f"{host}/bench/{name}:v1"
        push_image(client, parse_reference(ref), img)
        out.refs.append(ref)
        layer_digests = {str(d.digest) for d in img.layer_descriptors}
        for d in img.blobs_in_push_order():
            seen[str(d.digest)] = (d.size, str(d.digest) in layer_digests)
    out.blobs = len(seen)
    out.compressed = sum(size for size, _ in seen.values())
    out.layers = sum(1 for _, is_layer in seen.values() if is_layer)
    return out


# --------------------------------------------------------------------------- containerd


def _check_prerequisites() -> None:
    missing = [b for b in ("containerd", "ctr", "docker-registry") if shutil.which(b) is None]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: apt-get install containerd docker-registry"
        )
    if os.geteuid() != 0:
        raise SystemExit("bench.fetch starts private containerds: run it as root")


def start_private_containerd(base: Path) -> Any:
    """A containerd of our own below ``base`` (tests/rig/containerd.py), settled."""
    from tests.rig.containerd import start_containerd

    ctrd = start_containerd(base)
    time.sleep(0.2)  # let plugin start-up finish before CPU deltas are taken
    return ctrd


# --------------------------------------------------------------------------- clients


@dataclass
class Sample:
    scenario: str
    client: str
    run: int
    calls: int
    wall: float
    bytes: int
    cpu_user: float
    cpu_sys: float
    peak_rss: int
    daemon_cpu: float | None = None
    daemon_peak_rss: int | None = None
    reported_seconds: float | None = None  # cargohold's own "seconds" (sum over calls)
    problems: list[str] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


Runner = Callable[[ImageSet, int], Sample]


class Bench:
    def __init__(self, scratch: Scratch, registry: LocalRegistry) -> None:
        self.scratch = scratch
        self.registry = registry
        self.cargohold = cargohold_command()
        self.live: list[Any] = []  # containerds to stop on the way out
        self.spawner = Spawner()  # starts and measures the clients

    # -- helpers

    def _containerd(self) -> Any:
        ctrd = start_private_containerd(self.scratch.path("containerd"))
        self.live.append(ctrd)
        return ctrd

    def _drop_containerd(self, ctrd: Any) -> None:
        ctrd.cleanup()
        self.live.remove(ctrd)
        self.scratch.trash(ctrd.base)

    def _check_content(self, ctrd: Any, images: ImageSet, sample: Sample) -> None:
        have = tree_size(ctrd.base / CONTENT_DIR)
        if have != images.compressed:
            sample.problems.append(
                f"containerd content store holds {have} bytes, expected {images.compressed}"
            )

    def _cargohold_calls(
        self, batches: list[list[str]], global_args: list[str], sample: Sample
    ) -> None:
        transferred = 0
        reported = 0.0
        for batch in batches:
            m = self.spawner.run(
                [*self.cargohold, *global_args, "--json", "--no-progress",
                 "fetch", "--plain-http", *batch]
            )  # fmt: skip
            sample.wall += m.wall
            sample.cpu_user += m.user
            sample.cpu_sys += m.sys
            sample.peak_rss = max(sample.peak_rss, m.maxrss)
            if m.returncode != 0:
                raise RuntimeError(
                    f"cargohold fetch exited {m.returncode}:\n{m.stdout[-2000:]}{m.stderr[-4000:]}"
                )
            summary = json.loads(m.stdout.strip().splitlines()[-1])
            transferred += int(summary["bytes_transferred"])
            reported += float(summary["seconds"])
        sample.reported_seconds = reported
        if transferred != sample.bytes:
            sample.problems.append(
                f"cargohold reported {transferred} bytes transferred, expected {sample.bytes}"
            )

    # -- the clients

    def cargohold_embedded(self, images: ImageSet, run: int, *, per_ref: bool) -> Sample:
        root = self.scratch.path("cargohold-root")
        name = CH_EACH if per_ref else CH
        batches = [[r] for r in images.refs] if per_ref else [images.refs]
        s = Sample("", name, run, len(batches), 0.0, images.compressed, 0.0, 0.0, 0)
        self._cargohold_calls(batches, ["--root", str(root)], s)
        have = tree_size(root / "content" / "blobs")
        if have != images.compressed:
            s.problems.append(f"cargohold's store holds {have} bytes, expected {images.compressed}")
        self.scratch.trash(root)
        return s

    def cargohold_containerd(self, images: ImageSet, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            pid = ctrd.proc.pid
            s = Sample("", CH_CTRD, run, 1, 0.0, images.compressed, 0.0, 0.0, 0)
            cpu0 = proc_cpu_seconds(pid)
            self._cargohold_calls(
                [images.refs],
                ["--store", "containerd", "--address", ctrd.address,
                 "--namespace", f"bench-{run}"],
                s,
            )  # fmt: skip
            s.daemon_cpu = proc_cpu_seconds(pid) - cpu0
            s.daemon_peak_rss = proc_peak_rss(pid)
            self._check_content(ctrd, images, s)
        finally:
            self._drop_containerd(ctrd)
        return s

    def ctr(self, images: ImageSet, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            pid = ctrd.proc.pid
            s = Sample("", CTR, run, len(images.refs), 0.0, images.compressed, 0.0, 0.0, 0)
            cpu0 = proc_cpu_seconds(pid)
            for ref in images.refs:
                m = self.spawner.run(
                    [ctrd.ctr_binary, "--address", ctrd.address, "-n", f"bench-{run}",
                     "content", "fetch", "--plain-http", ref]
                )  # fmt: skip
                if m.returncode != 0:
                    raise RuntimeError(f"ctr content fetch {ref} exited {m.returncode}:\n"
                                       f"{m.stdout[-2000:]}{m.stderr[-4000:]}")  # fmt: skip
                s.wall += m.wall
                s.cpu_user += m.user
                s.cpu_sys += m.sys
                s.peak_rss = max(s.peak_rss, m.maxrss)
            s.daemon_cpu = proc_cpu_seconds(pid) - cpu0
            s.daemon_peak_rss = proc_peak_rss(pid)
            self._check_content(ctrd, images, s)
        finally:
            self._drop_containerd(ctrd)
        return s

    def probe_containerd_store(self, ref: str) -> str | None:
        """None if ``cargohold --store containerd fetch`` works here, else why not."""
        ctrd = self._containerd()
        try:
            m = self.spawner.run(
                [*self.cargohold, "--store", "containerd", "--address", ctrd.address,
                 "--namespace", "bench-probe", "--json", "--no-progress",
                 "fetch", "--plain-http", ref]
            )  # fmt: skip
        finally:
            self._drop_containerd(ctrd)
        if m.returncode == 0:
            return None
        lines = [ln for ln in (m.stderr + m.stdout).strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {m.returncode}"

    def stop(self) -> None:
        try:
            for ctrd in list(self.live):
                try:
                    ctrd.cleanup()
                finally:
                    self.live.remove(ctrd)
        finally:
            self.spawner.close()


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    scenario: str
    client: str
    calls: int
    wall: float
    mibps: float
    cpu: float
    peak_rss: int
    daemon_cpu: float | None
    daemon_peak_rss: int | None
    walls: list[float]

    @property
    def total_cpu(self) -> float:
        return self.cpu + (self.daemon_cpu or 0.0)


def summarise(samples: list[Sample]) -> list[Row]:
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.scenario, s.client), []).append(s)
    rows = []
    for (scenario, client), ss in groups.items():
        wall = median(s.wall for s in ss)
        daemon = [s.daemon_cpu for s in ss if s.daemon_cpu is not None]
        daemon_rss = [s.daemon_peak_rss for s in ss if s.daemon_peak_rss is not None]
        rows.append(
            Row(
                scenario,
                client,
                ss[0].calls,
                wall,
                ss[0].bytes / wall / MIB if wall > 0 else 0.0,
                median(s.cpu for s in ss),
                max(s.peak_rss for s in ss),
                median(daemon) if daemon else None,
                max(daemon_rss) if daemon_rss else None,
                [s.wall for s in ss],
            )
        )
    return rows


def _find(rows: list[Row], scenario: str, client: str) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.client == client), None)


def ratios(rows: list[Row]) -> dict[str, float]:
    out: dict[str, float] = {}
    pairs = {
        "big_wall": ("big", CH, "wall"),
        "big_cpu_with_daemon": ("big", CH, "total_cpu"),
        "small_one_call_vs_ctr_loop_wall": ("small", CH, "wall"),
        "small_per_ref_vs_ctr_loop_wall": ("small", CH_EACH, "wall"),
        "small_cpu_with_daemon": ("small", CH, "total_cpu"),
        "big_containerd_store_wall": ("big", CH_CTRD, "wall"),
        "small_containerd_store_wall": ("small", CH_CTRD, "wall"),
    }
    for key, (scenario, mine, attr) in pairs.items():
        a = _find(rows, scenario, mine)
        b = _find(rows, scenario, CTR)
        if a is not None and b is not None and getattr(b, attr) > 0:
            out[key] = getattr(a, attr) / getattr(b, attr)
    return out


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f}"


def _sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_report(
    rows: list[Row],
    rat: dict[str, float],
    samples: list[Sample],
    info: dict[str, Any],
) -> None:
    big, small = info["big"], info["small"]
    print(
        f"big image: {big['layers']} layers of real files, {big['uncompressed'] / MB:.0f} MB "
        f"content, {big['compressed'] / MB:.0f} MB compressed ({big['blobs']} blobs)"
    )
    print(
        f"small images: {len(small['refs'])} images, {small['layers']} distinct layers, "
        f"{small['compressed'] / MB:.1f} MB compressed ({small['blobs']} distinct blobs)"
    )
    print(
        f"runs: {info['runs']} (client order alternates), medians; setup "
        f"{info['setup_seconds']:.0f} s (build {info['build_seconds']:.0f} s, "
        f"push {info['push_seconds']:.0f} s)"
    )
    print()
    headers = [
        "images", "client", "calls", "wall s", "MiB/s", "client CPU s", "client peak RSS MiB",
        "containerd CPU s", "client + containerd CPU s", "containerd peak RSS MiB",
        "wall per run s",
    ]  # fmt: skip
    table_rows = [
        [
            r.scenario, r.client, r.calls, f"{r.wall:.2f}", f"{r.mibps:.0f}", f"{r.cpu:.2f}",
            _mib(r.peak_rss), _sec(r.daemon_cpu), f"{r.total_cpu:.2f}",
            _mib(r.daemon_peak_rss), " / ".join(f"{w:.2f}" for w in r.walls),
        ]
        for r in rows
    ]  # fmt: skip
    print(markdown_table(headers, table_rows, "ll" + "r" * (len(headers) - 2)))
    print()
    problems = [f"{s.scenario}/{s.client}/run {s.run}: {p}" for s in samples for p in s.problems]
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"--store containerd: {info['containerd_store']}")
    rss = max((r.peak_rss for r in rows if r.client.startswith("cargohold")), default=0)
    print(f"cargohold peak RSS (max over all runs and calls): {rss / MIB:.0f} MiB "
          f"(goal <= 200 MB: {'ok' if rss <= 200 * MB else 'MISSED'})")  # fmt: skip
    n = len(small["refs"])
    labels = {
        "big_cpu_with_daemon": "ratio cargohold/(ctr + containerd) (big image CPU, median)",
        "small_one_call_vs_ctr_loop_wall":
            f"ratio cargohold/ctr ({n} small images, one call vs ctr loop, wall, median)",
        "small_per_ref_vs_ctr_loop_wall":
            f"ratio cargohold/ctr ({n} small images, both one ref per call, wall, median)",
        "small_cpu_with_daemon":
            f"ratio cargohold/(ctr + containerd) ({n} small images, one call, CPU, median)",
        "big_containerd_store_wall":
            "ratio cargohold --store containerd/ctr (big image wall time, median)",
        "small_containerd_store_wall":
            "ratio cargohold --store containerd/ctr (small images, one call, wall, median)",
    }  # fmt: skip
    for key, label in labels.items():
        if key in rat:
            print(f"{label}: {rat[key]:.2f}")
    print(f"total runtime: {info['total_seconds']:.0f} s")
    big_ratio = rat.get("big_wall")
    print(
        "ratio cargohold/ctr (big image wall time, median): "
        + ("n/a" if big_ratio is None else f"{big_ratio:.2f}")
        + ("" if big_ratio is None else f" (goal <= 0.5: {'ok' if big_ratio <= 0.5 else 'MISSED'})")
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3, help="runs per client and scenario [3]")
    p.add_argument("--big-mb", type=int, default=400,
                   help="uncompressed content of the big image, MB [400]")  # fmt: skip
    p.add_argument("--small", type=int, default=SMALL_COUNT,
                   help=f"number of small images [{SMALL_COUNT}]")  # fmt: skip
    p.add_argument("--tmp", default=None, help="parent of the scratch dir [$TMPDIR or /tmp]")
    p.add_argument("--no-containerd-store", action="store_true",
                   help="do not try `cargohold --store containerd`")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.runs < 1 or args.big_mb < 1 or args.small < 1:
        p.error("--runs, --big-mb and --small must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    _check_prerequisites()
    scratch = Scratch(parent=args.tmp)
    registry: LocalRegistry | None = None
    bench: Bench | None = None
    try:
        log(f"scratch dir {scratch.base}")
        registry = start_registry(scratch.base / "registry")
        b = bench = Bench(scratch, registry)

        t0 = time.monotonic()
        log(f"building the big image ({args.big_mb} MB of real files) ...")
        big_spec, big_content = big_image_spec(args.big_mb * MB)
        big_built = {"big": big_spec.build(scratch.base / "build-big")}
        small_built = {
            name: spec.build(scratch.base / "build-small")
            for name, spec in small_image_specs(args.small).items()
        }
        t1 = time.monotonic()
        log(f"built in {t1 - t0:.1f} s; pushing to {registry.host} ...")
        big = push_all(registry.host, big_built)
        big.uncompressed = big_content
        small = push_all(registry.host, small_built)
        t2 = time.monotonic()
        # The build trees are not needed any more (the registry has everything).
        scratch.trash(scratch.base / "build-big")
        scratch.trash(scratch.base / "build-small")

        store_note = "not tried (--no-containerd-store)"
        with_store = False
        if not args.no_containerd_store:
            why = b.probe_containerd_store(small.refs[0])
            with_store = why is None
            store_note = "measured" if with_store else f"skipped, the CLI says: {why}"
            log(f"--store containerd: {store_note}")
        setup = time.monotonic() - started

        def embedded(per_ref: bool) -> Runner:
            return lambda images, run: b.cargohold_embedded(images, run, per_ref=per_ref)

        scenarios: list[tuple[str, ImageSet, list[Runner]]] = [
            ("big", big, [embedded(False), b.ctr]),
            ("small", small, [embedded(False), embedded(True), b.ctr]),
        ]
        if with_store:
            scenarios[0][2].append(b.cargohold_containerd)
            scenarios[1][2].append(b.cargohold_containerd)

        samples: list[Sample] = []
        for run in range(args.runs):
            for scenario, images, runners in scenarios:
                k = run % len(runners)
                for runner in runners[k:] + runners[:k]:  # rotate who goes first
                    s = runner(images, run)
                    s.scenario = scenario
                    samples.append(s)
                    log(f"run {run + 1}/{args.runs} {scenario:5} {s.client:34} "
                        f"{s.wall:6.2f} s  cpu {s.cpu:5.2f} s  rss {s.peak_rss / MIB:4.0f} MiB"
                        + (f"  containerd cpu {s.daemon_cpu:5.2f} s" if s.daemon_cpu else "")
                        + ("  PROBLEM" if s.problems else ""))  # fmt: skip

        order = {"big": 0, "small": 1}
        rows = sorted(summarise(samples), key=lambda r: order.get(r.scenario, 9))
        rat = ratios(rows)
        info: dict[str, Any] = {
            "runs": args.runs,
            "big_mb": args.big_mb,
            "big": asdict(big),
            "small": asdict(small),
            "containerd_store": store_note,
            "build_seconds": t1 - t0,
            "push_seconds": t2 - t1,
            "setup_seconds": setup,
            "total_seconds": time.monotonic() - started,
        }
    finally:
        if bench is not None:
            bench.stop()
        if registry is not None:
            registry.stop()
        scratch.cleanup()
    info["total_seconds"] = time.monotonic() - started  # with cleanup
    if args.json:
        doc = {
            **info,
            "medians": [{**asdict(r), "total_cpu": r.total_cpu} for r in rows],
            "ratios": rat,
            "samples": [{**asdict(s), "cpu": s.cpu} for s in samples],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(rows, rat, samples, info)
    return 1 if any(s.problems for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
