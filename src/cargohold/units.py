"""The one way cargohold prints sizes and rates.

Decimal SI units, powers of 1000 (``kB``, ``MB``, ``GB``, ``TB``, ``PB``), one decimal; bytes
as a whole number: ``format_size(200_000_000) == "200.0 MB"``, what ``budget = "200MB"`` in a
spec means. Every command (tables, totals, reasons, errors, ``bench``) uses it, so a size the
user wrote in SI units reads back unchanged; sizes given in IEC units (``GiB``) are accepted
everywhere (:func:`cargohold.bake.spec.parse_size`) and shown in SI (``30GiB`` is ``32.2 GB``).
Rates are sizes per second (``12.3 MB/s``).
"""

from __future__ import annotations

__all__ = ["format_rate", "format_size"]

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
