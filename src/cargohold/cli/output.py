"""How the CLI talks: data on stdout, logs and progress on stderr, --json for machines."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO


class Output:
    def __init__(
        self,
        *,
        json_mode: bool = False,
        verbosity: int = 0,
        progress: bool = True,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.verbosity = verbosity
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self._lock = threading.Lock()
        #: live progress only on a TTY, never with --json or --no-progress
        self.live = progress and not json_mode and self.err.isatty()
        #: set while a live display owns the terminal: stderr lines are printed above it
        self.above_live: Callable[[str], None] | None = None

    # -- data (stdout)
    def _write(self, stream: TextIO, text: str) -> None:
        # One write per line under a lock: worker threads never interleave lines.
        above = self.above_live if stream is self.err else None
        if above is not None:
            above(text)
            return
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    def data(self, text: str) -> None:
        self._write(self.out, text)

    def json(self, obj: Any) -> None:
        self._write(self.out, json.dumps(obj, sort_keys=True, default=str))

    def event(self, name: str, /, **fields: Any) -> None:
        """A newline-delimited JSON event (only in --json mode)."""
        if self.json_mode:
            self.json({"event": name, **fields})

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for r in cells:
            self.data("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

    # -- logs (stderr)
    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            self._write(self.err, msg)

    def debug(self, msg: str) -> None:
        if self.verbosity >= 1:
            self._write(self.err, msg)

    def warn(self, msg: str) -> None:
        if self.verbosity >= -1:
            self._write(self.err, f"warning: {msg}")

    def error(self, msg: str, hint: str = "") -> None:
        self._write(self.err, f"error: {msg}")
        if hint and self.verbosity >= 0:
            self._write(self.err, f"hint: {hint}")
