"""Resolving many images (plan, bake, fetch): a 404 is asked once, images are resolved
concurrently, and every image resolved or failed is a line on stderr, also off a TTY and
with --no-progress (which turns off only the live display)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.imagebuild.entries import File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.rig.cli import CLI, TEST_ENV, run_cli
from tests.rig.faultproxy import FaultProxy, Rule, running_proxy
from tests.rig.images import push
from tests.rig.services import Registry
from tests.rig.terminal import Terminal

pytestmark = pytest.mark.registry

_n = itertools.count()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with running_proxy(registry.host) as p:
        yield p


def missing_refs(host: str, n: int) -> list[str]:
    k = next(_n)
    return [f"{host}/missing{k}/img{i}:v1" for i in range(n)]


def write_list(path: Path, refs: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in refs))
    return path


def test_bake_of_missing_images_asks_each_once_and_says_so(proxy: FaultProxy,
                                                           tmp_path: Path) -> None:
    refs = missing_refs(proxy.host, 6)
    spec = write_list(tmp_path / "images.txt", refs)
    p = run_cli(tmp_path / "store", "--no-progress", "bake", str(spec), "--plain-http",
                check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    # One HEAD per missing tag: a 404 is final, and never costs a later request a retry.
    heads = sorted(r.path for r in proxy.seen("HEAD", "/manifests/"))
    assert heads == sorted(f"/v2/{r.split('/', 1)[1].rsplit(':', 1)[0]}/manifests/v1"
                           for r in refs)
    assert len(proxy.requests) == len(refs)
    # A progress line per image, off a TTY, with --no-progress.
    failed = [line for line in p.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == len(refs)
    for ref in refs:
        assert sum(ref in line and "not found" in line for line in failed) == 1
    counters = sorted(int(m.group(1)) for line in failed
                      if (m := re.search(r"\[(\d+)/6\]$", line)))
    assert counters == [1, 2, 3, 4, 5, 6]


def test_bake_resolves_images_concurrently(proxy: FaultProxy, tmp_path: Path) -> None:
    refs = missing_refs(proxy.host, 3)
    spec = write_list(tmp_path / "images.txt", refs)
    # Each manifest request waits in the proxy until all three are there at once: one by
    # one, the first would wait out the hold and the gate would never open.
    gate = proxy.add(Rule("gather", method="HEAD", path="/manifests/", times=-1, gather=3,
                          hold_timeout=30))
    run_cli(tmp_path / "store", "--no-progress", "bake", str(spec), "--plain-http", "-j", "3",
            check=False)
    assert gate.reached.is_set()
    assert gate.arrived == 3


def test_plan_prints_a_line_per_resolved_image(registry: Registry, tmp_path: Path) -> None:
    images = [push(registry.host, ImageSpec([LayerSpec([File(f"f{i}", size=1000, seed=i)])]),
                   tmp_path / f"i{i}") for i in range(2)]
    spec = write_list(tmp_path / "images.txt", [p.text for p in images])
    p = run_cli(tmp_path / "store", "--no-progress", "plan", str(spec), "--plain-http")
    resolved = [line for line in p.stderr.splitlines() if line.startswith("resolved ")]
    assert len(resolved) == 2
    for img in images:
        digest = str(img.built.root.digest)[:19]
        assert any(img.text in line and digest in line for line in resolved)
    # -q silences them (and the data on stdout is unchanged).
    q = run_cli(tmp_path / "store", "-q", "plan", str(spec), "--plain-http")
    assert "resolved " not in q.stderr and q.stdout == p.stdout


def test_fetch_of_missing_images_says_so_per_image(proxy: FaultProxy, tmp_path: Path) -> None:
    refs = missing_refs(proxy.host, 3)
    p = run_cli(tmp_path / "store", "--no-progress", "fetch", "--plain-http", *refs,
                check=False)
    assert p.returncode != 0
    assert len(proxy.seen("HEAD", "/manifests/")) == 3
    failed = [line for line in p.stderr.splitlines() if line.startswith("failed ")]
    assert sorted(next(r for r in refs if r in line) for line in failed) == sorted(refs)


def test_on_a_tty_resolution_is_a_counter_and_a_summary(registry: Registry,
                                                        tmp_path: Path) -> None:
    images = [push(registry.host, ImageSpec([LayerSpec([File(f"g{i}", size=1000, seed=40 + i)])]),
                   tmp_path / f"i{i}") for i in range(2)]
    missing = missing_refs(registry.host, 2)
    spec = write_list(tmp_path / "images.txt", [p.text for p in images] + missing)
    t = Terminal([*CLI, "--root", str(tmp_path / "store"), "bake", str(spec), "--plain-http"],
                 rows=10, cols=160, env={**os.environ, **TEST_ENV})
    assert t.wait() != 0  # two images failed
    out = t.all_lines()
    assert sum(line.startswith("resolved 2 of 4 images (2 failed) in ") for line in out) == 1
    assert sorted(next(r for r in missing if r in line)
                  for line in out if line.startswith("failed ")) == sorted(missing)
    assert not any(line.startswith(("resolving images:", "resolved " + images[0].text))
                   for line in out)


def test_fetch_resolves_its_images_concurrently(proxy: FaultProxy, tmp_path: Path) -> None:
    refs = missing_refs(proxy.host, 3)
    gate = proxy.add(Rule("gather", method="HEAD", path="/manifests/", times=-1, gather=3,
                          hold_timeout=30))
    run_cli(tmp_path / "store", "--no-progress", "fetch", "--plain-http", "-j", "3", *refs,
            check=False)
    assert gate.reached.is_set() and gate.arrived == 3


def test_fetch_json_names_each_failed_image(proxy: FaultProxy, tmp_path: Path) -> None:
    refs = missing_refs(proxy.host, 2)
    p = run_cli(tmp_path / "store", "--json", "fetch", "--plain-http", *refs, check=False)
    events = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    failed = [e for e in events if e.get("event") == "image_failed"]
    assert sorted(e["ref"] for e in failed) == sorted(refs)
    assert all(e["error"] == "not_found" for e in failed)


#: Below the client's 60 s read timeout: a request left waiting in the proxy would keep the
#: process alive past it; with the fix the process ends as soon as it is signalled.
EXIT_WAIT = 45.0


@pytest.mark.parametrize(("command", "sig"), [("plan", signal.SIGINT), ("plan", signal.SIGTERM),
                                              ("bake", signal.SIGTERM)])
def test_interrupt_during_resolution_aborts_requests_in_flight(
        proxy: FaultProxy, tmp_path: Path, command: str, sig: int) -> None:
    """Ctrl-C / SIGTERM while the proxy holds every manifest request: the requests in
    flight are aborted (their sockets shut down) and the command exits 130 at once."""
    refs = missing_refs(proxy.host, 4)
    spec = write_list(tmp_path / "images.txt", refs)
    held = proxy.add(Rule("gather", method="HEAD", path="/manifests/", times=-1,
                          gather=len(refs) + 1, hold_timeout=120))  # never all there
    proc = subprocess.Popen([*CLI, "--root", str(tmp_path / "store"), "--no-progress", command,
                             str(spec), "--plain-http"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    try:
        assert held.wait_arrived(2, 120), "the manifest requests never reached the proxy"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=EXIT_WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not held.reached.is_set()  # the proxy still held them: nothing was answered
