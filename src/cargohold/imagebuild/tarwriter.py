"""Deterministic, streaming tar writer for layer entries.

Formats:

* ``"pax"`` (the default): plain ustar headers, plus a PAX extended header (``x``)
  only for what ustar cannot hold: names or link names over 100 bytes or not ASCII,
  xattrs (``SCHILY.xattr.<name>``), uid/gid/size/mtime out of the octal range, large
  device numbers (``SCHILY.devmajor``/``devminor``).
* ``"gnu"``: GNU headers (``ustar  \\0`` magic); long names and link names as
  ``././@LongLink`` entries (types ``L``/``K``), big numbers in base-256. No xattrs.
* ``"ustar"``: strict POSIX ustar; long names split into prefix/name when possible;
  anything not representable raises InvalidInputError.

The same entries always give the same bytes: entries in the given order, uname/gname
empty, mtime from the entry, extension headers named ``././@PaxHeader`` /
``././@LongLink`` with fixed fields, and two 512-byte zero blocks at the end (no
padding to a 10 KiB record). Names are written exactly as given (directories get a
trailing ``/``); nothing is sanitised. Contents are streamed, so memory does not
grow with file or layer size.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cargohold.errors import InvalidInputError
from cargohold.imagebuild.entries import (
    BlockDevice,
    CharDevice,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
)

TarFormat = Literal["pax", "gnu", "ustar"]
FORMATS: tuple[str, ...] = ("pax", "gnu", "ustar")

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
PAX_HEADER = b"x"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"

_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_PAX_NAME = b"././@PaxHeader"
_GNU_NAME = b"././@LongLink"
#: Header number fields that overflow into these PAX records in the pax format.
_PAX_NUMBER_KEYS = {
    "uid": "uid",
    "gid": "gid",
    "size": "size",
    "mtime": "mtime",
    "devmajor": "SCHILY.devmajor",
    "devminor": "SCHILY.devminor",
}


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


@dataclass(slots=True)
class _Header:
    """One member's header fields, before encoding into a format."""

    name: bytes
    type: bytes
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    linkname: bytes = b""
    uname: bytes = b""
    gname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    extra_pax: Mapping[str, str | bytes] = field(default_factory=dict)
    raw: bool = False


def _enc(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _header_for(entry: Entry) -> tuple[_Header, File | bytes | None]:
    """Header fields for an entry and what supplies its data (a File, bytes, or none)."""
    if isinstance(entry, File):
        return (
            _Header(
                _enc(entry.path),
                REGTYPE,
                entry.content_size(),
                entry.mode,
                entry.uid,
                entry.gid,
                entry.mtime,
                xattrs=entry.xattrs,
            ),
            entry,
        )
    if isinstance(entry, Dir):
        name = entry.path if entry.path.endswith("/") else entry.path + "/"
        h = _Header(_enc(name), DIRTYPE, 0, entry.mode, entry.uid, entry.gid, entry.mtime)
        h.xattrs = entry.xattrs
        return h, None
    if isinstance(entry, Symlink):
        h = _Header(_enc(entry.path), SYMTYPE, 0, 0o777, entry.uid, entry.gid, entry.mtime)
        h.linkname = _enc(entry.target)
        h.xattrs = entry.xattrs
        return h, None
    if isinstance(entry, Hardlink):
        h = _Header(_enc(entry.path), LNKTYPE, 0, entry.mode, entry.uid, entry.gid, entry.mtime)
        h.linkname = _enc(entry.target)
        return h, None
    if isinstance(entry, Whiteout | Opaque):
        return _Header(_enc(entry.tar_name), REGTYPE, 0, 0o644, mtime=entry.mtime), None
    if isinstance(entry, Fifo):
        return (
            _Header(_enc(entry.path), FIFOTYPE, 0, entry.mode, entry.uid, entry.gid, entry.mtime),
            None,
        )
    if isinstance(entry, CharDevice | BlockDevice):
        typ = CHRTYPE if isinstance(entry, CharDevice) else BLKTYPE
        h = _Header(_enc(entry.path), typ, 0, entry.mode, entry.uid, entry.gid, entry.mtime)
        h.devmajor, h.devminor = entry.major, entry.minor
        return h, None
    if isinstance(entry, Raw):
        h = _Header(
            _enc(entry.name),
            entry.type,
            len(entry.content) if entry.size is None else entry.size,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime,
            linkname=_enc(entry.linkname),
            uname=_enc(entry.uname),
            gname=_enc(entry.gname),
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            extra_pax=entry.pax,
            raw=True,
        )
        return h, entry.content
    raise InvalidInputError(f"not a layer entry: {entry!r}")


# --------------------------------------------------------------------------- encoding


def _octal_fits(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _octal(value: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, value) + b"\0"


def _base256(value: int, width: int) -> bytes:
    """GNU base-256: high bit of the first byte set, big-endian two's complement."""
    bits = 8 * width - 1
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise InvalidInputError(f"number {value} does not fit a {width}-byte tar field")
    data = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes([data[0] | 0x80]) + data[1:]


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


def _block(
    name: bytes,
    typ: bytes,
    *,
    mode: bytes,
    uid: bytes,
    gid: bytes,
    size: bytes,
    mtime: bytes,
    linkname: bytes = b"",
    magic: bytes = _USTAR_MAGIC,
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: bytes = b"",
    devminor: bytes = b"",
    prefix: bytes = b"",
) -> bytes:
    def fixed(value: bytes, width: int) -> bytes:
        return value[:width].ljust(width, b"\0")

    parts = [
        fixed(name, 100),
        mode,
        uid,
        gid,
        size,
        mtime,
        b"        ",  # checksum placeholder: eight spaces
        typ,
        fixed(linkname, 100),
        magic,
        fixed(uname, 32),
        fixed(gname, 32),
        fixed(devmajor, 8),
        fixed(devminor, 8),
        fixed(prefix, 155),
    ]
    buf = b"".join(parts)
    buf += bytes(BLOCK - len(buf))
    assert len(buf) == BLOCK, len(buf)
    chksum = b"%06o\0 " % sum(buf)
    return buf[:148] + chksum + buf[156:]


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a ustar header, or None if the name cannot be split to fit."""
    if len(name) <= 100:
        return b"", name
    # the prefix is everything before some '/', at most 155 bytes; the rest <= 100
    for i in range(min(len(name) - 1, 155), 0, -1):
        if name[i : i + 1] == b"/" and len(name) - i - 1 <= 100 and len(name) - i - 1 > 0:
            return name[:i], name[i + 1 :]
    return None


def _number_fields(h: _Header, fmt: TarFormat, what: str, pax: dict[str, bytes]) -> dict[str, bytes]:
    """The header's numeric fields: octal where they fit, else base-256 (gnu) or a pax
    record (added to ``pax``; the field then holds 0); InvalidInputError otherwise."""
    numbers = {
        "mode": (h.mode & 0o7777777 if h.raw else h.mode & 0o7777, 8),
        "uid": (h.uid, 8),
        "gid": (h.gid, 8),
        "size": (h.size, 12),
        "mtime": (h.mtime, 12),
        "devmajor": (h.devmajor, 8),
        "devminor": (h.devminor, 8),
    }
    fields: dict[str, bytes] = {}
    for key, (value, width) in numbers.items():
        if _octal_fits(value, width):
            fields[key] = _octal(value, width)
        elif fmt == "gnu" and key != "mode":
            fields[key] = _base256(value, width)
        elif fmt == "pax" and key in _PAX_NUMBER_KEYS:
            pax[_PAX_NUMBER_KEYS[key]] = str(value).encode()
            fields[key] = _octal(0, width)
        else:
            raise InvalidInputError(f"{what}: {key} {value} does not fit a {fmt} header")
    return fields


def _encode_header(h: _Header, fmt: TarFormat) -> bytes:
    """The header block(s) of one member: extension headers first, then its own."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown tar format {fmt!r} (expected one of {FORMATS})")
    what = h.name.decode("utf-8", "replace")
    out: list[bytes] = []
    pax: dict[str, bytes] = {}
    fields = _number_fields(h, fmt, what, pax)

    name, prefix, linkname = h.name, b"", h.linkname
    if fmt == "pax":
        if len(name) > 100 or not name.isascii():
            pax["path"] = name
            name = name.decode("ascii", "replace").encode("ascii", "replace")[:100]
        if len(linkname) > 100 or not linkname.isascii():
            pax["linkpath"] = linkname
            linkname = linkname.decode("ascii", "replace").encode("ascii", "replace")[:100]
        for key in ("uname", "gname"):
            val: bytes = getattr(h, key)
            if len(val) > 32 or not val.isascii():
                pax[key] = val
        for xname in sorted(h.xattrs):
            pax["SCHILY.xattr." + xname] = bytes(h.xattrs[xname])
    elif fmt == "gnu":
        if h.xattrs:
            raise InvalidInputError(f"{what}: xattrs need the pax format, not gnu")
        if len(linkname) > 100:
            out.append(_gnu_long(linkname, GNU_LONGLINK))
        if len(name) > 100:
            out.append(_gnu_long(name, GNU_LONGNAME))
    else:  # ustar
        if h.xattrs:
            raise InvalidInputError(f"{what}: xattrs need the pax format, not ustar")
        split = _split_ustar(name)
        if split is None:
            raise InvalidInputError(f"{what}: name too long for ustar ({len(name)} bytes)")
        prefix, name = split
        if len(linkname) > 100:
            raise InvalidInputError(f"{what}: link name too long for ustar")
    for key in ("uname", "gname"):
        if fmt != "pax" and len(getattr(h, key)) > 32:
            raise InvalidInputError(f"{what}: {key} longer than 32 bytes")

    for k, v in h.extra_pax.items():
        pax[k] = _enc(v)
    if pax:
        records = b"".join(_pax_record(k, v) for k, v in pax.items())
        out.append(
            _extension(
                _PAX_NAME, PAX_HEADER, records, devmajor=_octal(0, 8), devminor=_octal(0, 8)
            )
        )

    out.append(
        _block(
            name,
            h.type,
            mode=fields["mode"],
            uid=fields["uid"],
            gid=fields["gid"],
            size=fields["size"],
            mtime=fields["mtime"],
            linkname=linkname,
            magic=_GNU_MAGIC if fmt == "gnu" else _USTAR_MAGIC,
            uname=h.uname,
            gname=h.gname,
            devmajor=fields["devmajor"],
            devminor=fields["devminor"],
            prefix=prefix,
        )
    )
    return b"".join(out)


def _gnu_long(value: bytes, typ: bytes) -> bytes:
    return _extension(_GNU_NAME, typ, value + b"\0", magic=_GNU_MAGIC)


def _extension(
    name: bytes,
    typ: bytes,
    payload: bytes,
    *,
    magic: bytes = _USTAR_MAGIC,
    devmajor: bytes = b"",
    devminor: bytes = b"",
) -> bytes:
    """An extension member (PAX ``x`` header, GNU long name or link) carrying ``payload``:
    its header with the fixed fields (mode 0644, owner 0, mtime 0), the payload, padding."""
    header = _block(
        name,
        typ,
        mode=_octal(0o644, 8),
        uid=_octal(0, 8),
        gid=_octal(0, 8),
        size=_octal(len(payload), 12),
        mtime=_octal(0, 12),
        magic=magic,
        devmajor=devmajor,
        devminor=devminor,
    )
    return header + payload + _pad(len(payload))


# --------------------------------------------------------------------------- writing


class TarWriter:
    """Write entries one by one to ``out``; ``close()`` writes the end-of-archive blocks.

    Does not close ``out``. ``bytes_written`` counts everything written so far.
    """

    def __init__(self, out: Writable, *, format: TarFormat = "pax") -> None:
        if format not in FORMATS:
            raise InvalidInputError(f"unknown tar format {format!r} (expected one of {FORMATS})")
        self._out = out
        self.format: TarFormat = format
        self.bytes_written = 0
        self._closed = False

    def _write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.bytes_written += len(data)

    def members(self, entry: Entry) -> Iterator[bytes]:
        """The bytes of one member (headers, data, padding) as chunks, without writing."""
        header, data = _header_for(entry)
        yield _encode_header(header, self.format)
        if isinstance(data, File):
            written = 0
            for chunk in data.iter_content(header.size):
                yield chunk
                written += len(chunk)
            if written != header.size:  # pragma: no cover - iter_content guarantees it
                raise InvalidInputError(f"{data.path}: wrote {written} of {header.size} bytes")
            yield _pad(written)
        elif data:
            yield data
            yield _pad(len(data))

    def add(self, entry: Entry) -> None:
        if self._closed:
            raise InvalidInputError("tar writer is closed")
        for chunk in self.members(entry):
            self._write(chunk)

    def add_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def close(self) -> None:
        if not self._closed:
            self._write(END_OF_ARCHIVE)
            self._closed = True


def write_tar(entries: Iterable[Entry], out: Writable, *, format: TarFormat = "pax") -> int:
    """Write a complete tar of ``entries`` to ``out``; returns the number of bytes written."""
    writer = TarWriter(out, format=format)
    writer.add_all(entries)
    writer.close()
    return writer.bytes_written


def tar_bytes(entries: Iterable[Entry], *, format: TarFormat = "pax") -> bytes:
    """The whole tar in memory: for small test layers only."""
    sink = io.BytesIO()
    write_tar(entries, sink, format=format)
    return sink.getvalue()


def iter_tar(entries: Iterable[Entry], *, format: TarFormat = "pax") -> Iterator[bytes]:
    """The tar as a lazy stream of byte chunks (at most 1 MiB of file data each)."""
    writer = TarWriter(io.BytesIO(), format=format)  # members() writes nothing
    for entry in entries:
        for chunk in writer.members(entry):
            if chunk:
                yield chunk
    yield END_OF_ARCHIVE
