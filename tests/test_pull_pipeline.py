"""`pull` unpacks while it fetches: a layer is applied while a later one still downloads."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.rig.cli import CLI, TEST_ENV, last_json, run_cli
from tests.rig.faultproxy import FaultProxy, Rule, running_proxy
from tests.rig.images import Pushed, push
from tests.rig.needs import needs_root
from tests.rig.services import Registry
from tests.test_fetch import records

WAIT = 120.0


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with running_proxy(registry.host) as p:
        yield p


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any] | None]:
    q: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                q.put(json.loads(line))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _held_two_layer_image(registry: Registry, proxy: FaultProxy, tmp_path: Path,
                          seed: int) -> tuple[Pushed, Rule, str]:
    """A small base layer and a 4 MB last layer whose first download the proxy holds after
    1 MiB (until the rule is released). Returns the image, the rule and the ref through the
    proxy."""
    spec = ImageSpec([
        LayerSpec([Dir("base"), File("base/f", size=200_000, seed=seed)]),
        LayerSpec([Dir("big"), File("big/f", size=4_000_000, seed=seed + 1)],
                  compression="none"),
    ], cmd=["/bin/true"])
    pushed = push(registry.host, spec, tmp_path / "img")
    last = pushed.built.layer_descriptors[-1]
    rule = proxy.add(Rule("pause", method="GET", path=f"/blobs/{re.escape(str(last.digest))}$",
                          cut_after=1 << 20, times=1))
    return pushed, rule, f"{proxy.host}/{pushed.ref.path}:v1"


@needs_root("overlay snapshots")
def test_first_layer_unpacked_while_the_last_downloads(registry: Registry, proxy: FaultProxy,
                                                        tmp_path: Path) -> None:
    pushed, rule, ref = _held_two_layer_image(registry, proxy, tmp_path, seed=901)
    first, last = pushed.built.layer_descriptors
    root = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "--root", str(root), "--json", "pull", "--plain-http", ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    events = _lines(proc)
    try:
        seen: list[dict[str, Any]] = []
        while True:
            ev = events.get(timeout=WAIT)
            assert ev is not None, f"pull ended early: {proc.wait()} {proc.stderr.read()}"  # type: ignore[union-attr]
            seen.append(ev)
            if ev.get("event") == "layer_done" and ev.get("index") == 0:
                break
        # The first layer is applied and committed while the last one is held mid-body.
        assert ev["state"] == "unpacked" and ev["digest"] == str(first.digest)
        assert rule.reached.wait(WAIT)
        assert not any(e.get("event") == "blob_done" and e.get("digest") == str(last.digest)
                       for e in seen)
        assert records(root) == {}  # no record before every blob is in
    finally:
        rule.release.set()
    assert proc.wait(timeout=WAIT) == 0, proc.stderr.read()  # type: ignore[union-attr]
    summary = [e for e in iter(lambda: events.get(timeout=WAIT), None)][-1]
    assert summary["event"] == "summary" and not summary["failed"]
    (img,) = summary["images"]
    assert img["unpack"][0]["chains_unpacked"] == 2
    assert records(root) == {ref: str(pushed.built.root.digest)}


@needs_root("overlay snapshots")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_fetch_and_unpack(registry: Registry, proxy: FaultProxy,
                                          tmp_path: Path, sig: int) -> None:
    """Stopped while a layer download is held: exit 130 without waiting for the download,
    no record, no half-applied snapshot; the rerun completes."""
    pushed, rule, ref = _held_two_layer_image(registry, proxy, tmp_path, seed=911)
    root = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "--root", str(root), "--json", "pull", "--plain-http", ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **TEST_ENV})
    events = _lines(proc)
    try:
        assert rule.reached.wait(WAIT)
        while (ev := events.get(timeout=WAIT)) is not None:
            if ev.get("event") == "layer_done" and ev.get("index") == 0:
                break
        proc.send_signal(sig)
        # Exits while the proxy still holds the body: the download was abandoned.
        assert proc.wait(timeout=WAIT) == 130, proc.stderr.read()  # type: ignore[union-attr]
        assert not rule.release.is_set()
    finally:
        rule.release.set()
    assert records(root) == {}
    assert not [k for k in snapshot_keys(root) if k.startswith("extract-")]
    done = last_json(run_cli(root, "--json", "pull", "--plain-http", ref))
    assert not done["failed"] and records(root) == {ref: str(pushed.built.root.digest)}


def snapshot_keys(root: Path) -> list[str]:
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in c.execute("SELECT key FROM snapshots")]
    finally:
        c.close()
