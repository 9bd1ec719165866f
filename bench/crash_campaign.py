"""Crash campaign: kill `pull` and `bake` at random points, on both stores, and check the rerun.

Run from the repository root, as root (a private containerd is started)::

    .venv/bin/python -m bench.crash_campaign                 # 24 trials, seed 14
    .venv/bin/python -m bench.crash_campaign --trials 40 --seed 7 --big-mb 60

Setup: a loopback ``docker-registry`` and a private containerd (tests/rig/containerd.py),
both under a temp directory; two images pushed with cargohold's push code (a ``--big-mb``
MB image of 4 layers and a small one), and a bake spec pulling both.

First one clean run of each (store, command) -- store ``embedded`` (a fresh ``--root``) or
``containerd`` (a fresh namespace), command ``pull`` or ``bake`` -- gives the reference size
of the store and the run's duration. Then each trial (seeded RNG: store and command in turn,
signal SIGKILL or SIGTERM, delay uniform between 0.2 and 0.95 x the clean run's duration) starts
the command on a fresh store, sends the signal after the delay, waits, and checks, without any
manual ``gc``:

* the rerun of the same command completes (exit 0);
* ``verify`` passes (exit 0);
* no lease of a dead process is left (no lease at all: nothing runs on the store then);
* the store's size is within 1 % of the clean run's (embedded: bytes allocated under the
  root; containerd: the namespace's blobs, active ingests and snapshot usage).

stdout: one markdown table (trial, store, command, signal, delay, outcome of the signalled
run, what it left behind (leases, active snapshots, ingests) before anything else opens the
store, then each check) and a summary line; the exit status is 1 if any trial failed. The
delay is measured from the spawn: on a loaded machine some runs finish first ("finished
first"), and a SIGTERM may land before the CLI has set its handler or after it exited
("killed (SIGTERM, no handler)"); the checks hold for those too.
``tests/test_crash_campaign.py`` runs a short version of the same campaign.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/crash_campaign.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cargohold_command, log, markdown_table, repo_root_on_path

repo_root_on_path()

STORES = ("embedded", "containerd")
COMMANDS = ("pull", "bake")
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
TOLERANCE = 0.01
ENV = {"CARGOHOLD_RESERVE": "0", "CARGOHOLD_RETRIES": "2", "CARGOHOLD_BACKOFF": "0.01"}


@dataclass(frozen=True)
class Target:
    """Where the commands run: the registry's images and spec, and the containerd socket."""

    refs: tuple[str, ...]
    spec: Path
    address: str
    workdir: Path


@dataclass
class Trial:
    n: int
    store: str
    command: str
    signal: str
    delay: float
    outcome: str = ""
    left: str = ""
    rerun: str = ""
    verify: str = ""
    dead_leases: int = -1
    size: int = 0
    reference: int = 0

    @property
    def size_ok(self) -> bool:
        return self.reference > 0 and abs(self.size - self.reference) <= TOLERANCE * self.reference

    @property
    def ok(self) -> bool:
        return (self.rerun == "ok" and self.verify == "ok" and self.dead_leases == 0
                and self.size_ok)

    def row(self) -> list[Any]:
        diff = (self.size - self.reference) / self.reference * 100 if self.reference else 0.0
        return [self.n, self.store, self.command, f"SIG{self.signal}", f"{self.delay:.2f} s",
                self.outcome, self.left, self.rerun, self.verify, self.dead_leases,
                f"{self.size / 1e6:.1f} MB ({diff:+.2f} %)", "ok" if self.ok else "FAIL"]


HEADERS = ["trial", "store", "command", "signal", "delay", "outcome",
           "left behind (leases / active snapshots / ingests)", "rerun", "verify",
           "leases after", "size vs clean", "result"]


# --------------------------------------------------------------------------- one store


class StoreUnderTest:
    """A fresh embedded root or containerd namespace, and the commands run on it."""

    def __init__(self, target: Target, kind: str, name: str) -> None:
        self.target = target
        self.kind = kind
        self.root = target.workdir / name
        self.namespace = f"crash-{name}"

    def argv(self, *args: str) -> list[str]:
        glob = ["--root", str(self.root)]
        if self.kind == "containerd":
            glob = ["--store", "containerd", "--address", self.target.address,
                    "--namespace", self.namespace]
        return [*cargohold_command(), *glob, "--no-progress", *args]

    def command(self, command: str) -> list[str]:
        if command == "pull":
            return self.argv("pull", "--plain-http", *self.target.refs)
        return self.argv("bake", "--plain-http", str(self.target.spec))

    def run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=600,
                              env={**os.environ, **ENV}, check=False)

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(command), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, **ENV})

    # -- checks
    def size(self) -> int:
        if self.kind == "embedded":
            from cargohold.store.embedded.snapshots import disk_usage

            return disk_usage(self.root).size
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore(self.target.address, self.namespace) as s:
            total = sum(i.size for i in s.content.walk())
            total += sum(st.offset for st in s.content.list_statuses())
            total += sum(s.snapshots.usage(i.name).size for i in s.snapshots.walk())
        return total

    def leases(self) -> list[dict[str, str]]:
        if self.kind == "embedded":
            from cargohold.store.embedded.store import EmbeddedStore

            with EmbeddedStore(self.root, create=False) as e:
                return [lease.labels for lease in e.leases.list()]
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore(self.target.address, self.namespace) as s:
            return [lease.labels for lease in s.leases.list()]

    def dead_leases(self) -> int:
        """Leases left once the rerun has ended: no process uses this store any more, so
        every one is a dead process's (whatever its labels say)."""
        return len(self.leases())

    def left_behind(self) -> str:
        """What the signalled run left, before anything else opens the store."""
        if self.kind == "embedded":
            if not (self.root / "metadata.db").exists():
                return "no store yet"
            from cargohold.store.embedded.snapshots import DB_FILE, SNAPSHOTS_DIR

            leases = len(self.leases())
            ingests = sum(1 for _ in (self.root / "content" / "ingest").iterdir())
            extracts = 0
            if (self.root / SNAPSHOTS_DIR / DB_FILE).exists():
                from cargohold.store.embedded.snapshots import EmbeddedSnapshotter

                with EmbeddedSnapshotter(self.root) as sn:
                    extracts = sum(1 for i in sn.walk() if i.kind == "active")
            return f"{leases} / {extracts} / {ingests}"
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore(self.target.address, self.namespace) as s:
            return (f"{len(s.leases.list())} / "
                    f"{sum(1 for i in s.snapshots.walk() if i.kind == 'active')} / "
                    f"{len(s.content.list_statuses())}")

    def remove(self) -> None:
        if self.kind == "embedded":
            shutil.rmtree(self.root, ignore_errors=True)
            return
        from cargohold.measure.scratch import clear_namespace
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore(self.target.address, self.namespace) as s:
            clear_namespace(s)


def _status(rc: int) -> str:
    if rc == 0:
        return "finished first"
    if rc == -signal.SIGTERM:
        # Before the CLI set its handler (start-up) or after it is gone (interpreter exit).
        return "killed (SIGTERM, no handler)"
    if rc < 0:
        return f"killed ({signal.Signals(-rc).name})"
    if rc == 130:
        return "interrupted (130)"
    return f"exit {rc}"


def reference(target: Target, kind: str, command: str) -> tuple[int, float]:
    """A clean run's store size and duration."""
    st = StoreUnderTest(target, kind, f"clean-{kind}-{command}")
    t0 = time.monotonic()
    p = st.run(st.command(command))
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"clean {command} on {kind} failed ({p.returncode}):\n{p.stderr}")
    size = st.size()
    st.remove()
    return size, took


def run_trial(target: Target, trial: Trial) -> Trial:
    st = StoreUnderTest(target, trial.store, f"t{trial.n}-{trial.store}-{trial.command}")
    proc = st.spawn(trial.command)
    try:
        proc.wait(timeout=trial.delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(SIGNALS[trial.signal])
    trial.outcome = _status(proc.wait(timeout=600))
    trial.left = st.left_behind()
    p = st.run(st.command(trial.command))
    trial.rerun = "ok" if p.returncode == 0 else f"exit {p.returncode}: {p.stderr[-300:]!r}"
    v = st.run(st.argv("verify"))
    trial.verify = "ok" if v.returncode == 0 else f"exit {v.returncode}"
    trial.dead_leases = st.dead_leases()
    trial.size = st.size()
    if trial.ok:
        st.remove()
    return trial


def plan_trials(n: int, seed: int, durations: dict[tuple[str, str], float],
                stores: Sequence[str] = STORES) -> list[Trial]:
    rng = random.Random(seed)
    combos = [(s, c) for s in stores for c in COMMANDS]
    out = []
    for i in range(n):
        store, command = combos[i % len(combos)]
        sig = rng.choice(sorted(SIGNALS))
        # Past Python's start-up (nothing to break before), up to just after a clean run.
        delay = rng.uniform(0.2, 0.95) * durations[(store, command)]
        out.append(Trial(i + 1, store, command, sig, delay))
    return out


def campaign(target: Target, trials: int, seed: int,
             stores: Sequence[str] = STORES) -> list[Trial]:
    refs: dict[tuple[str, str], tuple[int, float]] = {}
    for kind in stores:
        for command in COMMANDS:
            refs[(kind, command)] = reference(target, kind, command)
            log(f"clean {command} on {kind}: {refs[(kind, command)][0] / 1e6:.1f} MB in "
                f"{refs[(kind, command)][1]:.2f} s")
    planned = plan_trials(trials, seed, {k: v[1] for k, v in refs.items()}, stores)
    done = []
    for t in planned:
        t.reference = refs[(t.store, t.command)][0]
        done.append(run_trial(target, t))
        log(" | ".join(str(c) for c in t.row()))
    return done


# --------------------------------------------------------------------------- setup


def write_spec(path: Path, refs: Sequence[str]) -> Path:
    lines = ['budget = "10GB"', ""]
    for r in refs:
        lines += ["[[image]]", f'ref = "{r}"', 'mode = "pull"', ""]
    path.write_text("\n".join(lines))
    return path


def push_images(host: str, workdir: Path, big_mb: int) -> tuple[str, ...]:
    from tests.rig.images import push

    from cargohold.imagebuild import samples

    big = samples.big_image(big_mb * 1_000_000, layers=4, name="samples/crash-big")
    small = samples.small_images()["app-a"]
    return tuple(push(host, spec, workdir / name).text
                 for name, spec in (("big", big), ("small", small)))


@contextmanager
def environment(workdir: Path, big_mb: int) -> Iterator[Target]:
    from tests.rig.containerd import start_containerd

    from cargohold.devtools.registry import start_registry

    reg = start_registry(workdir / "registry")
    ctrd = None
    try:
        ctrd = start_containerd(workdir / "containerd")
        refs = push_images(reg.host, workdir / "images", big_mb)
        spec = write_spec(workdir / "spec.toml", refs)
        yield Target(refs, spec, ctrd.address, workdir / "stores")
    finally:
        if ctrd is not None:
            ctrd.stop()
            ctrd.cleanup()
        reg.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--big-mb", type=int, default=40)
    ap.add_argument("--tmp", type=Path, default=None, help="work directory [default: a temp dir]")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.crash_campaign starts a private containerd: run it as root")
    tmp = Path(tempfile.mkdtemp(prefix="crash-campaign-", dir=args.tmp))
    t0 = time.monotonic()
    try:
        with environment(tmp, args.big_mb) as target:
            trials = campaign(target, args.trials, args.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown_table(HEADERS, [t.row() for t in trials], align="lllllllllllr"))
    failed = [t for t in trials if not t.ok]
    print(f"\n{len(trials) - len(failed)} of {len(trials)} trials passed "
          f"(seed {args.seed}, {time.monotonic() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
