"""The layer's tar stream: read (a few chunks ahead), hashed, and parsed into entries.

:class:`Source` buffers the uncompressed stream and puts every byte it reads through sha256
(the diff_id check), optionally reading and hashing in a helper thread (:class:`_Prefetcher`).
:func:`entries` parses the headers (ustar, GNU long names / long links, PAX) into
:class:`Entry` values, refusing what the file system calls would choke on (oversized extended
headers, negative sizes, ids, times and device numbers out of range); the caller consumes the
data of each data-bearing entry (:meth:`Source.copy_to` / :meth:`Source.skip`).

Not supported: GNU sparse files and multi-volume archives (UnsupportedError), PAX global
headers (ignored, as containerd does), ``LIBARCHIVE.xattr.*`` records (ignored; containerd
reads only ``SCHILY.xattr.*``).  A truncated zstd stream reads as a shorter stream; the tar
parser or the diff_id check reports it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cargohold.errors import InvalidInputError, UnsupportedError
from cargohold.interrupts import call_held, held, wait_until
from cargohold.unpack.confined import show_name
from cargohold.unpack.decompress import CHUNK, Reader

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
#: Largest PAX / GNU long-name payload accepted (a hostile layer could claim gigabytes).
MAX_EXTENDED_HEADER = 16 << 20
#: Largest uid / gid a layer may set ((uid_t)-1 means "unchanged" to chown).
MAX_ID = (1 << 32) - 2
#: Entry times must fit a 64-bit time_t (seconds).
_TIME_RANGE = range(-(1 << 63), 1 << 63)
#: Largest device major / minor number (Linux: 12 / 20 bits, glibc makedev: 32 each).
MAX_DEV = (1 << 32) - 1

# Tar type flags.
REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = (
    b"0",
    b"\0",
    b"1",
    b"2",
    b"3",
    b"4",
    b"5",
    b"6",
    b"7",
)
GNU_LONGNAME, GNU_LONGLINK, PAX, PAX_GLOBAL = b"L", b"K", b"x", b"g"
GNU_SPARSE, GNU_MULTIVOL, GNU_VOLHDR, GNU_DUMPDIR = b"S", b"M", b"V", b"D"
DATA_TYPES = frozenset({REG, AREG, CONT})
KNOWN_TYPES = frozenset(
    {REG, AREG, CONT, LNK, SYM, CHR, BLK, DIR, FIFO, GNU_DUMPDIR, GNU_VOLHDR}
)


class SkipCounter(Protocol):
    """Where :func:`entries` counts the entries it skips (PAX global headers)."""

    entries_skipped: int


# ---------------------------------------------------------------- reading the stream


class _Prefetcher:
    """Reads (decompresses) and hashes the stream in a thread, a few chunks ahead.

    Inflate, sha256 and the file system calls all release the GIL, so reading the next
    chunks overlaps with writing the current one.
    """

    DEPTH = 4

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        self.hasher = hashlib.sha256()
        self.t_read = 0.0
        self.t_hash = 0.0
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layer-read", daemon=True)
        #: The consumer is the main thread: its waits poll (cargohold.interrupts).
        self._polled = threading.current_thread() is threading.main_thread()
        try:
            with held():  # Thread.start waits for the thread: not interruptible
                self._thread.start()
        except BaseException:  # a signal held above: the thread has started already
            # Wait for it to stop (at its next chunk) before the caller closes the stream
            # it reads: a decompressor closed under a read in progress crashes (SIGSEGV).
            self.close()
            raise

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                chunk = self._raw.read(CHUNK)
                t1 = time.perf_counter()
                self.t_read += t1 - t0
                if chunk:
                    self.hasher.update(chunk)
                    self.t_hash += time.perf_counter() - t1
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self) -> bytes:
        if self._polled:
            # Only this thread takes from the queue. Its condition taken with signals held
            # (cargohold.interrupts): an interrupt inside would leave it held for good, and
            # the reader thread blocked in put() -- close() waiting for it forever.
            wait_until(lambda: not self._q.empty())
            item = call_held(self._q.get_nowait)
        else:
            item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        if not item:
            call_held(lambda: self._q.put_nowait(item))  # EOF stays EOF (a free slot: taken)
        return item

    def close(self) -> None:
        call_held(self._stop.set)
        if self._thread.ident is None:  # never started
            return
        if self._polled:
            wait_until(lambda: not self._thread.is_alive(), self._stop.set)
        else:
            self._thread.join()


class Source:
    """Buffered reader over the uncompressed stream that hashes every byte it reads."""

    __slots__ = ("_pre", "_raw", "buf", "hasher", "pos", "t_decompress", "t_hash", "t_read",
                 "total")

    def __init__(self, raw: Reader, *, prefetch: bool = False) -> None:
        self._raw = raw
        self._pre = _Prefetcher(raw) if prefetch else None
        self.hasher = self._pre.hasher if self._pre else hashlib.sha256()
        self.buf = b""
        self.pos = 0
        self.total = 0
        #: Time waiting for input (reading + inflating, unless a prefetcher overlaps it).
        self.t_read = 0.0
        self.t_hash = 0.0
        #: Time in the decompressing reader (the prefetcher's, when there is one).
        self.t_decompress = 0.0

    def _chunk(self) -> bytes:
        t0 = time.perf_counter()
        if self._pre is not None:
            chunk = self._pre.read()
            self.t_read += time.perf_counter() - t0
            self.total += len(chunk)
            return chunk
        chunk = self._raw.read(CHUNK)
        t1 = time.perf_counter()
        if chunk:
            self.hasher.update(chunk)
            self.total += len(chunk)
            self.t_hash += time.perf_counter() - t1
        self.t_read += t1 - t0
        self.t_decompress += t1 - t0
        return chunk

    def close(self) -> None:
        if self._pre is not None:
            self._pre.close()
            self.t_hash = self._pre.t_hash
            self.t_decompress = self._pre.t_read

    def block(self) -> bytes | None:
        """The next 512-byte block; None at a clean end of stream."""
        pos = self.pos
        if len(self.buf) - pos >= BLOCK:
            self.pos = pos + BLOCK
            return self.buf[pos : pos + BLOCK]
        part = self.buf[pos:]
        while True:
            chunk = self._chunk()
            if not chunk:
                self.buf, self.pos = b"", 0
                if part:
                    raise InvalidInputError("layer tar is truncated (partial header block)")
                return None
            need = BLOCK - len(part)
            if len(chunk) >= need:
                self.buf, self.pos = chunk, need
                return part + chunk[:need]
            part += chunk

    def _refill(self, truncated: str) -> int:
        """The buffer, used up, replaced by the next chunk; its length. InvalidInputError
        with the message ``truncated`` at the end of the stream."""
        chunk = self._chunk()
        if not chunk:
            raise InvalidInputError(truncated)
        self.buf, self.pos = chunk, 0
        return len(chunk)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (small reads: extended headers)."""
        parts: list[bytes] = []
        while n:
            avail = len(self.buf) - self.pos
            if not avail:
                avail = self._refill("layer tar is truncated")
            take = min(n, avail)
            parts.append(self.buf[self.pos : self.pos + take])
            self.pos += take
            n -= take
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n:
            avail = len(self.buf) - self.pos
            if not avail:
                avail = self._refill("layer tar is truncated")
            take = min(n, avail)
            self.pos += take
            n -= take

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next ``n`` bytes of the stream to ``fd``."""
        while n:
            avail = len(self.buf) - self.pos
            if not avail:
                avail = self._refill("layer tar is truncated (inside file data)")
            take = n if n < avail else avail
            pos = self.pos
            data: bytes | memoryview
            if pos == 0 and take == avail:
                data = self.buf
            elif take < 65536:
                data = self.buf[pos : pos + take]
            else:
                data = memoryview(self.buf)[pos : pos + take]
            done = os.write(fd, data)
            while done < take:
                done += os.write(fd, data[done:])
            self.pos = pos + take
            n -= take

    def drain(self) -> None:
        """Read (and hash) everything left, e.g. the zero blocks after end-of-archive."""
        self.buf, self.pos = b"", 0
        while self._chunk():
            pass


# ---------------------------------------------------------------- parsing headers


def _num(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    try:  # the common case first (a base-256 field is not ASCII: int() refuses it)
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        pass
    if field[:1] and field[0] & 0x80:
        n = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            n -= 1 << (8 * (len(field) - 1))
        return n
    text = field.split(b"\0", 1)[0].strip()  # text, then a NUL and garbage
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise InvalidInputError(f"layer tar: invalid numeric field {field!r}") from None


def _check_checksum(block: bytes) -> None:
    field = block[148:156]
    stored = _num(field)
    unsigned = sum(block) - sum(field) + 8 * 32
    if stored == unsigned:
        return
    signed = (
        sum(b - 256 if b > 127 else b for b in block)
        - sum(b - 256 if b > 127 else b for b in block[148:156])
        + 8 * 32
    )
    if stored != signed:
        raise InvalidInputError("layer is not a valid tar (header checksum mismatch)")


def _cstr(field: bytes) -> bytes:
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def _pax_time_ns(value: bytes) -> int:
    """A PAX time ("1700000000.123456789", possibly negative) in nanoseconds."""
    text = value.decode("ascii", "strict").strip()
    neg = text.startswith("-")
    if neg:
        text = text[1:]
    whole, _, frac = text.partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


def _decimal(text: bytes) -> int:
    """Plain ASCII decimal digits (``int()`` would also take signs, blanks and ``_``)."""
    if not text or not text.isdigit():
        raise ValueError(f"not a decimal number: {text!r}")
    return int(text)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:  # NUL padding some writers leave
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise InvalidInputError("layer tar: malformed PAX header")
        try:
            length = _decimal(data[pos:sp])
        except ValueError:
            raise InvalidInputError("layer tar: malformed PAX record length") from None
        stop = pos + length
        if length <= sp - pos or stop > end or data[stop - 1] != 0x0A:
            raise InvalidInputError("layer tar: malformed PAX record")
        key, eq, value = data[sp + 1 : stop - 1].partition(b"=")
        if not eq:
            raise InvalidInputError("layer tar: PAX record without '='")
        records[key] = value
        pos = stop
    return records


@dataclass(slots=True)
class Entry:
    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    has_atime: bool
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None


def entries(src: Source, stats: SkipCounter) -> Iterator[Entry]:
    """Yield the entries of the tar; the caller must consume the data of data-bearing ones."""
    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: dict[bytes, bytes] = {}
    pending = 0  # bytes of extended headers for the coming entry
    while True:
        block = src.block()
        if block is None or block == _ZERO_BLOCK:
            return
        _check_checksum(block)
        typ = block[156:157]
        size = _num(block[124:136])
        if size < 0:
            raise InvalidInputError("layer tar: negative entry size")
        if typ in (GNU_LONGNAME, GNU_LONGLINK, PAX, PAX_GLOBAL):
            pending += size
            if pending > MAX_EXTENDED_HEADER:
                raise InvalidInputError(
                    f"layer tar: more than {MAX_EXTENDED_HEADER} bytes of extended headers "
                    "for one entry"
                )
            data = src.read(size)
            src.skip(-size % BLOCK)
            if typ == GNU_LONGNAME:
                long_name = _cstr(data)
            elif typ == GNU_LONGLINK:
                long_link = _cstr(data)
            elif typ == PAX:
                pax.update(_parse_pax(data))
            else:
                _parse_pax(data)  # validated, then ignored (as containerd does)
                stats.entries_skipped += 1
            continue

        entry = _header_entry(block, typ, size)
        if long_name is not None:
            entry.name = long_name
        if long_link is not None:
            entry.linkname = long_link
        if pax:
            _apply_pax(entry, pax)
        long_name = long_link = None
        pending = 0
        if pax:
            pax = {}
            if not entry.has_atime:
                entry.atime_ns = entry.mtime_ns  # PAX may have changed mtime
        if typ == AREG and entry.name.endswith(b"/"):
            entry.type = DIR  # old tars mark directories by a trailing slash only
        _check_entry(entry)
        yield entry


#: name, mode, uid, gid, (size, skipped), mtime: the fields every header needs, in one call.
_HEADER = struct.Struct("100s8s8s8s12x12s")


def _header_entry(block: bytes, typ: bytes, size: int) -> Entry:
    """The entry a ustar / GNU header block describes (before long names and PAX apply)."""
    raw_name, raw_mode, raw_uid, raw_gid, raw_mtime = _HEADER.unpack_from(block)
    magic = block[257:263]
    name = _cstr(raw_name)
    if magic == b"ustar\x00" and block[345]:
        prefix = _cstr(block[345:500])
        name = prefix + b"/" + name
    mtime_ns = _num(raw_mtime) * 1_000_000_000
    has_atime = magic == b"ustar " and block[345] not in (0, 0x20)  # GNU: atime at 345
    is_dev = typ in (CHR, BLK) and magic.startswith(b"ustar")
    return Entry(
        name,
        typ,
        _num(raw_mode),
        _num(raw_uid),
        _num(raw_gid),
        size,
        mtime_ns,
        _num(block[345:357]) * 1_000_000_000 if has_atime else mtime_ns,
        has_atime,
        _cstr(block[157:257]) if typ in (LNK, SYM) else b"",
        _num(block[329:337]) if is_dev else 0,
        _num(block[337:345]) if is_dev else 0,
        None,
    )


def _check_entry(e: Entry) -> None:
    """Header values the file system calls would choke on (OverflowError, ValueError)."""
    if not (0 <= e.uid <= MAX_ID and 0 <= e.gid <= MAX_ID):
        raise InvalidInputError(f"{_what(e)}: uid/gid {e.uid}/{e.gid} out of range")
    if not (e.mtime_ns // 1_000_000_000 in _TIME_RANGE
            and e.atime_ns // 1_000_000_000 in _TIME_RANGE):
        raise InvalidInputError(f"{_what(e)}: time out of range")
    if not (0 <= e.devmajor <= MAX_DEV and 0 <= e.devminor <= MAX_DEV):
        raise InvalidInputError(
            f"{_what(e)}: device number {e.devmajor}:{e.devminor} out of range"
        )
    if e.xattrs and any(b"\0" in k for k in e.xattrs):
        raise InvalidInputError(f"{_what(e)}: an xattr name contains a NUL byte")


def _what(e: Entry) -> str:
    return f"layer tar: entry {show_name(e.name)}"


def _apply_pax(entry: Entry, pax: dict[bytes, bytes]) -> None:
    try:
        for key, value in pax.items():
            if key == b"path":
                if value:
                    entry.name = value
            elif key == b"linkpath":
                if value:
                    entry.linkname = value
            elif key == b"size":
                entry.size = int(value) if value.startswith(b"-") else _decimal(value)
            elif key == b"uid":
                entry.uid = int(value) if value.startswith(b"-") else _decimal(value)
            elif key == b"gid":
                entry.gid = int(value) if value.startswith(b"-") else _decimal(value)
            elif key == b"mtime":
                entry.mtime_ns = _pax_time_ns(value)
            elif key == b"atime":
                entry.atime_ns = _pax_time_ns(value)
                entry.has_atime = True
            elif key.startswith(b"SCHILY.xattr."):
                if entry.xattrs is None:
                    entry.xattrs = {}
                entry.xattrs[key[13:]] = value
            elif key.startswith(b"GNU.sparse."):
                raise UnsupportedError("layer tar holds a GNU sparse file, which is not supported")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError("layer tar: malformed PAX value") from None
    if entry.size < 0:
        raise InvalidInputError("layer tar: negative entry size")

