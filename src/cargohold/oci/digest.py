"""Content digests (``alg:hex``) and a streaming verifier. Pure: no I/O."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cargohold.errors import DigestMismatchError, InvalidDigestError

#: Algorithms cargohold accepts, with the hex length of their encoded form.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate ``alg:hex``; raises InvalidInputError naming the problem."""
        if not isinstance(text, str):
            raise InvalidDigestError(f"invalid digest {text!r}: not a string")
        alg, sep, enc = text.partition(":")
        if not sep:
            raise InvalidDigestError(f"invalid digest {text!r}: expected 'algorithm:hex'")
        if alg not in ALGORITHMS:
            raise InvalidDigestError(
                f"invalid digest {text!r}: unsupported algorithm {alg!r} "
                f"(supported: {', '.join(ALGORITHMS)})"
            )
        want = ALGORITHMS[alg]
        if len(enc) != want:
            raise InvalidDigestError(
                f"invalid digest {text!r}: {alg} needs {want} hex characters, got {len(enc)}"
            )
        if not _HEX.match(enc):
            raise InvalidDigestError(
                f"invalid digest {text!r}: encoded part must be lower-case hex"
            )
        return cls(alg, enc)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Verifier:
    """Feed bytes in; at the end check size and digest against what was expected."""

    __slots__ = ("_hash", "expected", "expected_size", "size")

    def __init__(self, expected: Digest, expected_size: int | None = None) -> None:
        self.expected = expected
        self.expected_size = expected_size
        self._hash = expected.hasher()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise DigestMismatchError(
                f"{self.expected}: more than the expected {self.expected_size} bytes"
            )

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._hash.hexdigest())

    def verified(self) -> bool:
        size_ok = self.expected_size is None or self.size == self.expected_size
        return size_ok and self.actual() == self.expected

    def check(self) -> None:
        """Raise DigestMismatchError unless size and digest match."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatchError(
                f"{self.expected}: size {self.size} differs from the expected {self.expected_size}"
            )
        got = self.actual()
        if got != self.expected:
            raise DigestMismatchError(f"content has digest {got}, expected {self.expected}")
