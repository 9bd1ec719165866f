"""cargohold.oci.digest (Digest, Verifier) and cargohold.oci.chainid."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.errors import DigestMismatchError, InvalidInputError
from cargohold.oci.chainid import chain_id, chain_ids
from cargohold.oci.digest import Digest, Verifier

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_known_digest_of_empty() -> None:
    d = Digest.from_bytes(b"")
    assert str(d) == f"sha256:{EMPTY_SHA256}"
    assert d.short == EMPTY_SHA256[:12]
    assert Digest.from_bytes(b"abc", "sha512").hex == hashlib.sha512(b"abc").hexdigest()


def test_parse_valid() -> None:
    d = Digest.parse(f"sha256:{EMPTY_SHA256}")
    assert (d.algorithm, d.hex) == ("sha256", EMPTY_SHA256)
    assert Digest.parse("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected 'algorithm:hex'"),
        (EMPTY_SHA256, "expected 'algorithm:hex'"),
        (f"md5:{EMPTY_SHA256}", "unsupported algorithm 'md5'"),
        (f"SHA256:{EMPTY_SHA256}", "unsupported algorithm"),
        ("sha256:abc", "needs 64 hex characters, got 3"),
        ("sha256:" + "a" * 65, "needs 64 hex characters, got 65"),
        ("sha256:" + EMPTY_SHA256.upper(), "lower-case hex"),
        ("sha256:" + "g" * 64, "lower-case hex"),
        ("sha512:" + "a" * 64, "needs 128 hex characters"),
    ],
)
def test_parse_malformed(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        Digest.parse(text)


def test_verifier_accepts_streamed_bytes() -> None:
    data = b"hello, world\n" * 100
    v = Verifier(Digest.from_bytes(data), len(data))
    for i in range(0, len(data), 7):
        v.update(data[i : i + 7])
    assert v.verified()
    v.check()
    assert v.size == len(data)


def test_verifier_rejects_wrong_content_and_size() -> None:
    data = b"payload"
    v = Verifier(Digest.from_bytes(data), len(data))
    v.update(b"PAYLOAD")
    assert not v.verified()
    with pytest.raises(DigestMismatchError, match="content has digest"):
        v.check()

    short = Verifier(Digest.from_bytes(data), len(data))
    short.update(data[:3])
    with pytest.raises(DigestMismatchError, match="size 3 differs from the expected 7"):
        short.check()

    long = Verifier(Digest.from_bytes(data), len(data))
    with pytest.raises(DigestMismatchError, match="more than the expected 7 bytes"):
        long.update(data + b"!")


# --------------------------------------------------------------------------- properties


@given(st.binary(max_size=256), st.sampled_from(["sha256", "sha512"]))
def test_digest_round_trip(data: bytes, algorithm: str) -> None:
    d = Digest.from_bytes(data, algorithm)
    assert Digest.parse(str(d)) == d
    assert d.hex == hashlib.new(algorithm, data).hexdigest()


@given(st.binary(max_size=256), st.binary(max_size=256), st.integers(1, 64))
def test_verifier_accepts_only_the_right_bytes(data: bytes, other: bytes, chunk: int) -> None:
    expected = Digest.from_bytes(data)
    good = Verifier(expected, len(data))
    for i in range(0, len(data), chunk):
        good.update(data[i : i + chunk])
    assert good.verified()
    good.check()

    if other != data:
        bad = Verifier(expected)  # no size: only the digest can tell
        bad.update(other)
        assert not bad.verified()
        with pytest.raises(DigestMismatchError):
            bad.check()


# --------------------------------------------------------------------------- chain IDs


def _independent_chain(diff_ids: list[str]) -> list[str]:
    out = [diff_ids[0]]
    for d in diff_ids[1:]:
        out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def test_chain_ids_vector() -> None:
    diffs = [
        "sha256:" + hashlib.sha256(b"layer-a").hexdigest(),
        "sha256:" + hashlib.sha256(b"layer-b").hexdigest(),
        "sha256:" + hashlib.sha256(b"layer-c").hexdigest(),
    ]
    got = chain_ids([Digest.parse(d) for d in diffs])
    want = _independent_chain(diffs)
    assert [str(g) for g in got] == want
    assert str(got[0]) == diffs[0]  # the first chain ID is the first diff ID
    second = hashlib.sha256((diffs[0] + " " + diffs[1]).encode()).hexdigest()
    assert got[1].hex == second
    assert str(chain_id([Digest.parse(d) for d in diffs])) == want[-1]


def test_chain_id_of_one_and_none() -> None:
    d = Digest.from_bytes(b"x")
    assert chain_ids([d]) == [d]
    assert chain_id([d]) == d
    assert chain_ids([]) == []
    with pytest.raises(InvalidInputError, match="empty layer stack"):
        chain_id([])


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=6))
def test_chain_ids_match_independent_computation(blobs: list[bytes]) -> None:
    diffs = [Digest.from_bytes(b) for b in blobs]
    got = chain_ids(diffs)
    assert [str(g) for g in got] == _independent_chain([str(d) for d in diffs])
    assert chain_id(diffs) == got[-1]
