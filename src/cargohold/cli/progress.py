"""Progress: a live display on a TTY, plain lines off it, NDJSON events with --json.

The live display (rich) fits the terminal whatever the number of blobs: the active
downloads and layer unpacks (as many as fit), one line summing up the finished ones, and
the totals line, always. It is transient: when it ends, one or two summary lines are all
it leaves in the scrollback. Off a TTY each finished blob is one line on stderr.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cargohold.cli.output import Output
from cargohold.errors import CargoholdError
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.reference import Reference
from cargohold.pull.fetch import FetchEvents, FetchResult
from cargohold.units import format_rate, format_size

if TYPE_CHECKING:  # the fetch command does not load the unpacker
    from cargohold.unpack.image import LayerOutcome

#: Blobs smaller than this show no rate (a manifest's "rate" is noise: 0 B/s or absurd).
TINY = 64_000
_ACTIVE = ("downloading", "resuming", "unpacking")


@dataclass
class _Row:
    kind: str
    digest: str
    size: int
    state: str = "waiting"
    done: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def got(self) -> int:
        """Bytes of this row moved so far (the whole blob once downloaded)."""
        return self.size if self.state == "done" else self.done

    def rate(self, now: float) -> float | None:
        """Bytes per second, or None when there is no meaningful rate (tiny blob, no time)."""
        if self.size < TINY or not self.started or not self.got:
            return None
        span = (self.finished or now) - self.started
        return self.got / span if span > 0 else None


def _rate_text(rate: float | None) -> str:
    return f"{format_rate(rate)}" if rate is not None else ""


def failure_text(ref: Reference, error: CargoholdError) -> str:
    """``REF: message``, or the message alone when it names the reference already."""
    return error.message if str(ref) in error.message else f"{ref}: {error.message}"


def start_live(out: Output, render: Callable[[], Any]) -> Any:
    """A transient rich Live display of ``render()`` on ``out``'s stderr (a TTY); until
    :func:`stop_live`, lines ``out`` logs print above it."""
    from rich.console import Console
    from rich.live import Live

    live = Live(console=Console(file=out.err), refresh_per_second=8, transient=True,
                get_renderable=render, vertical_overflow="crop")
    live.__enter__()
    console = live.console
    out.above_live = lambda text: console.print(text, markup=False, highlight=False,
                                                emoji=False, soft_wrap=True)
    return live


def stop_live(out: Output, live: Any) -> None:
    out.above_live = None
    live.__exit__(None, None, None)


def render_lines(lines: list[str]) -> Any:
    """Lines for a Live display, each cut at the terminal's width (never wrapped)."""
    from rich.console import Group
    from rich.text import Text

    return Group(*(Text(line, no_wrap=True, overflow="ellipsis") for line in lines))


def row_line(r: _Row, now: float) -> str:
    """One row of fixed column widths (the columns never move while rows come and go)."""
    shown = r.got
    pct = f"{100 * shown // r.size}%" if r.size else "100%"
    return (f"{r.kind:<8} {r.digest[:19]:<19}  {r.state:<11} {pct:>4}  "
            f"{format_size(shown):>10} / {format_size(r.size):<10}  {_rate_text(r.rate(now)):>12}")


class FetchProgress(FetchEvents):
    """Per-blob (and, fed by :class:`~cargohold.cli.unpacking.UnpackProgress`, per-layer)
    state, rendered according to the output mode. Use it as a context manager around the
    work it shows; it may be entered again for a later phase (bake)."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.rows: dict[str, _Row] = {}
        self.layers: dict[str, _Row] = {}
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.images = {"resolved": 0, "done": 0, "failed": 0}
        #: images whose failure a line on stderr showed (the final report skips them)
        self.failures_shown: set[str] = set()
        #: first blob start and last blob end: the download's own time
        self._first_start = 0.0
        self._last_end = 0.0
        self._live: Any = None
        #: rows and layers when the last summary was printed (bake shows two phases)
        self._summarized = (0, 0)

    # -- lifecycle
    def __enter__(self) -> FetchProgress:
        if self.out.live and self._live is None:
            self._live = start_live(self.out, self._render)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is None:
            return
        stop_live(self.out, self._live)
        self._live = None
        for line in self.summary_lines():
            self.out.info(line)

    @property
    def download_seconds(self) -> float:
        """From the first blob's start to the last one's end (or now, while one runs)."""
        with self.lock:
            if not self._first_start:
                return 0.0
            active = any(r.state in _ACTIVE for r in self.rows.values())
            end = time.monotonic() if active or not self._last_end else self._last_end
            return max(0.0, end - self._first_start)

    # -- fetch events (worker threads)
    def _row(self, desc: Descriptor) -> _Row:
        key = str(desc.digest)
        row = self.rows.get(key)
        if row is None:
            row = _Row(mediatypes.kind(desc.media_type), key, desc.size)
            self.rows[key] = row
        return row

    def resolved(self, ref: Reference, desc: Descriptor) -> None:
        with self.lock:
            self.images["resolved"] += 1
        self.out.event("resolved", ref=str(ref), digest=str(desc.digest),
                       media_type=desc.media_type, size=desc.size)
        if not self.out.live and not self.out.json_mode:
            self.out.info(f"resolved {ref}  {str(desc.digest)[:19]}")

    def image_done(self, result: FetchResult) -> None:
        with self.lock:
            self.images["done"] += 1
        self.out.event("image_done", **result.to_json())

    def image_failed(self, ref: Reference, error: CargoholdError) -> None:
        with self.lock:
            self.images["failed"] += 1
        self.out.event("image_failed", ref=str(ref), error=error.kind, message=error.message)
        if not self.out.json_mode and self.out.verbosity >= 0:
            self.out.info(f"failed   {failure_text(ref, error)}")
            with self.lock:
                self.failures_shown.add(str(ref))

    def blob_started(self, ref: Reference, desc: Descriptor, offset: int) -> None:
        now = time.monotonic()
        with self.lock:
            row = self._row(desc)
            row.state = "downloading" if offset == 0 else "resuming"
            row.done = 0
            row.started = now
            if not self._first_start:
                self._first_start = now
        self.out.event("blob_started", digest=str(desc.digest), kind=mediatypes.kind(desc.media_type),
                       size=desc.size, offset=offset)

    def blob_waiting(self, desc: Descriptor) -> None:
        with self.lock:
            self._row(desc).state = "waiting"
        self.out.event("blob_waiting", digest=str(desc.digest),
                       kind=mediatypes.kind(desc.media_type), size=desc.size)
        if not self.out.live and not self.out.json_mode:
            self.out.info(f"{mediatypes.kind(desc.media_type):<8} {str(desc.digest)[:19]}  "
                          "waiting for another writer of this blob")

    def blob_progress(self, desc: Descriptor, nbytes: int) -> None:
        # Hot path: keep it to a dict lookup and an add.
        row = self.rows.get(str(desc.digest))
        if row is not None:
            row.done += nbytes

    def blob_done(self, desc: Descriptor, state: str, transferred: int) -> None:
        now = time.monotonic()
        with self.lock:
            row = self._row(desc)
            row.state = state
            row.finished = now
            if not row.started:
                row.started = now
            if state == "done":
                self._last_end = now
                if not self._first_start:
                    self._first_start = row.started
        self.out.event("blob_done", digest=str(desc.digest), kind=row.kind, size=desc.size,
                       state=state, transferred=transferred)
        if not self.out.live and not self.out.json_mode:
            extra = f"  {_rate_text(row.rate(now))}" if state == "done" and row.rate(now) else ""
            line = f"{row.kind:<8} {row.digest[:19]}  {state:<7} {format_size(desc.size)}{extra}"
            # Blobs already stored are only interesting with -v.
            (self.out.debug if state == "exists" else self.out.info)(line)

    # -- unpack events (fed by UnpackProgress; worker threads)
    def layer_started(self, layer: Descriptor) -> None:
        with self.lock:
            self.layers[str(layer.digest)] = _Row("unpack", str(layer.digest), layer.size,
                                                  "unpacking", started=time.monotonic())

    def layer_progress(self, layer: Descriptor, nbytes: int) -> None:
        row = self.layers.get(str(layer.digest))
        if row is not None:  # capped: a gzip layer's trailer may be read twice
            row.done = min(row.size, row.done + nbytes)

    def layer_done(self, outcome: LayerOutcome) -> None:
        now = time.monotonic()
        with self.lock:
            key = str(outcome.layer.digest)
            row = self.layers.get(key)
            if row is None:
                row = self.layers[key] = _Row("unpack", key, outcome.layer.size, started=now)
            row.state = outcome.state
            row.finished = now
            row.done = row.size

    # -- rendering
    def summary_lines(self) -> list[str]:
        """What is left in the scrollback when the display ends."""
        with self.lock:
            rows = list(self.rows.values())
            layers = list(self.layers.values())
            seen, self._summarized = self._summarized, (len(rows), len(layers))
        out: list[str] = []
        if len(rows) > seen[0]:
            secs = self.download_seconds
            got = sum(r.got for r in rows if r.state == "done")
            n_done = sum(1 for r in rows if r.state == "done")
            rate = f" at {format_rate(got / secs)}" if secs > 0 and got >= TINY else ""
            line = f"blobs: {n_done} downloaded ({format_size(got)} in {secs:.1f} s{rate})"
            line += self._counts(rows, ("exists", "already present"), ("failed", "failed"),
                                 ("waiting", "not started"))
            out.append(line)
        if len(layers) > seen[1]:
            n = sum(1 for r in layers if r.state == "unpacked")
            line = f"layers: {n} unpacked ({format_size(sum(r.size for r in layers if r.state == 'unpacked'))} compressed)"
            line += self._counts(layers, ("exists", "already unpacked"),
                                 ("shared", "by a concurrent unpack"), ("failed", "failed"))
            out.append(line)
        return out

    @staticmethod
    def _counts(rows: list[_Row], *what: tuple[str, str]) -> str:
        parts = []
        for state, label in what:
            n = sum(1 for r in rows if r.state == state)
            if n:
                parts.append(f"{n} {label}")
        return (", " + ", ".join(parts)) if parts else ""

    def lines(self, height: int) -> list[str]:
        """The display's lines for a terminal of ``height`` rows (at most ``height - 1``):
        the images line, the active rows that fit (the oldest first), the finished blobs and
        layers, the totals line."""
        now = time.monotonic()
        with self.lock:
            rows = list(self.rows.values())
            layers = list(self.layers.values())
            images = dict(self.images)
        head: list[str] = []
        if any(images.values()):
            head.append(f"images: {images['resolved']} resolved, {images['done']} fetched"
                        + (f", {images['failed']} failed" if images["failed"] else ""))
        tail: list[str] = []
        if rows:
            finished = [r for r in rows if r.state not in _ACTIVE and r.state != "waiting"]
            got = sum(r.got for r in finished if r.state == "done")
            tail.append(f"finished: {len(finished)} blobs ({format_size(got)}"
                        " downloaded" + self._counts(rows, ("exists", "already present"),
                                                     ("failed", "failed")) + ")")
        if layers:
            done = [r for r in layers if r.state not in _ACTIVE]
            tail.append(f"layers: {len(done)} of {len(layers)} done"
                        + self._counts(layers, ("unpacked", "unpacked"),
                                       ("exists", "already unpacked"), ("shared", "shared"),
                                       ("failed", "failed")))
        totals = f"elapsed {now - self.start:.1f} s"
        if rows:
            got = sum(r.got for r in rows if r.state != "exists")
            secs = self.download_seconds
            rate = f" at {format_rate(got / secs)}" if secs > 0 and got >= TINY else ""
            totals += f"  downloaded {format_size(got)}{rate}"
        tail.append(totals)
        active = sorted((r for r in rows + layers if r.state in _ACTIVE), key=lambda r: r.started)
        room = max(0, height - 1 - len(head) - len(tail))
        shown = active if len(active) <= room else active[: max(0, room - 1)]
        body = [row_line(r, now) for r in shown]
        if len(shown) < len(active) and room:
            body.append(f"... and {len(active) - len(shown)} more active")
        return (head + body + tail)[-max(1, height - 1):]

    def _render(self) -> Any:
        height = self._live.console.size.height if self._live is not None else 25
        return render_lines(self.lines(height))
