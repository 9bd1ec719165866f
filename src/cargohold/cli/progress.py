"""Fetch progress: a live table on a TTY, plain lines off it, NDJSON events with --json."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from cargohold.cli.output import Output, human_bytes
from cargohold.fetch import FetchEvents, FetchResult
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.reference import Reference


@dataclass
class _Row:
    kind: str
    digest: str
    size: int
    state: str = "waiting"
    done: int = 0
    started: float = 0.0
    finished: float = 0.0

    def rate(self, now: float) -> float:
        end = self.finished or now
        span = end - self.started if self.started else 0.0
        return self.done / span if span > 0 else 0.0


class FetchProgress(FetchEvents):
    """Collects per-blob state; renders it according to the output mode."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.rows: dict[str, _Row] = {}
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.transferred = 0
        self._live: Any = None

    # -- lifecycle
    def __enter__(self) -> FetchProgress:
        if self.out.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._render(), console=Console(file=self.out.err), refresh_per_second=8,
                transient=False, get_renderable=self._render,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    # -- events (worker threads)
    def _row(self, desc: Descriptor) -> _Row:
        key = str(desc.digest)
        row = self.rows.get(key)
        if row is None:
            row = _Row(mediatypes.kind(desc.media_type), key, desc.size)
            self.rows[key] = row
        return row

    def resolved(self, ref: Reference, desc: Descriptor) -> None:
        self.out.event("resolved", ref=str(ref), digest=str(desc.digest),
                       media_type=desc.media_type, size=desc.size)
        if not self.out.live and not self.out.json_mode:
            self.out.debug(f"{ref}: resolved to {desc.digest}")

    def blob_started(self, ref: Reference, desc: Descriptor, offset: int) -> None:
        with self.lock:
            row = self._row(desc)
            row.state = "downloading" if offset == 0 else "resuming"
            row.done = 0
            row.started = time.monotonic()
        self.out.event("blob_started", digest=str(desc.digest), kind=mediatypes.kind(desc.media_type),
                       size=desc.size, offset=offset)

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
            self.transferred += transferred
        self.out.event("blob_done", digest=str(desc.digest), kind=row.kind, size=desc.size,
                       state=state, transferred=transferred)
        if not self.out.live and not self.out.json_mode:
            rate = row.rate(now)
            extra = f"  {human_bytes(rate)}/s" if state == "done" and rate else ""
            line = f"{row.kind:<8} {row.digest[:19]}  {state:<7} {human_bytes(desc.size)}{extra}"
            # Blobs already stored are only interesting with -v.
            (self.out.debug if state == "exists" else self.out.info)(line)

    def image_done(self, result: FetchResult) -> None:
        self.out.event("image_done", **result.to_json())

    # -- rendering
    def _render(self) -> Any:
        from rich.table import Table

        now = time.monotonic()
        elapsed = now - self.start
        t = Table(box=None, show_header=False, pad_edge=False)
        with self.lock:
            rows = list(self.rows.values())
        total_done = 0
        for r in rows:
            shown = r.size if r.state in ("done", "exists") else r.done
            total_done += r.done if r.state not in ("exists",) else 0
            pct = f"{100 * shown // r.size:>3}%" if r.size else "100%"
            rate = f"{human_bytes(r.rate(now))}/s" if r.state in ("downloading", "resuming", "done") else ""
            t.add_row(f"{r.kind}-{r.digest[:19]}", r.state, pct,
                      f"{human_bytes(shown)}/{human_bytes(r.size)}", rate)
        mib = total_done / (1 << 20)
        t.add_row("elapsed", f"{elapsed:.1f}s", "", f"total {human_bytes(total_done)}",
                  f"{mib / elapsed if elapsed else 0:.1f} MiB/s")
        return t
