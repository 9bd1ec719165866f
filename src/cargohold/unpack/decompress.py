"""Open a layer blob as its uncompressed tar stream.

The compression is chosen from the layer's media type *and* checked against the first bytes
of the blob (gzip ``1f 8b``, zstd ``28 b5 2f fd``).  When the two disagree the magic bytes win,
as in containerd (``compression.DecompressStream`` detects by magic and never looks at the media
type): a ``...tar`` layer that is really gzip is inflated, a ``...tar+gzip`` layer that is really
plain tar is passed through.  This is safe because what matters, the uncompressed bytes, is
checked against the layer's diff_id by the applier.  The reader records both the declared and
the detected compression so callers can report the mismatch.

gzip is inflated with ISA-L (``isal.igzip``), multi-member streams included (pigz / parallel
compressors write those); zstd with ``zstandard``'s stream reader across frames (multi-frame
streams, e.g. seekable zstd); anything else is passed through unchanged.  Reads are 1 MiB.
"""

from __future__ import annotations

import gzip
import io
from typing import Any, BinaryIO, Protocol

from cargohold.errors import InvalidInputError
from cargohold.oci.mediatypes import layer_compression

#: Size of the reads the decompressors make from the blob and hand out.
CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Reader(Protocol):
    """The little the applier needs from a stream: ``read``."""

    def read(self, size: int = -1, /) -> bytes: ...


def detect_compression(head: bytes) -> str:
    """'gzip', 'zstd' or 'none' from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Prefixed:
    """A stream with some already-read bytes put back in front (for unseekable streams)."""

    __slots__ = ("_head", "_stream")

    def __init__(self, head: bytes, stream: Reader) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size is None or size < 0:
                out = self._head + self._stream.read()
                self._head = b""
                return out
            out = self._head[:size]
            self._head = self._head[size:]
            return out
        return self._stream.read(size)

    def readable(self) -> bool:
        return True


def _peek(stream: Reader, n: int) -> tuple[bytes, Reader]:
    """The first ``n`` bytes of ``stream`` and a stream that still starts at them."""
    seekable = getattr(stream, "seekable", None)
    if seekable is not None:
        try:
            if seekable():
                pos = stream.tell()  # type: ignore[attr-defined]
                head = _read_exactly(stream, n)
                stream.seek(pos)  # type: ignore[attr-defined]
                return head, stream
        except (OSError, ValueError, AttributeError):
            pass
    head = _read_exactly(stream, n)
    return head, _Prefixed(head, stream)


def _read_exactly(stream: Reader, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def skip_bytes(stream: BinaryIO, n: int) -> None:
    """Move ``stream`` past its next ``n`` bytes (a resumed copy's prefix): a seek where it
    seeks, else reads and drops them; a stream that ends first is left at its end."""
    if n <= 0:
        return
    try:
        stream.seek(n, io.SEEK_CUR)
        return
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        pass
    while n > 0:
        chunk = stream.read(min(n, CHUNK))
        if not chunk:
            return
        n -= len(chunk)


class CorruptLayerError(InvalidInputError):
    """A layer's compressed bytes do not decompress (corrupt or truncated)."""

    hint = ("the layer's compressed bytes are broken: if the image is fine at the registry, "
            "run `cargohold verify --repair`")

    @property
    def kind(self) -> str:
        return "invalid_input"


class DecompressedStream:
    """The uncompressed bytes of a layer; ``read`` returns up to ``size`` bytes, b"" at EOF.

    Closing it closes the decompressor, never the underlying blob stream (its owner does).
    """

    def __init__(self, inner: Any, declared: str, detected: str) -> None:
        self._inner = inner
        #: Compression the media type claimed and what the magic bytes showed.
        self.declared = declared
        self.compression = detected

    @property
    def mismatch(self) -> bool:
        return self.declared != self.compression

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._inner.read(size if size is not None and size >= 0 else -1)
        except EOFError as e:  # truncated gzip
            raise CorruptLayerError(f"{self.compression} layer stream is truncated: {e}") from None
        except Exception as e:
            # BadGzipFile (an OSError), isal's IsalError, zstandard's ZstdError: corrupt data.
            # Other OSErrors come from the blob stream itself and are passed on unchanged.
            if isinstance(e, gzip.BadGzipFile) or type(e).__name__ in ("IsalError", "ZstdError"):
                raise CorruptLayerError(f"corrupt {self.compression} layer stream: {e}") from None
            raise
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.compression != "none":
            self._inner.close()

    def __enter__(self) -> DecompressedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decompressed(stream: BinaryIO | Reader, media_type: str) -> DecompressedStream:
    """The uncompressed tar stream of the layer blob ``stream`` of type ``media_type``.

    Raises UnsupportedError for a media type that is not a layer; corrupt or truncated
    compressed data surfaces as InvalidInputError from ``read``.
    """
    declared = layer_compression(media_type)
    head, src = _peek(stream, 4)
    detected = detect_compression(head)
    if detected == "gzip":
        from isal import igzip

        gz = igzip.IGzipFile(fileobj=src, mode="rb")  # type: ignore[no-untyped-call]
        return DecompressedStream(gz, declared, detected)
    if detected == "zstd":
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        source: Any = src
        reader = dctx.stream_reader(source, read_size=CHUNK, read_across_frames=True, closefd=False)
        return DecompressedStream(reader, declared, detected)
    return DecompressedStream(src, declared, detected)


#: Bytes of a blob's start and end that :func:`uncompressed_size_hint` needs.
HINT_HEAD = 18
HINT_TAIL = 4


#: The largest unpacked / compressed ratio :func:`uncompressed_size_hint` believes in.
PLAUSIBLE_MAX_RATIO = 20


def uncompressed_size_hint(head: bytes, tail: bytes, size: int) -> int | None:
    """The uncompressed (tar) size of a layer blob of ``size`` bytes from its first
    :data:`HINT_HEAD` and last :data:`HINT_TAIL` bytes, without inflating it; None when the
    blob does not tell for sure (the caller then estimates).

    * plain tar: ``size``;
    * gzip: the trailer's ISIZE is the input size mod 2**32, so the true size is one of
      ``ISIZE + k * 2**32``; taken when exactly one of those lies between ``size`` and
      ``size`` x :data:`PLAUSIBLE_MAX_RATIO` (always the case below ~200 MiB compressed
      unless the ratio is absurd), else None. A multi-member stream (rare: ``pigz -i``,
      concatenated files) has only its last member's size there and is under-read;
    * zstd: None. A frame header may carry the content size, but a multi-frame stream
      (seekable zstd, parallel compressors) only tells its first frame's, and counting the
      frames means reading the whole blob.
    """
    fmt = detect_compression(head)
    if fmt == "none":
        return size
    if fmt != "gzip" or len(tail) < 4 or size < 18:
        return None
    isize = int.from_bytes(tail[-4:], "little")
    high = size * PLAUSIBLE_MAX_RATIO
    candidates = []
    k = max(0, -(-(size - isize) // (1 << 32)))
    while (c := isize + k * (1 << 32)) <= high:
        candidates.append(c)
        k += 1
        if len(candidates) > 1:
            break
    return candidates[0] if len(candidates) == 1 else None
