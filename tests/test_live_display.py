"""The live display under a real pseudo-terminal (read back with a terminal emulator): it
fits a small terminal whatever the number of blobs, shows the active downloads and layer
unpacks and the totals line, and leaves only a short summary in the scrollback. Off a TTY
the output stays one line per event. Plus the unpacker's progress hook."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.oci.descriptor import Descriptor
from cargohold.store.open import LocalStore
from cargohold.unpack.image import LayerOutcome, Unpacker, UnpackEvents
from tests.rig.cli import CLI, TEST_ENV, run_cli
from tests.rig.faultproxy import FaultProxy, Rule, running_proxy
from tests.rig.images import Pushed, push
from tests.rig.services import Registry
from tests.rig.terminal import Terminal

pytestmark = pytest.mark.registry

ROWS, COLS = 10, 100
LAYERS = 40
#: Every layer is an uncompressed tar of one 48 KiB file: 40 blobs above this cut.
HOLD_AFTER = 32 * 1024


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with running_proxy(registry.host) as p:
        yield p


@pytest.fixture(scope="module")
def many_blobs(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """An image of 40 layers (42 blobs with its manifest and config)."""
    spec = ImageSpec([LayerSpec([File(f"f{i}", size=48 * 1024, seed=3000 + i)],
                                compression="none") for i in range(LAYERS)],
                     cmd=["/bin/true"])
    return push(registry.host, spec, tmp_path_factory.mktemp("many"))


def through(proxy: FaultProxy, p: Pushed) -> str:
    return f"{proxy.host}/{p.ref.path}:{p.ref.tag}"


def terminal(root: Path, *args: str) -> Terminal:
    return Terminal([*CLI, "--root", str(root), *args], rows=ROWS, cols=COLS,
                    env={**os.environ, **TEST_ENV})


def state_column(rows: list[str]) -> set[int]:
    return {m.start() for r in rows if (m := re.search(r"  (downloading|unpacking) ", r))}


def test_fetch_of_many_blobs_fits_a_10_row_terminal(proxy: FaultProxy, many_blobs: Pushed,
                                                    tmp_path: Path) -> None:
    # Every layer download stops after 32 KiB until released: 8 run at once (-j 8), more
    # than fit on the screen with the other lines.
    hold = proxy.add(Rule("pause", method="GET", path=r"/blobs/sha256:", cut_after=HOLD_AFTER,
                          times=-1))
    t = terminal(tmp_path / "store", "fetch", "--plain-http", "-j", "8",
                 through(proxy, many_blobs))
    try:
        screen = t.wait_screen(lambda s: any("more active" in line for line in s)
                               and any(line.startswith("elapsed ") for line in s))
    finally:
        hold.release.set()
    lines = [line for line in screen if line]
    assert len(lines) <= ROWS - 1  # the screen never scrolls
    assert lines[0].startswith("images: 1 resolved")
    active = [line for line in lines if " downloading " in line]
    assert len(active) >= 3
    assert len(state_column(active)) == 1  # fixed columns
    assert re.match(r"\.\.\. and \d+ more active$", lines[-3])
    assert re.match(r"finished: \d+ blobs \(", lines[-2])
    assert lines[-1].startswith("elapsed ") and "downloaded" in lines[-1]  # the totals line
    assert "..." not in lines[-1]
    assert not any(" 0 B/s" in line for line in lines)  # no rate before bytes arrive

    assert t.wait() == 0
    out = t.all_lines()
    # The table is gone: a summary, the result and the totals are all that is left.
    assert len(out) <= 5, out
    assert not any("downloading" in line for line in out)
    assert any(line.startswith("blobs: 42 downloaded") for line in out)
    assert any(line.startswith("elapsed: ") for line in out)


def test_pull_shows_layers_unpacking_live(proxy: FaultProxy, many_blobs: Pushed,
                                          tmp_path: Path) -> None:
    last = many_blobs.built.layer_descriptors[-1]
    hold = proxy.add(Rule("pause", method="GET", path=f"/blobs/{re.escape(str(last.digest))}$",
                          cut_after=HOLD_AFTER, times=1))
    t = terminal(tmp_path / "store", "pull", "--plain-http", through(proxy, many_blobs))
    short = str(last.digest)[:19]
    try:
        # The last layer waits for its blob: it shows as a download and as an unpack.
        screen = t.wait_screen(lambda s: any(line.startswith(f"unpack   {short}") for line in s)
                               and any(line.startswith(f"layers: {LAYERS - 1} of") for line in s))
    finally:
        hold.release.set()
    lines = [line for line in screen if line]
    assert any(line.startswith(f"layer    {short}  downloading") for line in lines)
    assert lines[-1].startswith("elapsed ")
    assert t.wait() == 0
    out = t.all_lines()
    assert len(out) <= 7, out
    assert any(line.startswith(f"layers: {LAYERS} unpacked") for line in out)


def test_off_a_tty_one_line_per_blob(registry: Registry, many_blobs: Pushed,
                                     tmp_path: Path) -> None:
    p = run_cli(tmp_path / "store", "fetch", "--plain-http", many_blobs.text)
    assert "\x1b" not in p.stderr  # no escape sequences, no live display
    done = [line for line in p.stderr.splitlines() if re.match(r"(layer|config|manifest) ", line)]
    assert len(done) == LAYERS + 2
    # Tiny blobs (the manifest) show no rate, never "0 B/s".
    assert not any("0 B/s" in line for line in p.stderr.splitlines())
    manifest = next(line for line in done if line.startswith("manifest "))
    assert not manifest.endswith("/s")


class _Counting(UnpackEvents):
    def __init__(self) -> None:
        self.read: dict[str, int] = {}
        self.started: list[str] = []

    def layer_started(self, chain_id: str, layer: Descriptor) -> None:
        self.started.append(str(layer.digest))

    def layer_progress(self, layer: Descriptor, nbytes: int) -> None:
        key = str(layer.digest)
        self.read[key] = self.read.get(key, 0) + nbytes

    def layer_done(self, outcome: LayerOutcome) -> None:
        pass


def test_unpack_reports_bytes_read_per_layer(registry: Registry, tmp_path: Path) -> None:
    spec = ImageSpec([LayerSpec([Dir("d"), File(f"d/f{i}", size=300_000, seed=70 + i)])
                      for i in range(3)], cmd=["/bin/true"])
    pushed = push(registry.host, spec, tmp_path / "img")
    root = tmp_path / "store"
    run_cli(root, "fetch", "--plain-http", pushed.text)
    events = _Counting()
    with LocalStore(root) as store:
        img = store.images.get(pushed.text)
        with Unpacker(store.content, store.snapshots, store.applier, events=events) as u:
            u.unpack(img.target)
    layers = pushed.built.layer_descriptors
    assert sorted(events.started) == sorted(str(d.digest) for d in layers)
    # The whole compressed blob of every layer is read, in steps (plus, for gzip, a peek
    # at its 8-byte trailer: the display caps a layer's progress at its size).
    for d in layers:
        assert d.size <= events.read[str(d.digest)] <= d.size + 8


def test_no_progress_keeps_lines_on_a_tty(many_blobs: Pushed, tmp_path: Path) -> None:
    t = terminal(tmp_path / "store", "--no-progress", "fetch", "--plain-http", many_blobs.text)
    assert t.wait() == 0
    out = t.all_lines()
    assert sum(1 for line in out if re.match(r"layer +sha256:\w+ +done", line)) == LAYERS


def test_a_failure_prints_above_the_display(proxy: FaultProxy, many_blobs: Pushed,
                                            tmp_path: Path) -> None:
    last = many_blobs.built.layer_descriptors[-1]
    hold = proxy.add(Rule("pause", method="GET", path=f"/blobs/{re.escape(str(last.digest))}$",
                          cut_after=HOLD_AFTER, times=1))
    missing = f"{proxy.host}/no/such:v1"
    t = terminal(tmp_path / "store", "fetch", "--plain-http", through(proxy, many_blobs), missing)
    try:
        screen = t.wait_screen(lambda s: any(line.startswith("failed ") for line in s)
                               and any(" downloading " in line for line in s)
                               and any(line.startswith("elapsed ") for line in s))
    finally:
        hold.release.set()
    lines = [line for line in screen if line]
    # The failure is a line of its own above the display, which is whole below it.
    first = next(i for i, line in enumerate(lines) if line.startswith("failed "))
    assert missing in lines[first] and "not found" in lines[first]
    assert lines[first + 1].startswith("images: ")
    assert lines[-1].startswith("elapsed ")
    assert t.wait() != 0
    out = t.all_lines()
    assert sum(line.startswith("failed ") for line in out) == 1
    assert not any(line.startswith(("elapsed ", "images: ", "layer ")) for line in out), out
