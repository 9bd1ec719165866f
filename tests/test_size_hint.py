"""Layer tar sizes read off compressed blobs (the planner's sizes after a fetch)."""

from __future__ import annotations

import gzip
import os
import zlib

import zstandard

from cargohold.unpack.decompress import (
    HINT_HEAD,
    HINT_TAIL,
    PLAUSIBLE_MAX_RATIO,
    uncompressed_size_hint,
)

GZ_HEAD = b"\x1f\x8b" + bytes(HINT_HEAD - 2)


def hint(blob: bytes) -> int | None:
    return uncompressed_size_hint(blob[:HINT_HEAD], blob[-HINT_TAIL:], len(blob))


def trailer(isize: int) -> bytes:
    return (isize % (1 << 32)).to_bytes(4, "little")


def test_plain_tar_is_its_own_size() -> None:
    assert hint(b"x" * 5000) == 5000


def test_gzip_trailer_gives_the_tar_size() -> None:
    data = os.urandom(200_000) + bytes(300_000)  # ratio ~2.5
    assert hint(gzip.compress(data)) == len(data)


def test_gzip_beyond_the_plausible_ratio_is_not_trusted() -> None:
    data = bytes(1_000_000)  # zeros: ratio ~1000
    blob = gzip.compress(data)
    assert len(data) > len(blob) * PLAUSIBLE_MAX_RATIO
    assert hint(blob) is None


def test_gzip_wrapped_isize() -> None:
    # 300 MiB compressed: both 0.5 GiB and 4.5 GiB are plausible tar sizes -> unknown.
    assert uncompressed_size_hint(GZ_HEAD, trailer(int(4.5 * 2**30)), 300 << 20) is None
    # 3 GiB compressed, 9 GiB tar: 5 and 9 GiB both plausible -> unknown, never 5 GiB.
    assert uncompressed_size_hint(GZ_HEAD, trailer(9 << 30), 3 << 30) is None
    # 3 GiB compressed, 4 GiB + 1 MiB tar: 8 GiB + 1 MiB is as plausible: unknown.
    assert uncompressed_size_hint(GZ_HEAD, trailer((4 << 30) + (1 << 20)), 3 << 30) is None
    # 100 MiB compressed, 400 MiB tar: the next candidate (4.4 GiB) is implausible.
    assert uncompressed_size_hint(GZ_HEAD, trailer(400 << 20), 100 << 20) == 400 << 20


def test_truncated_or_odd_blobs() -> None:
    assert uncompressed_size_hint(GZ_HEAD, b"", 1000) is None
    assert uncompressed_size_hint(GZ_HEAD, trailer(10), 10) is None  # shorter than a header
    raw = zlib.compress(b"abc" * 1000)  # zlib, not gzip: passed through as plain
    assert hint(raw) == len(raw)


def test_zstd_is_not_read_off_the_header() -> None:
    data = os.urandom(100_000) + bytes(100_000)
    blob = zstandard.ZstdCompressor().compress(data)
    assert hint(blob) is None
