"""Bench: a simulated node boot, with and without `cargohold warm` started at boot.

Run from the repository root, as root (containerd needs it)::

    .venv/bin/python -m bench.warm                 # or: .venv/bin/python bench/warm.py
    .venv/bin/python -m bench.warm --runs 2 --first 10 --interval 3 --scale 1.0 --json

Setup (not timed): a loopback ``docker-registry`` and 10 images of mixed sizes and
priorities (``IMAGES``: a shared busybox layer, then a layer of a few large files and a
layer of many 4 KiB files; 2-200 MB unpacked at ``--scale 1``), pushed with cargohold's
push code. Everything lives on a fresh ext4 made on a loop device (bench.unpack's FreshFs).

Each scenario runs on a private containerd started on a fresh root:

1. ``cargohold --store containerd bake`` of a spec naming the 10 images with their
   priorities and ``mode = "fetch"``: content and records only, no snapshots (the node
   image as baked), labelled with the priorities;
2. "boot" at t = 0: with warm, ``cargohold --store containerd warm`` starts (its defaults:
   nice 10, idle I/O class, one layer at a time); without, nothing does;
3. the containers start on a fixed schedule, most important first: container k at
   ``--first + k * --interval`` seconds, each ``ctr run --rm IMAGE NAME /bin/true`` in its
   own thread (a later one does not wait for an earlier one, as kubelet starts pods);
4. afterwards every image is unpacked; each container is run once more (the run without an
   unpack) and its **wait for the rootfs** is the first run's wall time less that one.

Reported per container: priority, size, its wait without and with warm; and the
priority-weighted sum of the waits (sum of priority x wait). Goal: with warm <= 0.3x of
without. Medians over ``--runs`` (scenario order alternating).

stdout: a markdown table and the line ``ratio weighted wait with/without warm: X.XX``;
``--json`` prints one JSON document instead. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/warm.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    Scratch,
    cargohold_command,
    log,
    markdown_table,
    median,
    repo_root_on_path,
)
from bench.fetch import _check_prerequisites, push_all, start_private_containerd
from bench.unpack import FreshFs

repo_root_on_path()

from cargohold.devtools.registry import LocalRegistry, start_registry  # noqa: E402
from cargohold.imagebuild import Dir, Entry, File, ImageSpec, LayerSpec, samples  # noqa: E402

#: (name, unpacked MB at --scale 1, priority). Listed in the boot schedule's order is not
#: required: containers start most important first.
IMAGES: tuple[tuple[str, int, float], ...] = (
    ("dns", 20, 10), ("cni", 200, 8), ("proxy", 5, 8), ("csi", 120, 5), ("metrics", 40, 5),
    ("logging", 80, 3), ("pause-helper", 2, 3), ("monitor", 60, 2), ("backup", 30, 1),
    ("debug", 10, 1),
)  # fmt: skip
NAMESPACE = "bench"
SMALL_FILE = 4096


def image_spec(name: str, size: int, seed: int) -> ImageSpec:
    """busybox, then 70 % of ``size`` in a few large files and 30 % in 4 KiB files."""
    big = int(size * 0.7)
    parts = max(1, big // (16 * MB))
    large: list[Entry] = [Dir("opt"), Dir(f"opt/{name}")]
    large += [File(f"opt/{name}/blob{j}", size=big // parts, seed=seed * 1000 + j)
              for j in range(parts)]
    count = max(1, (size - big) // SMALL_FILE)
    small: list[Entry] = [Dir("srv"), Dir(f"srv/{name}")]
    for d in range(0, count, 200):
        small.append(Dir(f"srv/{name}/d{d // 200}"))
        small += [File(f"srv/{name}/d{d // 200}/f{j}", size=SMALL_FILE,
                       seed=seed * 1_000_000 + d + j) for j in range(min(200, count - d))]
    return ImageSpec(
        [samples.busybox_layer(), LayerSpec(large, created_by=f"bench {name} large files"),
         LayerSpec(small, created_by=f"bench {name} small files")],
        name=f"bench/{name}", cmd=["/bin/true"],
    )


@dataclass
class Container:
    name: str
    ref: str
    priority: float
    size: int
    start_at: float
    wall: float = 0.0
    again: float = 0.0

    @property
    def wait(self) -> float:
        return max(0.0, self.wall - self.again)


@dataclass
class Scenario:
    warm: bool
    containers: list[Container]
    warm_seconds: float | None = None
    warm_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def weighted(self) -> float:
        return sum(c.priority * c.wait for c in self.containers)


class WarmBench:
    def __init__(self, scratch: Scratch, registry: LocalRegistry, refs: dict[str, str],
                 args: argparse.Namespace) -> None:
        self.scratch = scratch
        self.registry = registry
        self.refs = refs
        self.args = args
        self.cli = cargohold_command()

    def _spec(self, path: Path) -> Path:
        lines: list[str] = []
        for name, _, prio in IMAGES:
            lines += ["[[image]]", f'ref = "{self.refs[name]}"', 'mode = "fetch"',
                      f"priority = {prio}", ""]
        path.write_text("\n".join(lines))
        return path

    def _ch(self, ctrd: Any, root: Path, *args: str) -> list[str]:
        return [*self.cli, "--root", str(root), "--store", "containerd", "--address",
                ctrd.address, "--namespace", NAMESPACE, *args]

    def _ctr_run(self, ctrd: Any, c: Container, suffix: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([ctrd.ctr_binary, "--address", ctrd.address, "-n", NAMESPACE, "run",
                        "--rm", c.ref, f"{c.name}-{suffix}", "/bin/true"],
                       check=True, capture_output=True, text=True, timeout=600)
        return time.perf_counter() - t0

    def scenario(self, warm: bool, run: int) -> Scenario:
        tag = f"{'warm' if warm else 'cold'}-{run}"
        base = self.scratch.path(f"ctrd-{tag}")
        ctrd = start_private_containerd(base)
        root = self.scratch.path(f"root-{tag}")
        env = {**os.environ, "CARGOHOLD_RESERVE": "0"}
        try:
            subprocess.run(self._ch(ctrd, root, "bake", "--plain-http",
                                    str(self._spec(self.scratch.base / f"spec-{tag}.toml"))),
                           check=True, capture_output=True, text=True, env=env)
            subprocess.run(["sync"], check=True)
            order = sorted(IMAGES, key=lambda x: -x[2])
            containers = [
                Container(name, self.refs[name], prio, size * MB,
                          self.args.first + k * self.args.interval)
                for k, (name, size, prio) in enumerate(order)
            ]
            sc = Scenario(warm, containers)
            boot = time.perf_counter()
            warm_proc: subprocess.Popen[str] | None = None
            warm_out: list[str] = []
            watcher: threading.Thread | None = None
            if warm:
                warm_proc = subprocess.Popen(self._ch(ctrd, root, "--json", "warm", "--wait"),
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, env=env)

                def watch(proc: subprocess.Popen[str]) -> None:
                    out, err = proc.communicate(timeout=900)
                    sc.warm_seconds = time.perf_counter() - boot
                    warm_out.extend([out, err])

                watcher = threading.Thread(target=watch, args=(warm_proc,))
                watcher.start()
            errors: list[BaseException] = []

            def start(c: Container) -> None:
                try:
                    delay = boot + c.start_at - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    c.wall = self._ctr_run(ctrd, c, "boot")
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=start, args=(c,)) for c in containers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if warm_proc is not None and watcher is not None:
                watcher.join()
                if warm_proc.returncode != 0:
                    raise RuntimeError(f"warm exited {warm_proc.returncode}: {warm_out[1:]}")
                sc.warm_summary = json.loads(warm_out[0].splitlines()[-1])
            if errors:
                raise errors[0]
            for c in containers:  # everything unpacked now: the run without the unpack
                c.again = self._ctr_run(ctrd, c, "again")
            return sc
        finally:
            ctrd.cleanup()
            self.scratch.trash(base)
            self.scratch.trash(root)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.warm", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=1, help="runs of each scenario [1]")
    p.add_argument("--first", type=float, default=10.0,
                   help="seconds after boot the first container starts [10]")
    p.add_argument("--interval", type=float, default=3.0,
                   help="seconds between container starts [3]")
    p.add_argument("--scale", type=float, default=1.0, help="image sizes x SCALE [1.0]")
    p.add_argument("--tmp", default=None, help="where the scratch file system goes")
    p.add_argument("--fresh-fs-gb", type=int, default=8)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _check_prerequisites()
    global IMAGES
    IMAGES = tuple((n, max(1, round(s * args.scale)), p) for n, s, p in IMAGES)
    fresh = FreshFs(args.tmp, args.fresh_fs_gb)
    scratch = Scratch(prefix="cargohold-bench-warm-", parent=str(fresh.mnt))
    registry: LocalRegistry | None = None
    results: list[Scenario] = []
    try:
        registry = start_registry(scratch.base / "registry")
        log(f"building {len(IMAGES)} images ({sum(s for _, s, _ in IMAGES)} MB unpacked) ...")
        work = {name: scratch.path(f"build-{name}") for name, _, _ in IMAGES}
        built = {name: image_spec(name, size * MB, 300 + i).build(work[name])
                 for i, (name, size, _) in enumerate(IMAGES)}
        pushed = push_all(registry.host, built)
        refs = dict(zip(built, pushed.refs, strict=True))
        for path in work.values():
            scratch.trash(path)
        log(f"pushed {pushed.compressed / MB:.0f} MB compressed")
        b = WarmBench(scratch, registry, refs, args)
        for run in range(args.runs):
            for warm in ([False, True] if run % 2 == 0 else [True, False]):
                sc = b.scenario(warm, run)
                results.append(sc)
                log(f"run {run + 1}: {'with' if warm else 'without'} warm: weighted wait "
                    f"{sc.weighted:.2f} s" + (f", warm took {sc.warm_seconds:.1f} s"
                                              if sc.warm_seconds else ""))
    finally:
        if registry is not None:
            registry.stop()
        scratch.cleanup()
        fresh.remove()
    report(results, args)
    return 0


def report(results: list[Scenario], args: argparse.Namespace) -> None:
    cold = [s for s in results if not s.warm]
    hot = [s for s in results if s.warm]
    names = [c.name for c in cold[0].containers]

    def wait(group: list[Scenario], name: str) -> float:
        return median(next(c for c in s.containers if c.name == name).wait for s in group)

    w_cold = median(s.weighted for s in cold)
    w_hot = median(s.weighted for s in hot)
    ratio = w_hot / w_cold if w_cold > 0 else float("nan")
    if args.json:
        print(json.dumps({
            "schedule": {"first": args.first, "interval": args.interval, "scale": args.scale},
            "containers": [{"name": n, "priority": c.priority, "unpacked_mb": c.size // MB,
                            "start_at": c.start_at, "wait_without": round(wait(cold, n), 3),
                            "wait_with": round(wait(hot, n), 3)}
                           for n, c in zip(names, cold[0].containers, strict=True)],
            "weighted_without": round(w_cold, 3), "weighted_with": round(w_hot, 3),
            "ratio": round(ratio, 3),
            "warm_seconds": [round(s.warm_seconds or 0, 2) for s in hot],
            "warm_order": hot[0].warm_summary.get("order", []),
        }, indent=1))
        return
    rows = [[n, f"{c.priority:g}", c.size // MB, f"{c.start_at:.0f}",
             f"{wait(cold, n):.2f}", f"{wait(hot, n):.2f}"]
            for n, c in zip(names, cold[0].containers, strict=True)]
    rows.append(["**priority-weighted sum**", "", "", "", f"{w_cold:.2f}", f"{w_hot:.2f}"])
    print(markdown_table(["container", "priority", "MB unpacked", "starts at s",
                          "rootfs wait without warm (s)", "with warm (s)"], rows, "lrrrrr"))
    print()
    print(f"warm finished {median(s.warm_seconds or 0 for s in hot):.1f} s after boot; "
          f"its order: {', '.join(n.split('/')[-1].split(':')[0] for n in hot[0].warm_summary.get('order', []))}")
    print(f"ratio weighted wait with/without warm: {ratio:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
