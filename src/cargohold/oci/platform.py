"""Platforms (``os/arch[/variant]``): parsing, normalising and matching. Pure but for
:func:`host_platform`, which reads the machine name.

Behaviour follows containerd 1.6's ``platforms`` package:

* :func:`normalize` is ``platforms.Normalize``: names lower-cased, ``macos`` ->
  ``darwin``, ``x86_64``/``x86-64`` -> ``amd64``, ``i386`` -> ``386``, ``aarch64`` ->
  ``arm64``, ``armhf`` -> ``arm/v7``, ``armel`` -> ``arm/v6``, ``arm`` without a variant
  -> ``arm/v7``, ``arm`` variants ``5``/``6``/``7``/``8`` -> ``v5``... Two additions:
  ``i686`` (what ``uname -m`` says on 32-bit x86) also becomes ``386``, and ``amd64/v1``
  becomes plain ``amd64`` (containerd >= 1.7 does the same).
* **arm64's variant**: containerd 1.6 normalises ``arm64/v8`` (and ``arm64/8``) to plain
  ``arm64`` -- the empty variant *is* v8 -- so both spellings compare equal. We do the
  same: ``parse_platform("linux/arm64/v8")`` gives ``linux/arm64`` (``variant == ""``).
  Other arm64 variants (``v9``, ``v8.2``) are kept.
* :func:`matches` / :func:`rank` are ``platforms.Only``: a wanted platform accepts, best
  first, itself and then what it can run:

  - ``amd64`` -> ``amd64``, ``386`` (containerd 1.6 ``Only``). For ``amd64/vN`` we also
    accept ``amd64/vN-1`` ... ``amd64`` before ``386``, as containerd >= 1.7 does
    (1.6 would never match an ``amd64/v3`` request to a plain ``amd64`` image).
  - ``arm/vN`` -> ``arm/vN``, ``arm/vN-1``, ... ``arm/v5``.
  - ``arm64`` -> ``arm64``, ``arm/v8``, ``arm/v7``, ``arm/v6``, ``arm/v5``.

  Only os, architecture and variant are compared (containerd on Linux ignores
  ``os.version`` and ``os.features``).
* A single-word specifier is an OS (with the host's architecture) if it is a known OS,
  else an architecture of ``linux`` (containerd uses the host OS; cargohold always
  builds Linux node images).
"""

from __future__ import annotations

import os
import platform as _stdlib_platform
import re
from collections.abc import Sequence

from cargohold.errors import InvalidPlatformError
from cargohold.oci.descriptor import Platform

__all__ = [
    "KNOWN_ARCHITECTURES",
    "KNOWN_OS",
    "Platform",
    "compatible",
    "host_platform",
    "matches",
    "normalize",
    "normalize_arch",
    "normalize_os",
    "parse_platform",
    "parse_platforms",
    "rank",
    "select",
]

#: Go's GOOS values (containerd's isKnownOS), plus a few newer ones.
KNOWN_OS = frozenset(
    {
        "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js",
        "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos",
    }
)  # fmt: skip
#: Go's GOARCH values (containerd's isKnownArch).
KNOWN_ARCHITECTURES = frozenset(
    {
        "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "ppc64",
        "ppc64le", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc",
        "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
    }
)  # fmt: skip

_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
_VERSIONED = re.compile(r"^v([0-9]+)$")
#: Variant levels above this are not expanded (bounds the work for absurd input).
_MAX_LEVEL = 16

#: ``uname -m`` values that are not Go architecture names -> (arch, variant).
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5l": ("arm", "v5"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
}


def normalize_os(os_name: str) -> str:
    """Lower-case; ``macos`` -> ``darwin``; empty -> ``linux``."""
    name = os_name.lower()
    if not name:
        return "linux"
    return "darwin" if name == "macos" else name


def normalize_arch(arch: str, variant: str = "") -> tuple[str, str]:
    """containerd's normalizeArch (see the module docstring for the two additions)."""
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i686"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """containerd's platforms.Normalize; os.version and os.features are kept."""
    arch, variant = normalize_arch(p.architecture, p.variant)
    return Platform(normalize_os(p.os), arch, variant, p.os_version, p.os_features)


def _key(p: Platform) -> tuple[str, str, str]:
    n = normalize(p)
    return n.os, n.architecture, n.variant


def parse_platform(text: str) -> Platform:
    """Parse ``os[/arch[/variant]]`` (or a bare architecture) into a normalised Platform."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidPlatformError(f"invalid platform {text!r}: empty")
    spec = text.strip()
    parts = spec.split("/")
    if len(parts) > 3:
        raise InvalidPlatformError(f"invalid platform {text!r}: expected os/architecture[/variant]")
    for part in parts:
        if not _COMPONENT.match(part):
            raise InvalidPlatformError(
                f"invalid platform {text!r}: component {part!r} must be letters, digits, '_' or '-'"
            )
    if len(parts) == 1:
        word = parts[0].lower()
        os_name = normalize_os(word)
        if os_name in KNOWN_OS:
            host = host_platform()
            return normalize(Platform(os_name, host.architecture, host.variant))
        arch, variant = normalize_arch(word)
        if arch in KNOWN_ARCHITECTURES:
            return normalize(Platform("linux", arch, variant))
        raise InvalidPlatformError(
            f"invalid platform {text!r}: unknown operating system or architecture"
        )
    variant = parts[2] if len(parts) == 3 else ""
    return normalize(Platform(parts[0], parts[1], variant))


def parse_platforms(text: str) -> list[Platform]:
    """Parse a comma-separated list (``linux/amd64,linux/arm64``), duplicates dropped."""
    out: list[Platform] = []
    seen: set[tuple[str, str, str]] = set()
    for item in text.split(","):
        if not item.strip():
            raise InvalidPlatformError(f"invalid platform list {text!r}: empty item")
        p = parse_platform(item)
        if _key(p) not in seen:
            seen.add(_key(p))
            out.append(p)
    return out


def host_platform(machine: str | None = None) -> Platform:
    """``linux`` plus this machine's normalised architecture (``machine`` overrides
    ``uname -m``, for tests)."""
    if machine is None:
        try:
            machine = os.uname().machine
        except AttributeError:  # not on a Unix
            machine = _stdlib_platform.machine()
    m = machine.strip().lower()
    arch, variant = _MACHINES.get(m, (m, ""))
    return normalize(Platform("linux", arch or "unknown", variant))


def compatible(want: Platform) -> list[Platform]:
    """containerd's platformVector: ``want`` (normalised) and what it also runs, best first."""
    p = normalize(want)
    return _vector(p)


def _vector(p: Platform) -> list[Platform]:
    out = [p]
    if p.architecture == "amd64":
        m = _VERSIONED.match(p.variant)
        if m:
            for level in range(min(int(m.group(1)), _MAX_LEVEL) - 1, 0, -1):
                out.append(_with(p, "amd64", "" if level == 1 else f"v{level}"))
        out.append(_with(p, "386", ""))
    elif p.architecture == "arm":
        m = _VERSIONED.match(p.variant)
        if m:
            for level in range(min(int(m.group(1)), _MAX_LEVEL) - 1, 4, -1):
                out.append(_with(p, "arm", f"v{level}"))
    elif p.architecture == "arm64":
        out.extend(_vector(_with(p, "arm", p.variant or "v8")))
    return out


def _with(p: Platform, arch: str, variant: str) -> Platform:
    return Platform(p.os, arch, variant, p.os_version, p.os_features)


def matches(want: Platform, have: Platform, *, strict: bool = False) -> bool:
    """Can a host that wants ``want`` run ``have``? With ``strict`` only the same
    normalised platform (containerd's OnlyStrict) matches."""
    have_key = _key(have)
    if strict:
        return _key(want) == have_key
    return any(_key(c) == have_key for c in compatible(want))


def rank(want: Platform, candidates: Sequence[Platform | None]) -> list[int]:
    """Indexes of the candidates ``want`` accepts, best first; ties keep their order
    (as containerd's stable sort does). ``None`` candidates never match."""
    order: dict[tuple[str, str, str], int] = {}
    for pos, c in enumerate(compatible(want)):
        order.setdefault(_key(c), pos)
    scored: list[tuple[int, int]] = []
    for i, cand in enumerate(candidates):
        if cand is None:
            continue
        score = order.get(_key(cand))
        if score is not None:
            scored.append((score, i))
    scored.sort()
    return [i for _, i in scored]


def select(wanted: Sequence[Platform], candidates: Sequence[Platform | None]) -> list[int]:
    """For each wanted platform, in order, the index of its best candidate; each index
    once. Wanted platforms no candidate fits contribute nothing."""
    out: list[int] = []
    for w in wanted:
        best = rank(w, candidates)
        if best and best[0] not in out:
            out.append(best[0])
    return out
