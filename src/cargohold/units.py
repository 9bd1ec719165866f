"""The one way cargohold prints sizes and rates.

Decimal SI units, powers of 1000 (``kB``, ``MB``, ``GB``, ``TB``, ``PB``), one decimal; bytes
as a whole number: ``format_size(200_000_000) == "200.0 MB"``, what ``budget = "200MB"`` in a
spec means. Every command (tables, totals, reasons, errors, ``bench``) uses it, so a size the
user wrote in SI units reads back unchanged; sizes given in IEC units (``GiB``) are accepted
everywhere (:func:`parse_size`) and shown in SI (``30GiB`` is ``32.2 GB``).
Rates are sizes per second (``12.3 MB/s``).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

from cargohold.errors import InvalidInputError

__all__ = ["format_rate", "format_size", "parse_size"]

_UNITS = ("kB", "MB", "GB", "TB", "PB")


def format_size(n: float) -> str:
    """``1_500_000`` -> ``"1.5 MB"`` (see the module docstring)."""
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    if round(v) < 1000:
        return f"{sign}{v:.0f} B"
    i = 0
    v /= 1000
    while round(v, 1) >= 1000 and i < len(_UNITS) - 1:
        v /= 1000
        i += 1
    return f"{sign}{v:.1f} {_UNITS[i]}"


def format_rate(bytes_per_second: float) -> str:
    """``12_300_000`` -> ``"12.3 MB/s"``."""
    return f"{format_size(bytes_per_second)}/s"


# ---------------------------------------------------------------- parsing

KB, MB, GB, TB, PB = 10**3, 10**6, 10**9, 10**12, 10**15
KIB, MIB, GIB, TIB, PIB = 2**10, 2**20, 2**30, 2**40, 2**50

#: Accepted units, compared case-insensitively. SI (kB, MB, ...) are powers of 1000,
#: IEC (KiB, MiB, ...; Kubernetes' Ki, Mi, ...) powers of 1024.
_PARSE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB, "pb": PB,
    "kib": KIB, "mib": MIB, "gib": GIB, "tib": TIB, "pib": PIB,
    "ki": KIB, "mi": MIB, "gi": GIB, "ti": TIB, "pi": PIB,
}  # fmt: skip
_AMBIGUOUS = {"k": ("kB", "KiB"), "m": ("MB", "MiB"), "g": ("GB", "GiB"), "t": ("TB", "TiB"),
              "p": ("PB", "PiB")}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Bytes from ``"20GiB"``, ``"500MB"``, ``"1.5 GiB"``, ``"1024"``, ``"64Mi"`` or an int.

    SI units (``kB``, ``MB``, ``GB``, ``TB``, ``PB``) are powers of 1000, IEC units
    (``KiB`` ... ``PiB``, also Kubernetes' ``Ki`` ... ``Pi``) powers of 1024; case does
    not matter; ``B`` or no unit means bytes. A bare ``K``/``M``/``G``/``T`` is refused
    as ambiguous (``df -h`` means GiB, Kubernetes means GB). Fractions are rounded down
    to whole bytes. Negative sizes are refused.
    """
    if isinstance(value, bool):
        raise InvalidInputError(
            f'invalid size {_shown(value)}: expected bytes or a string like "20GiB"'
        )
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError(f"invalid size {value}: must not be negative")
        return value
    if not isinstance(value, str):
        raise InvalidInputError(
            f'invalid size {_shown(value)}: expected a whole number of bytes or a string like "20GiB"'
        )
    text = value.strip()
    if text.startswith("-"):
        raise InvalidInputError(f"invalid size {_shown(value)}: must not be negative")
    m = _SIZE_RE.match(text)
    if not m:
        raise InvalidInputError(
            f'invalid size {_shown(value)}: expected a number and a unit, like "20GiB" or "500MB"'
        )
    number, unit = m.group(1), m.group(2)
    low = unit.lower()
    if low in _AMBIGUOUS:
        si, iec = _AMBIGUOUS[low]
        raise InvalidInputError(
            f"invalid size {_shown(value)}: unit {_shown(unit)} is ambiguous; "
            f"write {si} (powers of 1000) or {iec} (powers of 1024)"
        )
    if low not in _PARSE_UNITS:
        raise InvalidInputError(
            f"invalid size {_shown(value)}: unknown unit {_shown(unit)} "
            "(use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        )
    try:
        amount = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise InvalidInputError(f"invalid size {_shown(value)}: bad number") from None
    return int(amount * _PARSE_UNITS[low])


def _shown(value: object) -> str:
    """A value as a spec would spell it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
