"""The live display's lines, with a fake clock: the download's own rate, height caps."""

from __future__ import annotations

import io

import pytest

from cargohold.cli import progress as progress_mod
from cargohold.cli.output import Output
from cargohold.cli.progress import FetchProgress
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.reference import parse_reference


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def layer(i: int, size: int) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_GZIP, Digest("sha256", f"{i:012x}" + "0" * 52), size)


def quiet() -> Output:
    return Output(stderr=io.StringIO(), stdout=io.StringIO(), progress=False)


def test_rate_is_the_downloads_own(clock: Clock) -> None:
    p = FetchProgress(quiet())
    ref = parse_reference("example.com/a:1")
    clock.now += 100  # planning, resolving... before the first blob
    d = layer(1, 10_000_000)
    p.blob_started(ref, d, 0)
    clock.now += 2
    p.blob_progress(d, d.size)
    p.blob_done(d, "done", d.size)
    clock.now += 50  # unpacking, verifying... after the last one
    assert p.download_seconds == 2
    totals = p.lines(25)[-1]
    assert totals.startswith("elapsed 152.0 s") and "at 5.0 MB/s" in totals


def test_many_active_rows_fit_the_height(clock: Clock) -> None:
    p = FetchProgress(quiet())
    ref = parse_reference("example.com/a:1")
    p.resolved(ref, layer(0, 500))
    for i in range(1, 31):
        p.blob_started(ref, layer(i, 1_000_000), 0)
        clock.now += 1
    for i in range(31, 41):
        d = layer(i, 100)
        p.blob_started(ref, d, 0)
        p.blob_done(d, "done", 100)
    for height in (5, 10, 40):
        lines = p.lines(height)
        assert len(lines) <= height - 1
        assert lines[-1].startswith("elapsed ")
        assert lines[-2].startswith("finished: 10 blobs")
    lines = p.lines(10)
    assert lines[0].startswith("images: 1 resolved")
    assert lines[-3] == "... and 25 more active"  # 5 of 30 shown: 9 lines in all
    # The oldest downloads, with fixed columns.
    assert [line[9:28] for line in lines[1:6]] == [f"sha256:{i:012x}" for i in range(1, 6)]
    assert len({line.index("downloading") for line in lines[1:6]}) == 1


def test_tiny_and_idle_blobs_show_no_rate(clock: Clock) -> None:
    p = FetchProgress(quiet())
    ref = parse_reference("example.com/a:1")
    manifest = Descriptor(mt.OCI_MANIFEST, Digest("sha256", "f" * 64), 900)
    idle = layer(2, 5_000_000)
    p.blob_started(ref, manifest, 0)
    p.blob_started(ref, idle, 0)
    clock.now += 1
    rows = [line for line in p.lines(25) if line.startswith(("manifest", "layer"))]
    assert len(rows) == 2 and not any(line.rstrip().endswith("/s") for line in rows)
