"""Resolving a spec's images (plan, bake): a line per image on stderr."""

from __future__ import annotations

import threading

from cargohold.catalog import CatalogImage, ResolveEvents
from cargohold.cli.output import Output
from cargohold.cli.progress import failure_text
from cargohold.errors import CargoholdError
from cargohold.oci.reference import Reference


class ResolveProgress(ResolveEvents):
    """Resolving a spec's images (plan, bake): one line per image resolved or failed on
    stderr, on a TTY and off it (--no-progress turns off only the live display; -q these
    lines); NDJSON events instead with --json when ``json_events``."""

    def __init__(self, out: Output, *, json_events: bool = True) -> None:
        self.out = out
        self.json_events = json_events
        self.total = 0
        self.count = 0
        self._lock = threading.Lock()

    def _next(self) -> str:
        with self._lock:
            self.count += 1
            return f"[{self.count}/{self.total}]"

    def resolving(self, total: int) -> None:
        self.total = total

    def image_resolved(self, image: CatalogImage) -> None:
        n = self._next()
        if self.out.json_mode:
            if self.json_events:
                self.out.event("spec_resolved", ref=image.image.name, digest=str(image.target.digest),
                               platforms=list(image.platforms))
            return
        self.out.info(f"resolved {image.image.name}  {str(image.target.digest)[:19]}  {n}")

    def image_unresolved(self, ref: Reference, error: CargoholdError) -> None:
        n = self._next()
        if self.out.json_mode:
            if self.json_events:
                self.out.event("spec_unresolved", ref=str(ref), error=error.kind,
                               message=error.message)
            return
        self.out.info(f"failed   {failure_text(ref, error)}  {n}")
