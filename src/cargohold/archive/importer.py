"""``import``: archives into a store, through fetch's own path (see :mod:`.source`).

A directory that is not itself an OCI layout is a directory of archives (k3s / rke2's
``agent/images``): each ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.zst``, ``.tzst`` file and each
OCI layout sub-directory is one archive. Each archive succeeds or fails on its own. A file
imported before, unchanged (same size and mtime) and whose images are all still recorded at
the digests it gave, is skipped without being read: importing at every boot is cheap. The
cache is ``<root>/imports/<store key>.json``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.archive.files import PATH_HINT
from cargohold.archive.formats import Archive
from cargohold.archive.source import ArchiveSource, SpaceCheck, open_source
from cargohold.errors import CargoholdError, InvalidInputError, NotFoundError
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.reference import Reference
from cargohold.pull.fetch import Fetcher, FetchEvents, FetchFailure, FetchResult, RecordPolicy
from cargohold.store.interfaces import Store

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")


def is_layout_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "index.json").exists() or (p / "manifest.json").exists())


def expand(paths: Sequence[Path]) -> list[Path]:
    """Archives named on the command line, a directory of archives replaced by its archives."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir() and not is_layout_dir(p):
            try:
                children = sorted(p.iterdir())
            except OSError as e:
                raise InvalidInputError(f"{p}: cannot list: {e.strerror}") from None
            out.extend(
                c for c in children
                if (c.is_file() and c.name.endswith(ARCHIVE_SUFFIXES)) or is_layout_dir(c)
            )
        else:
            out.append(p)
    return out


@dataclass
class ArchiveOutcome:
    """What became of one archive file."""

    path: Path
    refs: list[Reference] = field(default_factory=list)
    skipped: bool = False
    error: CargoholdError | None = None
    #: of a skipped archive: its images, still recorded (name, target)
    recorded: list[tuple[str, Descriptor]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), "images": [str(r) for r in self.refs],
                               "skipped": self.skipped}
        if self.error is not None:
            out["error"] = self.error.kind
            out["message"] = self.error.message
            out["exit_code"] = self.error.exit_code
        return out


class ImportCache:
    """size + mtime of each imported file and the digests its images were recorded at, per
    set of options that change an import's outcome (``options``: records, pin, unpack,
    platforms, base name; the store is the cache file's own key). An archive is remembered
    only once everything asked of it is done (:meth:`ImportRun.remember`), so an interrupted
    import is read (and finished) again, and a new option is never skipped."""

    def __init__(self, path: Path, options: str = "") -> None:
        self.path = path
        self.options = options
        self._lock = threading.Lock()
        try:
            doc = json.loads(path.read_text())
            self.entries: dict[str, Any] = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _stamp(p: Path) -> list[int]:
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]

    def _key(self, p: Path) -> str:
        return f"{p.resolve()}\n{self.options}" if self.options else str(p.resolve())

    def unchanged(self, p: Path, images: Any) -> list[tuple[str, Descriptor]] | None:
        """The images (name, recorded target) of an archive imported before with these
        options, unchanged since and all still recorded at its digests; else None."""
        e = self.entries.get(self._key(p))
        try:
            if not isinstance(e, dict) or p.is_dir() or e.get("stamp") != self._stamp(p):
                return None
        except OSError:
            return None
        names = e.get("images")
        if not isinstance(names, dict) or not names:
            return None
        found: list[tuple[str, Descriptor]] = []
        for name, digest in names.items():
            try:
                target = images.get(name).target
            except NotFoundError:
                return None
            if str(target.digest) != digest:
                return None
            found.append((name, target))
        return found

    def remember(self, p: Path, results: Sequence[FetchResult]) -> None:
        try:
            if p.is_dir():
                return
            stamp = self._stamp(p)
        except OSError:
            return
        prefix = f"{p.resolve()}\n"
        with self._lock:
            for k in [k for k, e in self.entries.items() if k.startswith(prefix)
                      and not (isinstance(e, dict) and e.get("stamp") == stamp)]:
                del self.entries[k]  # the file changed: its other options' entries are stale
            self.entries[self._key(p)] = {
                "stamp": stamp,
                "images": {r.name: str(r.target.digest) for r in results},
            }

    def save(self) -> bool:
        """Write the cache; False when it cannot be written (the next import reads all)."""
        from cargohold.atomicfile import write_json_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.entries)
        except (OSError, CargoholdError):
            return False
        return True


def cache_options(**options: Any) -> str:
    """The cache key of the options that change an import's outcome."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class ImportRun:
    outcomes: list[ArchiveOutcome]
    results: list[FetchResult | FetchFailure]

    def remember(self, cache: ImportCache) -> None:
        """Record in ``cache`` (and save it) each archive read and imported without error:
        call once everything asked of the import (records, pins, unpack) is done."""
        by_ref = {str(r.ref): r for r in self.results}
        for o in self.outcomes:
            if o.skipped or o.error is not None:
                continue
            mine = [by_ref.get(str(r)) for r in o.refs]
            ok = [r for r in mine if isinstance(r, FetchResult)]
            if len(ok) == len(o.refs):
                cache.remember(o.path, ok)
        cache.save()


def import_archives(
    store: Store,
    paths: Sequence[Path],
    *,
    platforms: Sequence[Platform],
    all_platforms: bool = False,
    base_name: Reference | None = None,
    records: RecordPolicy | None = None,
    jobs: int = 4,
    events: FetchEvents | None = None,
    check: SpaceCheck | None = None,
    cache: ImportCache | None = None,
    cancel: threading.Event | None = None,
) -> ImportRun:
    """Import each archive of ``paths``; a failing archive does not stop the others.

    Raises only for what concerns them all (two archives naming one image differently).
    ``cache`` skips archives imported before; nothing is written to it here (see
    :meth:`ImportRun.remember`)."""
    outcomes = [ArchiveOutcome(p) for p in expand(paths)]
    if not outcomes:
        raise NotFoundError(f"no archives in {', '.join(str(p) for p in paths)}",
                            hint=PATH_HINT)
    kw: dict[str, Any] = {"check": check} if check is not None else {}
    sources: list[tuple[ArchiveOutcome, ArchiveSource]] = []
    try:
        for o in outcomes:
            recorded = cache.unchanged(o.path, store.images) if cache is not None else None
            if recorded is not None:
                o.skipped, o.recorded = True, recorded
                continue
            try:
                src = open_source([o.path], store=store, base_name=base_name, **kw)
            except CargoholdError as e:
                o.error = e
                continue
            sources.append((o, src))
            o.refs = src.refs()
        archives: list[Archive] = [a for _, s in sources for a in s.archives]
        combined = ArchiveSource(archives, base_name=base_name, **kw)
        fetcher = Fetcher(store, combined, jobs=jobs, events=events, records=records,
                          cancel=cancel)
        try:
            refs = combined.refs()
            results = fetcher.fetch_all(refs, platforms=platforms,
                                        all_platforms=all_platforms) if refs else []
        finally:
            fetcher.close()
    finally:
        for _, s in sources:
            s.close()
    by_ref = {str(r.ref): r for r in results}
    for o in outcomes:
        mine = [by_ref[str(r)] for r in o.refs if str(r) in by_ref]
        failed = [r for r in mine if isinstance(r, FetchFailure)]
        if failed:
            o.error = failed[0].error
    return ImportRun(outcomes, results)


def cache_path(root: Path, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return root / "imports" / f"{safe}.json"
