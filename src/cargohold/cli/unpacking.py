"""Unpack helpers shared by the commands that unpack (unpack, pull, create, run, bake,
import, bench, calibrate): the unpacker of the settings with its progress, a container
created with its lazy unpack shown, result lines, the ``--platform`` option.
Not a command module: command modules import these helpers from here, not from each other."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cargohold.cli.main import App
from cargohold.cli.output import Output
from cargohold.cli.progress import FetchProgress
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.platform import parse_platform
from cargohold.pull.pipeline import UnpackStore, store_unpacker
from cargohold.runtime.containers import Created, create_container
from cargohold.store.open import LocalStore
from cargohold.units import format_size
from cargohold.unpack.image import (
    STATE_EXISTS,
    STATE_FAILED,
    LayerOutcome,
    Unpacker,
    UnpackEvents,
    UnpackResult,
)


class UnpackProgress(UnpackEvents):
    """One line per layer on stderr, NDJSON events with --json; on a TTY, with a
    ``display``, the layers show live there instead (bytes read of the layer's blob, rate)
    and leave a summary line."""

    def __init__(self, out: Output, *, events: bool = True,
                 display: FetchProgress | None = None) -> None:
        self.out = out
        self.emit_events = events
        self.display = display if display is not None and out.live else None

    def layer_started(self, chain_id: str, layer: Descriptor) -> None:
        if self.display is not None:
            self.display.layer_started(layer)

    def layer_progress(self, layer: Descriptor, nbytes: int) -> None:
        if self.display is not None:
            self.display.layer_progress(layer, nbytes)

    def layer_done(self, outcome: LayerOutcome) -> None:
        if self.display is not None:
            self.display.layer_done(outcome)
            return
        if self.out.json_mode:
            if self.emit_events:
                self.out.event("layer_done", **outcome.to_json())
            return
        o = outcome
        size = format_size(o.uncompressed or o.layer.size)
        extra = f"  {o.seconds:.2f} s" if o.seconds else ""
        line = f"layer    {str(o.layer.digest)[:19]}  {o.state:<8} {size}{extra}"
        log = self.out.debug if o.state == STATE_EXISTS else self.out.info
        log(line)
        if o.state == STATE_FAILED:
            self.out.debug(f"layer {o.layer.digest} (chain {o.chain_id}) failed")


def make_unpacker(app: App, store: UnpackStore, *, jobs: int | None = None,
                  events: UnpackEvents | None = None) -> Unpacker:
    """The store's unpacker with the settings' jobs and reserve; per-layer lines by default."""
    return store_unpacker(store, app.settings, jobs=jobs, events=events or UnpackProgress(app.out))


@contextmanager
def live_unpacker(app: App, store: UnpackStore, *, jobs: int | None = None) -> Iterator[Unpacker]:
    """An unpacker whose layers show live on a TTY (and as lines off it, no JSON events)."""
    with (
        FetchProgress(app.out) as display,
        make_unpacker(app, store, jobs=jobs,
                      events=UnpackProgress(app.out, events=False, display=display)) as unpacker,
    ):
        yield unpacker


def create_with_progress(app: App, store: LocalStore, ref: str, name: str,
                         platform: Platform | None, jobs: int | None) -> Created:
    """:func:`~cargohold.runtime.containers.create_container`, its lazy unpack shown."""
    return create_container(store, ref, name, platform,
                            lambda: live_unpacker(app, store, jobs=jobs))


def parse_platform_option(text: str | None) -> Platform | None:
    return parse_platform(text) if text else None


def summary_line(name: str, r: UnpackResult) -> str:
    """``NAME  PLATFORM  unpacked 2 of 3 layers in 0.41 s (12.3 MiB)`` or ``... already
    unpacked (3 layers)``."""
    if r.already_unpacked:
        what = f"already unpacked ({r.chains_total} layers)"
    else:
        n = r.chains_unpacked + r.chains_shared
        what = f"unpacked {n} of {r.chains_total} layers in {r.seconds:.2f} s"
        if r.bytes_uncompressed:
            what += f" ({format_size(r.bytes_uncompressed)})"
        if r.chains_shared:
            what += f", {r.chains_shared} by a concurrent unpack"
    return f"{name}  {r.platform}  {what}"


def report_unpack(out: Output, name: str, r: UnpackResult) -> None:
    """Text output of one image's unpack: the summary line, then the skipped chains."""
    out.data(summary_line(name, r))
    if not r.already_unpacked:
        for lo in r.layers:
            if lo.state == STATE_EXISTS:
                out.data(f"  skipped layer {lo.index}: chain {lo.chain_id} already unpacked")
