"""Bench: ``cargohold --store containerd bake`` of a fetch-only catalog against the shell loop
node-image builds use today (``ctr content fetch``, 4 in parallel).

Run from the repository root, as root (it starts private containerds)::

    .venv/bin/python -m bench.bake                      # or: .venv/bin/python bench/bake.py
    .venv/bin/python -m bench.bake --runs 3 --big-mb 1600 --small-files 30000 --json

Setup (not timed): a catalog of 12 images pushed to a loopback ``docker-registry``: the big
image of bench/fetch.py (``--big-mb`` MB of real files), the small-files image of
bench/unpack.py (``--small-files`` files) and ten small images of bench/fetch.py; a cache
spec with every image ``mode = "fetch"`` (the fetch-only node image of the seed).

Clients, each on a fresh private containerd (tests/rig/containerd.py), alternating which goes
first from run to run (``--runs``, default 2); dirty pages are flushed before each:

* ``cargohold --store containerd --address SOCK --namespace NS --no-progress bake SPEC
  --plain-http --report R``: plan, fetch (4 parallel downloads; large blobs written and
  hashed into containerd's ingest files, linked into its store and recorded by containerd
  without a second read), CRI's records, verify (blobs this bake downloaded were hashed as
  they were written and are not read again; anything else is re-hashed, from containerd's
  own files when its root is local), measure;
* ``printf '%s\\n' REFS | xargs -P4 -n1 ctr ... content fetch --plain-http``: AgentBaker's
  loop (blobs + one image record per image; no CRI records, no verification);
* ``cargohold --root FRESH bake`` into the embedded store, for reference.

stdout: a markdown table (wall, CPU of client and containerd), the bake's phases from its
report, and the goal line ``ratio bake/ctr loop (wall, median): X.XX (goal <= 0.7)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/bake.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, Scratch, log, markdown_table, median, proc_cpu_seconds
from bench.fetch import (
    Bench,
    ImageSet,
    _check_prerequisites,
    big_image_spec,
    push_all,
    small_image_specs,
)
from bench.unpack import small_files_spec
from cargohold.devtools.registry import LocalRegistry, start_registry
from cargohold.store.containerd.content import DIRECT_ENV

BAKE = "cargohold --store containerd bake"
STREAM = "same, CARGOHOLD_CONTAINERD_DIRECT=0"
LOOP = "ctr content fetch, 4-way xargs loop"
EMBEDDED = "cargohold bake (embedded store)"


@dataclass
class Sample:
    client: str
    run: int
    wall: float
    cpu: float
    daemon_cpu: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def write_spec(directory: Path, refs: list[str], namespace: str) -> Path:
    """``directory``/cache.toml (a spec is TOML only when its name ends in .toml)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cache.toml"
    lines = [f'namespace = "{namespace}"', 'platforms = ["linux/amd64"]']
    for ref in refs:
        lines += ["", "[[image]]", f'ref = "{ref}"', 'mode = "fetch"']
    path.write_text("\n".join(lines) + "\n")
    return path


class BakeBench(Bench):
    def _must(self, m: Any, what: str) -> Any:
        if m.returncode not in (0,):
            raise RuntimeError(f"{what} exited {m.returncode}:\n{m.stdout[-2000:]}"
                               f"{m.stderr[-4000:]}")  # fmt: skip
        return m

    @staticmethod
    def _report(path: Path, s: Sample, images: int) -> None:
        doc = json.loads(path.read_text())
        s.phases = {k: float(v) for k, v in doc["totals"].get("phases", {}).items()}
        if not s.phases:
            s.phases = {k: float(v) for k, v in doc.get("phases", {}).items()}
        ok = sum(1 for i in doc["images"] if i["status"] == "ok")
        if ok != images:
            s.problems.append(f"{ok} of {images} images ok")

    def bake_containerd_stream(self, images: ImageSet, run: int) -> Sample:
        """The same bake with every blob through containerd's Write stream (and no direct
        read of its files): what the direct ingest saves."""
        return self.bake_containerd(images, run, env={**os.environ, DIRECT_ENV: "0"},
                                    client=STREAM)

    def bake_containerd(self, images: ImageSet, run: int, *, env: dict[str, str] | None = None,
                        client: str = BAKE) -> Sample:
        ctrd = self._containerd()
        ns = f"bench-{run}"
        try:
            spec = write_spec(self.scratch.path("spec"), images.refs, ns)
            rep = self.scratch.path("report.json")
            pid = ctrd.proc.pid
            os.sync()
            cpu0 = proc_cpu_seconds(pid)
            m = self._must(self.spawner.run(
                [*self.cargohold, "--store", "containerd", "--address", ctrd.address,
                 "--namespace", ns, "--no-progress", "bake", str(spec), "--plain-http",
                 "--report", str(rep)], env=env), client)  # fmt: skip
            s = Sample(client, run, m.wall, m.cpu, proc_cpu_seconds(pid) - cpu0)
            self._report(rep, s, len(images.refs))
        finally:
            self._drop_containerd(ctrd)
        return s

    def ctr_loop(self, images: ImageSet, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            ctr = shlex.join([ctrd.ctr_binary, "--address", ctrd.address, "-n", f"bench-{run}",
                              "content", "fetch", "--plain-http"])  # fmt: skip
            refs = " ".join(shlex.quote(r) for r in images.refs)
            pid = ctrd.proc.pid
            os.sync()
            cpu0 = proc_cpu_seconds(pid)
            m = self._must(self.spawner.run(
                ["sh", "-c", f"printf '%s\\n' {refs} | xargs -P4 -n1 {ctr} >/dev/null"]),
                LOOP)  # fmt: skip
            s = Sample(LOOP, run, m.wall, m.cpu, proc_cpu_seconds(pid) - cpu0)
        finally:
            self._drop_containerd(ctrd)
        return s

    def bake_embedded(self, images: ImageSet, run: int) -> Sample:
        root = self.scratch.path("cargohold-root")
        spec = write_spec(self.scratch.path("spec"), images.refs, "default")
        rep = self.scratch.path("report.json")
        os.sync()
        m = self._must(self.spawner.run(
            [*self.cargohold, "--root", str(root), "--no-progress", "bake", str(spec),
             "--plain-http", "--report", str(rep)]), EMBEDDED)  # fmt: skip
        s = Sample(EMBEDDED, run, m.wall, m.cpu)
        self._report(rep, s, len(images.refs))
        self.scratch.trash(root)
        return s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=2, help="runs per client [2]")
    p.add_argument("--big-mb", type=int, default=400, help="big image content, MB [400]")
    p.add_argument("--small-files", type=int, default=30_000,
                   help="files of the small-files image [30000]")  # fmt: skip
    p.add_argument("--tmp", default=None, help="parent of the scratch dir [$TMPDIR or /tmp]")
    p.add_argument("--no-embedded", action="store_true", help="leave out the embedded bake")
    p.add_argument("--stream-too", action="store_true",
                   help="also the containerd bake with CARGOHOLD_CONTAINERD_DIRECT=0")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.runs < 1 or args.big_mb < 1 or args.small_files < 1:
        p.error("--runs, --big-mb and --small-files must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    _check_prerequisites()
    scratch = Scratch(prefix="cargohold-bench-bake-", parent=args.tmp)
    registry: LocalRegistry | None = None
    bench: BakeBench | None = None
    samples: list[Sample] = []
    try:
        registry = start_registry(scratch.base / "registry")
        b = bench = BakeBench(scratch, registry)
        log(f"building the catalog (big {args.big_mb} MB, {args.small_files} small files, "
            "10 small images) ...")  # fmt: skip
        specs = {"big": big_image_spec(args.big_mb * MB)[0],
                 "smallfiles": small_files_spec(args.small_files)[0],
                 **small_image_specs(10)}  # fmt: skip
        built = {name: spec.build(scratch.base / f"build-{name}") for name, spec in specs.items()}
        images = push_all(registry.host, built)
        for name in built:
            scratch.trash(scratch.base / f"build-{name}")
        log(f"{len(images.refs)} images, {images.compressed / MB:.0f} MB compressed "
            f"({images.blobs} blobs)")  # fmt: skip
        clients = [b.bake_containerd, b.ctr_loop] + ([] if args.no_embedded else
                                                     [b.bake_embedded])  # fmt: skip
        if args.stream_too:
            clients.insert(1, b.bake_containerd_stream)
        for run in range(args.runs):
            k = run % len(clients)
            for client in clients[k:] + clients[:k]:
                s = client(images, run)
                samples.append(s)
                log(f"run {run + 1}/{args.runs} {s.client:40} {s.wall:6.2f} s  cpu {s.cpu:5.2f}"
                    + (f"  containerd cpu {s.daemon_cpu:5.2f}" if s.daemon_cpu is not None
                       else "")
                    + (f"  phases {json.dumps({k: round(v, 2) for k, v in s.phases.items()})}"
                       if s.phases else "")
                    + ("  PROBLEM " + "; ".join(s.problems) if s.problems else ""))  # fmt: skip
    finally:
        if bench is not None:
            bench.stop()
        if registry is not None:
            registry.stop()
        scratch.cleanup()
    walls = {c: median(s.wall for s in samples if s.client == c)
             for c in dict.fromkeys(s.client for s in samples)}  # fmt: skip
    ratio = walls[BAKE] / walls[LOOP] if walls.get(LOOP) else float("nan")
    if args.json:
        print(json.dumps({"images": asdict(images), "walls": walls, "ratio": ratio,
                          "samples": [asdict(s) for s in samples],
                          "total_seconds": time.monotonic() - started}, indent=2))  # fmt: skip
    else:
        print(f"{len(images.refs)} images, {images.compressed / MB:.0f} MB compressed; "
              f"runs: {args.runs}, medians\n")  # fmt: skip
        rows = []
        for c in walls:
            ss = [s for s in samples if s.client == c]
            dc = [s.daemon_cpu for s in ss if s.daemon_cpu is not None]
            phase_keys = list(dict.fromkeys(k for s in ss for k in s.phases))
            ph = ", ".join(f"{k} {median(s.phases[k] for s in ss if k in s.phases):.2f}"
                           for k in phase_keys)  # fmt: skip
            rows.append((c, f"{walls[c]:.2f}", f"{median(s.cpu for s in ss):.2f}",
                         f"{median(dc):.2f}" if dc else "-", " / ".join(
                             f"{s.wall:.2f}" for s in ss), ph or "-"))  # fmt: skip
        print(markdown_table(["client", "wall s", "client CPU s", "containerd CPU s",
                              "wall per run s", "phases (report, s)"], rows,
                             align="lrrrll"))  # fmt: skip
        for s in samples:
            for p in s.problems:
                print(f"PROBLEM run {s.run + 1} {s.client}: {p}")
        if walls.get(STREAM) and walls.get(LOOP):
            print(f"ratio bake with CARGOHOLD_CONTAINERD_DIRECT=0 / ctr loop (wall, median): "
                  f"{walls[STREAM] / walls[LOOP]:.2f}")  # fmt: skip
        print(f"ratio bake/ctr loop (wall, median): {ratio:.2f} "
              f"(goal <= 0.7: {'ok' if ratio <= 0.7 else 'MISSED'})")  # fmt: skip
    return 1 if any(s.problems for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
