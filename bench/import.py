"""Bench: `cargohold import` / `export` of image archives against containerd's `ctr`.

Run from the repository root, as root (private containerds need it)::

    .venv/bin/python -m bench.import                 # or: .venv/bin/python bench/import.py
    .venv/bin/python -m bench.import --runs 3 --big-mb 300 --json

Setup (not timed): the 300 MB sample image (``cargohold.imagebuild.samples.big_image``,
generated 2-3x compressible content in 4 gzip layers) is built, imported into a scratch
cargohold store from an OCI layout directory and exported from there as an OCI-layout tar;
``skopeo copy oci-archive:... docker-archive:...`` turns that into a docker-archive (layers
uncompressed, as ``docker save`` writes them).

Measured, cold (a fresh ``--root`` / a private containerd on a fresh root per sample; dirty
pages flushed before each timed command, the page cache kept), alternating which client
goes first from run to run:

* **import, OCI tar**: ``cargohold --root R import FILE`` (embedded) and ``cargohold --store
  containerd ... import FILE``, against ``ctr images import --no-unpack FILE``;
* **import, docker-archive**: the same on the docker-archive (ctr: ``--no-unpack`` too);
* **export**: ``cargohold --root R export REF -o FILE.tar`` (the image in the store) against
  ``ctr images export FILE.tar REF`` (the image imported into containerd).

Per sample: wall (spawn to reap), client CPU and client peak RSS (wait4, bench.common's
Spawner), and containerd's peak RSS (VmHWM). stdout: a markdown table and ratio lines;
``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MIB,
    Scratch,
    Spawner,
    cargohold_command,
    log,
    markdown_table,
    median,
    proc_peak_rss,
    repo_root_on_path,
)

NAME = "bench.example/import/big:1"


@dataclass
class Sample:
    scenario: str
    client: str
    run: int
    wall: float
    cpu: float
    peak_rss: int
    daemon_peak_rss: int | None = None


class ImportBench:
    def __init__(self, scratch: Scratch, spawner: Spawner) -> None:
        self.scratch = scratch
        self.spawner = spawner
        self.ch = cargohold_command()
        self.env = {**os.environ, "CARGOHOLD_RESERVE": "0"}

    def _measure(self, scenario: str, client: str, run: int, cmd: list[str],
                 ctrd: Any | None = None) -> Sample:
        subprocess.run(["sync"], check=True)
        m = self.spawner.run(cmd, env=self.env)
        if m.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {m.returncode}:\n{m.stdout}\n{m.stderr}")
        daemon = proc_peak_rss(ctrd.proc.pid) if ctrd is not None else None
        return Sample(scenario, client, run, m.wall, m.cpu, m.maxrss, daemon)

    def _containerd(self) -> Any:
        repo_root_on_path()
        from tests.rig.containerd import start_containerd

        return start_containerd(self.scratch.path("containerd"))

    def _stop(self, ctrd: Any) -> None:
        ctrd.stop()
        self.scratch.trash(ctrd.base)

    def _ctr(self, ctrd: Any) -> list[str]:
        return [ctrd.ctr_binary, "--address", ctrd.address, "-n", "bench"]

    def import_cargohold(self, scenario: str, archive: Path, run: int) -> Sample:
        root = self.scratch.path("ch-root")
        s = self._measure(scenario, "cargohold", run,
                          [*self.ch, "--root", str(root), "import", str(archive)])
        self.scratch.trash(root)
        return s

    def import_cargohold_containerd(self, scenario: str, archive: Path, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            return self._measure(scenario, "cargohold --store containerd", run, [
                *self.ch, "--store", "containerd", "--address", ctrd.address,
                "--namespace", "bench", "import", str(archive)], ctrd)
        finally:
            self._stop(ctrd)

    def import_ctr(self, scenario: str, archive: Path, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            return self._measure(scenario, "ctr", run, [
                *self._ctr(ctrd), "images", "import", "--no-unpack", str(archive)], ctrd)
        finally:
            self._stop(ctrd)

    def export_cargohold(self, store: Path, run: int) -> Sample:
        out = self.scratch.path("export") .with_suffix(".tar")
        s = self._measure("export", "cargohold", run,
                          [*self.ch, "--root", str(store), "export", NAME, "-o", str(out)])
        self.scratch.trash(out)
        return s

    def export_ctr(self, archive: Path, run: int) -> Sample:
        ctrd = self._containerd()
        try:
            subprocess.run([*self._ctr(ctrd), "images", "import", "--no-unpack", str(archive)],
                           check=True, capture_output=True)
            out = self.scratch.path("ctr-export").with_suffix(".tar")
            s = self._measure("export", "ctr", run, [
                *self._ctr(ctrd), "images", "export", str(out), NAME], ctrd)
            self.scratch.trash(out)
            return s
        finally:
            self._stop(ctrd)


def setup(scratch: Scratch, size: int) -> tuple[Path, Path, Path]:
    """(OCI tar, docker-archive, a cargohold store holding the image)."""
    from cargohold.imagebuild import samples

    log(f"building the {size // 10**6} MB sample image ...")
    built = samples.big_image(size).build(scratch.path("build"))
    layout = scratch.path("layout")
    (layout / "blobs" / "sha256").mkdir(parents=True)
    digests = [built.root.digest, built.config_descriptor.digest,  # type: ignore[union-attr]
               *(d.digest for d in built.layer_descriptors)]
    for d in digests:
        shutil.copyfile(built.path(d), layout / "blobs" / "sha256" / d.hex)
    entry = {**built.root.to_json(), "annotations": {"io.containerd.image.name": NAME,
                                                    "org.opencontainers.image.ref.name": "1"}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    store = scratch.path("store")
    env = {**os.environ, "CARGOHOLD_RESERVE": "0"}
    ch = cargohold_command()
    subprocess.run([*ch, "--root", str(store), "import", str(layout)], check=True, env=env,
                   capture_output=True)
    oci_tar = scratch.path("oci").with_suffix(".tar")
    subprocess.run([*ch, "--root", str(store), "export", NAME, "-o", str(oci_tar)], check=True,
                   env=env, capture_output=True)
    docker = scratch.path("docker").with_suffix(".tar")
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is missing: apt-get install skopeo")
    subprocess.run(["skopeo", "copy", f"oci-archive:{oci_tar}", f"docker-archive:{docker}:{NAME}"],
                   check=True, capture_output=True)
    return oci_tar, docker, store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--big-mb", type=int, default=300)
    ap.add_argument("--tmp", default=None, help="scratch parent dir [default: $TMPDIR]")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.import starts private containerds: run it as root")
    scratch = Scratch(parent=args.tmp)
    samples: list[Sample] = []
    try:
        oci_tar, docker, store = setup(scratch, args.big_mb * 10**6)
        with Spawner() as spawner:
            b = ImportBench(scratch, spawner)
            for run in range(args.runs):
                for scenario, archive in (("import, OCI tar", oci_tar),
                                          ("import, docker-archive", docker)):
                    order = [b.import_cargohold, b.import_ctr, b.import_cargohold_containerd]
                    if run % 2:
                        order.reverse()
                    for f in order:
                        log(f"run {run}: {scenario}: {f.__name__}")
                        samples.append(f(scenario, archive, run))
                pair = [lambda r: b.export_cargohold(store, r), lambda r: b.export_ctr(oci_tar, r)]
                for g in (pair if run % 2 == 0 else pair[::-1]):
                    samples.append(g(run))
    finally:
        scratch.cleanup()
    report(samples, args.json, oci_tar_size=0)
    return 0


def report(samples: list[Sample], as_json: bool, oci_tar_size: int) -> None:
    keys = list(dict.fromkeys((s.scenario, s.client) for s in samples))
    rows = []
    med: dict[tuple[str, str], float] = {}
    for k in keys:
        mine = [s for s in samples if (s.scenario, s.client) == k]
        med[k] = median(s.wall for s in mine)
        daemon = [s.daemon_peak_rss for s in mine if s.daemon_peak_rss]
        rows.append([k[0], k[1], f"{med[k]:.2f} s", f"{median(s.cpu for s in mine):.2f} s",
                     f"{max(s.peak_rss for s in mine) / MIB:.0f} MiB",
                     f"{max(daemon) / MIB:.0f} MiB" if daemon else ""])
    ratios = {}
    for scen in dict.fromkeys(s.scenario for s in samples):
        ctr = med.get((scen, "ctr"))
        for client in ("cargohold", "cargohold --store containerd"):
            if ctr and (scen, client) in med:
                ratios[f"{scen}, {client} / ctr"] = med[(scen, client)] / ctr
    if as_json:
        print(json.dumps({"samples": [asdict(s) for s in samples], "ratios": ratios}, indent=2))
        return
    print(markdown_table(["scenario", "client", "wall (median)", "CPU", "peak RSS",
                          "containerd peak RSS"], rows))
    print()
    for k, v in ratios.items():
        print(f"ratio {k} (wall, median): {v:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
