"""Resolving a spec's images (plan, bake): a line per image on stderr."""

from __future__ import annotations

import threading
import time
from typing import Any

from cargohold.bake.catalog import CatalogImage, ResolveEvents
from cargohold.cli.output import Output
from cargohold.cli.progress import failure_text, render_lines, start_live, stop_live
from cargohold.errors import CargoholdError
from cargohold.oci.reference import Reference


class ResolveProgress(ResolveEvents):
    """Resolving a spec's images (plan, bake). Off a TTY (or with --no-progress, which
    turns off only the live display) one line per image resolved or failed on stderr; on a
    TTY a live counter, the failures as lines above it, and one summary line at the end;
    ``-q`` silences them; with --json NDJSON events instead when ``json_events``."""

    def __init__(self, out: Output, *, json_events: bool = True) -> None:
        self.out = out
        self.json_events = json_events
        self.total = 0
        self.counts = {"resolved": 0, "failed": 0}
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._live: Any = None

    def _count(self, what: str) -> str:
        with self._lock:
            self.counts[what] += 1
            return f"[{sum(self.counts.values())}/{self.total}]"

    def resolving(self, total: int) -> None:
        self.total = total
        self.start = time.monotonic()
        if self.out.live and total and self._live is None:
            self._live = start_live(self.out, self._render)

    def _render(self) -> Any:
        with self._lock:
            ok, failed = self.counts["resolved"], self.counts["failed"]
        line = f"resolving images: {ok + failed} of {self.total}"
        if failed:
            line += f" ({failed} failed)"
        return render_lines([line + f"  elapsed {time.monotonic() - self.start:.1f} s"])

    def finished(self) -> None:
        if self._live is None:
            return
        stop_live(self.out, self._live)
        self._live = None
        ok, failed = self.counts["resolved"], self.counts["failed"]
        self.out.info(f"resolved {ok} of {self.total} images"
                      + (f" ({failed} failed)" if failed else "")
                      + f" in {time.monotonic() - self.start:.1f} s")

    def image_resolved(self, image: CatalogImage) -> None:
        n = self._count("resolved")
        if self.out.json_mode:
            if self.json_events:
                self.out.event("spec_resolved", ref=image.image.name,
                               digest=str(image.target.digest), platforms=list(image.platforms))
        elif self._live is None:
            self.out.info(f"resolved {image.image.name}  {str(image.target.digest)[:19]}  {n}")

    def image_unresolved(self, ref: Reference, error: CargoholdError) -> None:
        n = self._count("failed")
        if self.out.json_mode:
            if self.json_events:
                self.out.event("spec_unresolved", ref=str(ref), error=error.kind,
                               message=error.message)
            return
        self.out.info(f"failed   {failure_text(ref, error)}  {n}")
