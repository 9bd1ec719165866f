"""The cache spec: which images to bake into a node image, and how.

Two formats, chosen by the file name (:func:`load_spec`):

* **TOML** (a name ending in ``.toml``)::

      store = "containerd"          # "embedded" | "containerd"
      namespace = "k8s.io"
      platforms = ["linux/amd64"]   # os/arch[/variant], for every image unless overridden
      budget = "20GiB"              # total disk for content + snapshots
      reserve = "1GiB"              # free space to leave on the file system
      jobs = 4                      # >= 1

      [[image]]
      ref = "registry.k8s.io/pause:3.9"   # required
      critical = true                     # always pulled (unpacked); pinned on containerd
      mode = "auto"                       # "pull" | "fetch" | "auto" (default)
      priority = 1.0                      # >= 0: weight of its first-start penalty
      platforms = ["linux/arm64"]         # optional, overrides the global list

  Every global key is optional (``None`` / empty in :class:`CacheSpec` means "not set
  here": the caller falls back to its settings). Sizes (``budget``, ``reserve``) are a
  whole number of bytes or a string with a unit, see :func:`cargohold.units.parse_size`.

* **A plain list** (any other name, e.g. ``images.txt``): one reference per line; ``#``
  starts a comment (references never contain ``#``); blank lines are ignored. Every
  image is ``mode = "auto"``, ``priority = 1.0``, not critical; nothing global is set. A
  line that looks like TOML (``key = value``, ``[[image]]``) is an error that says to
  name the file ``*.toml``, so a TOML spec under the wrong name cannot be half-read.

Every mistake raises :class:`~cargohold.errors.InvalidInputError` with
``FILE:LINE: FIELD: what is wrong``, e.g.
``cache.toml:12: image[3].mode: must be one of pull, fetch, auto (got "eager")``.
``image[N]`` counts ``[[image]]`` tables from 1 in file order. Unknown keys are errors
(with a "did you mean" for typos), and so are duplicate references (compared after
normalisation: ``nginx`` and ``docker.io/library/nginx:latest`` are the same image) and a
critical image with ``mode = "fetch"`` (a critical image is always pulled).

``tomllib`` reports no positions for values, so the lines come from a small scanner of
the raw text that finds each statement's first line (outside strings, multi-line arrays
and inline tables), the ``[[image]]`` headers and the keys inside each table. For a key
it cannot place (e.g. inline tables ``image = [{ref = "..."}]``) the message names the
nearest enclosing line it knows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cargohold.bake.tomllines import _TomlLines
from cargohold.errors import InvalidInputError
from cargohold.filekind import file_kind
from cargohold.oci.descriptor import Platform
from cargohold.oci.platform import parse_platform
from cargohold.oci.reference import Reference, parse_reference
from cargohold.units import parse_size

__all__ = [
    "MODES",
    "STORES",
    "CacheSpec",
    "ImageEntry",
    "Mode",
    "load_spec",
    "parse_spec",
]

Mode = Literal["pull", "fetch", "auto"]
SpecFormat = Literal["toml", "list"]
MODES: tuple[Mode, ...] = ("pull", "fetch", "auto")
_MODE_BY_NAME: dict[str, Mode] = {m: m for m in MODES}
STORES: tuple[str, ...] = ("embedded", "containerd")

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ImageEntry:
    """One image of the spec.

    ``platforms`` empty means "the spec's global list" (see
    :meth:`CacheSpec.platforms_for`). ``line`` is where the entry starts in the file
    (its ``[[image]]`` header, or its line in a plain list).
    """

    ref: Reference
    mode: Mode = "auto"
    critical: bool = False
    priority: float = 1.0
    platforms: tuple[Platform, ...] = ()
    line: int = 0

    @property
    def requested(self) -> Mode:
        """What the planner must do: ``pull`` for critical images, else ``mode``."""
        return "pull" if self.critical else self.mode


@dataclass(frozen=True)
class CacheSpec:
    """A parsed spec. ``None`` / empty globals were not set in the file."""

    path: str
    format: SpecFormat
    images: tuple[ImageEntry, ...]
    store: str | None = None
    namespace: str | None = None
    platforms: tuple[Platform, ...] = ()
    budget: int | None = None
    reserve: int | None = None
    jobs: int | None = None
    #: sha256 of the file's bytes as read (empty for a spec parsed from text).
    digest: str = ""

    def platforms_for(self, entry: ImageEntry) -> tuple[Platform, ...]:
        """The image's own platforms, else the global ones (empty: the caller's default)."""
        return entry.platforms or self.platforms

    @property
    def critical(self) -> tuple[ImageEntry, ...]:
        return tuple(e for e in self.images if e.critical)


# --------------------------------------------------------------------------- loading


#: What to do about an invalid spec (the message names the file, line and field).
SPEC_HINT = ("fix the spec at the file:line named; examples/cache.toml shows every field "
             "(a plain list spec is one reference per line)")


#: Largest spec file read (a node image's spec is a few KB; more is a wrong path).
SPEC_MAX_BYTES = 16 << 20


def _read_spec_file(p: Path, name: str) -> bytes:
    """The spec's bytes: a regular file or a FIFO (``<(...)``), at most SPEC_MAX_BYTES
    (``/dev/zero`` or a huge file would otherwise be read forever)."""
    try:
        mode = p.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise InvalidInputError(f"cache spec {name} is {file_kind(mode)}, not a file",
                                    hint="pass a spec file (TOML or a list of references)")
        with p.open("rb") as f:
            raw = f.read(SPEC_MAX_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInputError(f"cache spec {name} does not exist") from None
    except OSError as e:
        raise InvalidInputError(f"cache spec {name}: cannot read: {e.strerror or e}") from None
    if len(raw) > SPEC_MAX_BYTES:
        raise InvalidInputError(
            f"cache spec {name} is larger than {SPEC_MAX_BYTES >> 20} MiB",
            hint="a spec names images (a few KB); check the path",
        )
    return raw


def load_spec(path: str | os.PathLike[str], *, format: SpecFormat | None = None) -> CacheSpec:
    """Read and validate a spec file. The format is TOML if the name ends in ``.toml``
    (any case), else a plain list, unless ``format`` says otherwise."""
    p = Path(path)
    name = str(path)
    raw = _read_spec_file(p, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InvalidInputError(f"{name}:{line}: not UTF-8 text") from None
    if format is None:
        format = "toml" if p.suffix.lower() == ".toml" else "list"
    try:
        spec = parse_spec(text.removeprefix("\ufeff"), name=name, format=format)
    except InvalidInputError as e:
        if e.hint_text() == InvalidInputError.hint:  # not a more specific one
            e.instance_hint = SPEC_HINT
        raise
    return replace(spec, digest="sha256:" + hashlib.sha256(raw).hexdigest())


def parse_spec(text: str, *, name: str = "<spec>", format: SpecFormat = "toml") -> CacheSpec:
    """Parse spec text; ``name`` is the file name used in error messages."""
    if format == "toml":
        return _TomlSpec(text, name).parse()
    if format == "list":
        return _parse_list(text, name)
    raise InvalidInputError(f"{name}: unknown spec format {format!r} (toml or list)")


def _show(value: Any) -> str:
    """A value as it would be written in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # pragma: no cover - tomllib values always dump
        return repr(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


_TOMLISH = re.compile(r"^(\[\[?\s*[A-Za-z\"']|[A-Za-z0-9_\"'.-]+\s*=)")


def _parse_list(text: str, name: str) -> CacheSpec:
    images: list[ImageEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if _TOMLISH.match(line):
            raise InvalidInputError(
                f"{name}:{lineno}: ref: {_show(line)} looks like TOML, but a spec is read as "
                "TOML only when its name ends in .toml (else it is a list of references)"
            )
        try:
            ref = parse_reference(line)
        except InvalidInputError as e:
            raise InvalidInputError(f"{name}:{lineno}: ref: {e.message}") from None
        key = str(ref)
        if key in seen:
            raise InvalidInputError(f"{name}:{lineno}: ref: duplicate of line {seen[key]} ({key})")
        seen[key] = lineno
        images.append(ImageEntry(ref=ref, line=lineno))
    if not images:
        raise InvalidInputError(f"{name}:1: no image references (one per line)")
    return CacheSpec(path=name, format="list", images=tuple(images))


_GLOBAL_KEYS = ("store", "namespace", "platforms", "budget", "reserve", "jobs", "image")
_IMAGE_KEYS = ("ref", "mode", "critical", "priority", "platforms")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown key ({hint}known keys: {', '.join(known)})"


class _TomlSpec:
    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.lines = _TomlLines(text)

    def error(self, line: int, field: str, message: str) -> InvalidInputError:
        return InvalidInputError(f"{self.name}:{line}: {field}: {message}")

    def parse(self) -> CacheSpec:
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"at line (\d+)", str(e))
            line = m.group(1) if m else "1"
            raise InvalidInputError(f"{self.name}:{line}: invalid TOML: {e}") from None
        except RecursionError:
            raise InvalidInputError(f"{self.name}: invalid TOML: arrays or tables nested too "
                                    "deeply to read") from None
        for key in doc:
            if key not in _GLOBAL_KEYS:
                raise self.error(self.lines.global_line(key), key, _unknown_key(key, _GLOBAL_KEYS))

        store = self._choice(doc, "store", STORES)
        namespace = self._namespace(doc)
        platforms = self._platforms(
            doc.get("platforms"), "platforms", self.lines.global_line("platforms")
        )
        budget = self._size(doc, "budget", positive=True)
        reserve = self._size(doc, "reserve", positive=False)
        jobs = self._jobs(doc)
        images = self._images(doc)
        return CacheSpec(
            path=self.name,
            format="toml",
            images=images,
            store=store,
            namespace=namespace,
            platforms=platforms,
            budget=budget,
            reserve=reserve,
            jobs=jobs,
        )

    # ---- globals

    def _choice(self, doc: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
        if key not in doc:
            return None
        value = doc[key]
        if value not in choices or not isinstance(value, str):
            raise self.error(
                self.lines.global_line(key), key,
                f"must be one of {', '.join(choices)} (got {_show(value)})",
            )  # fmt: skip
        return value

    def _namespace(self, doc: Mapping[str, Any]) -> str | None:
        if "namespace" not in doc:
            return None
        value = doc["namespace"]
        if not isinstance(value, str) or not _NAMESPACE_RE.fullmatch(value):
            raise self.error(
                self.lines.global_line("namespace"), "namespace",
                "must be letters and digits, separated by '.', '_' or '-' "
                f"(got {_show(value)})",
            )  # fmt: skip
        return value

    def _size(self, doc: Mapping[str, Any], key: str, *, positive: bool) -> int | None:
        if key not in doc:
            return None
        line = self.lines.global_line(key)
        value = doc[key]
        if isinstance(value, float):
            raise self.error(
                line,
                key,
                f'write whole bytes or a string with a unit, like "20GiB" (got {_show(value)})',
            )
        try:
            size = parse_size(value)
        except InvalidInputError as e:
            raise self.error(line, key, e.message) from None
        if positive and size == 0:
            raise self.error(line, key, f"must be more than 0 bytes (got {_show(value)})")
        return size

    def _jobs(self, doc: Mapping[str, Any]) -> int | None:
        if "jobs" not in doc:
            return None
        value = doc["jobs"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(
                self.lines.global_line("jobs"),
                "jobs",
                f"must be an integer >= 1 (got {_show(value)})",
            )
        return value

    def _platforms(self, value: Any, field: str, line: int) -> tuple[Platform, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            raise self.error(
                line, field,
                f"must be a non-empty array of \"os/arch[/variant]\" strings (got {_show(value)})",
            )  # fmt: skip
        out: list[Platform] = []
        for k, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(
                    line,
                    f"{field}[{k}]",
                    f'must be a string like "linux/amd64" (got {_show(item)})',
                )
            try:
                p = parse_platform(item)
            except InvalidInputError as e:
                raise self.error(line, f"{field}[{k}]", e.message) from None
            if p not in out:
                out.append(p)
        return tuple(out)

    # ---- images

    def _images(self, doc: Mapping[str, Any]) -> tuple[ImageEntry, ...]:
        if "image" not in doc:
            raise self.error(1, "image", 'no images: add [[image]] tables with ref = "..."')
        tables = doc["image"]
        if not isinstance(tables, list) or not tables:
            raise self.error(
                self.lines.global_line("image"), "image",
                f"must be an array of tables, written [[image]] (got {_type_name(tables)})",
            )  # fmt: skip
        out: list[ImageEntry] = []
        seen: dict[str, tuple[int, int]] = {}
        for idx, table in enumerate(tables):
            entry = self._image(idx, table)
            key = str(entry.ref)
            if key in seen:
                other, other_line = seen[key]
                raise self.error(
                    self.lines.image_line(idx, "ref"), f"image[{idx + 1}].ref",
                    f"duplicate of image[{other + 1}] at line {other_line} ({key})",
                )  # fmt: skip
            seen[key] = (idx, entry.line)
            out.append(entry)
        return tuple(out)

    def _image(self, idx: int, table: Any) -> ImageEntry:
        field = f"image[{idx + 1}]"
        header = self.lines.image_line(idx)
        if not isinstance(table, dict):
            raise self.error(
                header, field, f'must be a table with ref = "..." (got {_type_name(table)})'
            )

        def line(key: str) -> int:
            return self.lines.image_line(idx, key)

        for key in table:
            if key not in _IMAGE_KEYS:
                raise self.error(line(key), f"{field}.{key}", _unknown_key(key, _IMAGE_KEYS))
        if "ref" not in table:
            raise self.error(header, f"{field}.ref", "required key is missing")
        ref_text = table["ref"]
        if not isinstance(ref_text, str):
            raise self.error(
                line("ref"), f"{field}.ref", f"must be a string (got {_show(ref_text)})"
            )
        try:
            ref = parse_reference(ref_text)
        except InvalidInputError as e:
            raise self.error(line("ref"), f"{field}.ref", e.message) from None

        mode = table.get("mode", "auto")
        if not isinstance(mode, str) or mode not in MODES:
            raise self.error(
                line("mode"),
                f"{field}.mode",
                f"must be one of {', '.join(MODES)} (got {_show(mode)})",
            )
        critical = table.get("critical", False)
        if not isinstance(critical, bool):
            raise self.error(
                line("critical"),
                f"{field}.critical",
                f"must be true or false (got {_show(critical)})",
            )
        if critical and mode == "fetch":
            raise self.error(
                line("mode"), f"{field}.mode",
                "a critical image is always pulled: mode \"fetch\" contradicts critical = true",
            )  # fmt: skip
        priority = table.get("priority", 1.0)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int | float)
            or not math.isfinite(priority)
            or priority < 0
        ):
            raise self.error(
                line("priority"),
                f"{field}.priority",
                f"must be a number >= 0 (got {_show(priority)})",
            )
        platforms = self._platforms(table.get("platforms"), f"{field}.platforms", line("platforms"))
        return ImageEntry(
            ref=ref,
            mode=_MODE_BY_NAME[mode],
            critical=critical,
            priority=float(priority),
            platforms=platforms,
            line=header,
        )
