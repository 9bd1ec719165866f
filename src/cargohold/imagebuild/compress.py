"""Streaming, deterministic layer compression: gzip, zstd or none.

gzip members carry mtime 0, no file name and no extra fields. The default engine is
ISA-L (``isal_zlib``): several times faster than zlib and deterministic for the same
input, level and isal version on the same kind of CPU (ISA-L picks code paths by CPU
features, so bytes may differ between machines; pass ``gzip_engine="zlib"`` for
output that only depends on the system zlib). zstd frames are written by
``zstandard`` single-threaded with a checksum; ``frame_size`` splits the stream into
several concatenated frames (or gzip members), each covering that many input bytes.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import zstandard
from isal import igzip, isal_zlib

from cargohold.errors import InvalidInputError
from cargohold.imagebuild.tarwriter import Writable

Compression = Literal["gzip", "zstd", "none"]
COMPRESSIONS: tuple[str, ...] = ("gzip", "zstd", "none")
GzipEngine = Literal["isal", "zlib"]

#: Default levels: isal 0-3 (2 is its default), zlib 1-9, zstd 1-22.
DEFAULT_LEVELS: dict[str, int] = {"isal": 2, "zlib": 6, "zstd": 3}

#: The uncompressed "empty layer": a tar holding only its two end-of-archive blocks.
EMPTY_TAR = bytes(1024)
EMPTY_TAR_DIGEST = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

#: Docker's well-known gzipped empty layer (32 bytes; gunzips to EMPTY_TAR). Its gzip
#: header has a non-zero mtime, so no deterministic compressor here reproduces it;
#: registries and tools recognise it by this exact digest.
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_GZIP_LAYER_DIGEST = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"

_CHUNK = 1 << 20


def _check(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise InvalidInputError(
            f"unknown compression {compression!r} (expected one of {', '.join(COMPRESSIONS)})"
        )


class CompressWriter:
    """A write-only stream that compresses into ``out``; ``close()`` ends the last frame.

    Does not close ``out``. ``bytes_in`` counts uncompressed bytes accepted.
    """

    def __init__(
        self,
        out: Writable,
        compression: Compression = "gzip",
        *,
        level: int | None = None,
        frame_size: int | None = None,
        gzip_engine: GzipEngine = "isal",
    ) -> None:
        _check(compression)
        if gzip_engine not in ("isal", "zlib"):
            raise InvalidInputError(f"unknown gzip engine {gzip_engine!r}")
        if frame_size is not None and frame_size <= 0:
            raise InvalidInputError(f"frame_size must be positive, got {frame_size}")
        self._out = out
        self.compression: Compression = compression
        self._engine = gzip_engine
        key = "zstd" if compression == "zstd" else gzip_engine
        self.level = DEFAULT_LEVELS[key] if level is None else level
        self._frame_size = frame_size
        self._in_frame = 0
        self._obj: Any = None
        self._zstd = (
            zstandard.ZstdCompressor(level=self.level, write_checksum=True, threads=0)
            if compression == "zstd"
            else None
        )
        self.bytes_in = 0
        self.frames = 0
        self._closed = False

    def _new_obj(self) -> Any:
        self.frames += 1
        if self.compression == "zstd":
            assert self._zstd is not None
            return self._zstd.compressobj()
        if self._engine == "isal":
            return isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, 31)
        return zlib.compressobj(self.level, zlib.DEFLATED, 31)

    def _finish_frame(self) -> None:
        if self._obj is not None:
            tail = self._obj.flush()
            if tail:
                self._out.write(tail)
            self._obj = None
            self._in_frame = 0

    def _feed(self, data: bytes | memoryview) -> None:
        if self._obj is None:
            self._obj = self._new_obj()
        out = self._obj.compress(data)
        if out:
            self._out.write(out)
        self._in_frame += len(data)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:
            raise InvalidInputError("write to a closed compressor")
        n = len(data)
        self.bytes_in += n
        if self.compression == "none":
            if n:
                self._out.write(bytes(data))
            return n
        view = memoryview(data)
        while len(view):
            if self._frame_size is None:
                self._feed(view)
                break
            if self._in_frame >= self._frame_size:
                self._finish_frame()
            take = min(len(view), self._frame_size - self._in_frame)
            self._feed(view[:take])
            view = view[take:]
        return n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.compression == "none":
            return
        if self._obj is None and self.frames == 0:
            self._obj = self._new_obj()  # an empty input still makes one valid frame
        self._finish_frame()


def compress(
    src: Path,
    dst: Path,
    compression: Compression = "gzip",
    *,
    level: int | None = None,
    frames: int = 1,
    gzip_engine: GzipEngine = "isal",
) -> int:
    """Compress file ``src`` into ``dst`` (streaming); returns the size of ``dst``.

    ``frames`` > 1 splits the output into that many concatenated zstd frames or gzip
    members of (nearly) equal input size. Same input and options, same bytes.
    """
    _check(compression)
    if frames < 1:
        raise InvalidInputError(f"frames must be >= 1, got {frames}")
    size = Path(src).stat().st_size
    frame_size = None if frames == 1 else max(1, -(-size // frames))
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        w = CompressWriter(
            fout, compression, level=level, frame_size=frame_size, gzip_engine=gzip_engine
        )
        while chunk := fin.read(_CHUNK):
            w.write(chunk)
        w.close()
    return Path(dst).stat().st_size


def compress_bytes(
    data: bytes,
    compression: Compression = "gzip",
    *,
    level: int | None = None,
    frame_size: int | None = None,
    gzip_engine: GzipEngine = "isal",
) -> bytes:
    """In-memory variant of :func:`compress`, for small test blobs."""
    sink = io.BytesIO()
    w = CompressWriter(
        sink, compression, level=level, frame_size=frame_size, gzip_engine=gzip_engine
    )
    w.write(data)
    w.close()
    return sink.getvalue()


def sniff_compression(head: bytes) -> Compression:
    """Guess a blob's compression from its first bytes (gzip / zstd magic, else none)."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def open_decompressed(path: Path, compression: Compression) -> BinaryIO:
    """A streaming reader of the uncompressed bytes of a blob file, across all zstd
    frames / gzip members. Used to compute diff_ids of pre-made layers; not a hardened
    reader (cargohold's unpacker has its own)."""
    _check(compression)
    if compression == "gzip":
        opener: Any = igzip.open  # untyped in isal
        return cast(BinaryIO, opener(path, "rb"))
    raw = open(path, "rb")  # noqa: SIM115 - returned (wrapped) to the caller
    if compression == "none":
        return raw
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    return cast(BinaryIO, reader)
