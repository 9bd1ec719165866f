"""Where the statements of a TOML spec are: the line of every table and key, so that a spec
error names its line (tomllib does not say). Moved out of :mod:`cargohold.bake.spec`."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class _Table:
    line: int
    keys: dict[str, int]


_IMAGE_HEADER = re.compile(r"""^\[\[\s*(?:image|"image"|'image')\s*\]\]""")
_HEADER = re.compile(
    r"""^\[\[?\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+))?"""
)
_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]""")


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


def _statement_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the first line of every TOML statement (key/value or
    table header), skipping what is inside strings, arrays and inline tables."""
    out: list[tuple[int, str]] = []
    n = len(text)
    i, line, depth, start = 0, 1, 0, True
    while i < n:
        if start:
            j = i
            while j < n and text[j] in " \t\r":
                j += 1
            start = False
            if j < n and text[j] not in "\n#":
                eol = text.find("\n", j)
                eol = n if eol < 0 else eol
                out.append((line, text[j:eol]))
                if text[j] == "[":  # a table header is one line
                    hash_at = text.find("#", j, eol)
                    i = eol if hash_at < 0 else hash_at
                    continue
            i = j
            continue
        ch = text[i]
        if ch == "\n":
            line += 1
            start = depth == 0
            i += 1
        elif ch == "#":
            eol = text.find("\n", i)
            i = n if eol < 0 else eol
        elif ch in "\"'":
            delim = ch * 3 if text.startswith(ch * 3, i) else ch
            k = i + len(delim)
            while k < n:
                c = text[k]
                if c == "\\" and ch == '"':
                    if text.startswith("\n", k + 1):
                        line += 1
                    k += 2
                    continue
                if text.startswith(delim, k):
                    break
                if c == "\n":
                    if len(delim) == 1:
                        break  # unterminated: tomllib reports it
                    line += 1
                k += 1
            i = k + len(delim) if k < n and text.startswith(delim, k) else k
        else:
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth = max(0, depth - 1)
            i += 1
    return out


class _TomlLines:
    """Where the globals, the ``[[image]]`` tables and their keys are."""

    def __init__(self, text: str) -> None:
        self.globals: dict[str, int] = {}
        self.images: list[_Table] = []
        current: _Table | None = None  # None: the root table
        for line, stmt in _statement_lines(text):
            if stmt.startswith("["):
                if _IMAGE_HEADER.match(stmt):
                    current = _Table(line, {})
                    self.images.append(current)
                    continue
                m = _HEADER.match(stmt)
                if m is None:
                    continue
                first = _unquote(m.group(1))
                second = _unquote(m.group(2)) if m.group(2) else None
                if first == "image" and second is not None and self.images:
                    # [image.x] after [[image]]: a key x of the last image
                    self.images[-1].keys.setdefault(second, line)
                else:
                    self.globals.setdefault(first, line)
                current = _Table(line, {})  # keys below belong to that other table
                continue
            m = _KEY.match(stmt)
            if m is None:
                continue
            key = _unquote(m.group(1))
            if current is None:
                self.globals.setdefault(key, line)
            else:
                current.keys.setdefault(key, line)
            # keys of a non-image table are recorded in a throw-away _Table

    def global_line(self, key: str) -> int:
        return self.globals.get(key, 1)

    def image_line(self, index: int, key: str | None = None) -> int:
        """``index`` is 0-based. Falls back to the table's header, then ``image =``."""
        if index < len(self.images):
            table = self.images[index]
            if key is not None and key in table.keys:
                return table.keys[key]
            return table.line
        return self.globals.get("image", 1)
