"""cargohold.oci.platform: containerd-compatible normalising, parsing and matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.errors import InvalidInputError
from cargohold.oci.platform import (
    Platform,
    compatible,
    host_platform,
    matches,
    normalize,
    parse_platform,
    parse_platforms,
    rank,
    select,
)


def P(os: str, arch: str, variant: str = "") -> Platform:
    return Platform(os, arch, variant)


# containerd platforms.Normalize (1.6), plus the documented i686 / amd64-v1 additions.
@pytest.mark.parametrize(
    ("given_", "want"),
    [
        (P("linux", "x86_64"), P("linux", "amd64")),
        (P("linux", "x86-64"), P("linux", "amd64")),
        (P("linux", "amd64", "v1"), P("linux", "amd64")),
        (P("linux", "amd64", "v3"), P("linux", "amd64", "v3")),
        (P("linux", "i386"), P("linux", "386")),
        (P("linux", "i686"), P("linux", "386")),
        (P("linux", "aarch64"), P("linux", "arm64")),
        (P("linux", "arm64", "v8"), P("linux", "arm64")),
        (P("linux", "arm64", "8"), P("linux", "arm64")),
        (P("linux", "aarch64", "V8"), P("linux", "arm64")),
        (P("linux", "arm64", "v9"), P("linux", "arm64", "v9")),
        (P("linux", "armhf"), P("linux", "arm", "v7")),
        (P("linux", "armel"), P("linux", "arm", "v6")),
        (P("linux", "arm"), P("linux", "arm", "v7")),
        (P("linux", "arm", "7"), P("linux", "arm", "v7")),
        (P("linux", "arm", "6"), P("linux", "arm", "v6")),
        (P("linux", "arm", "5"), P("linux", "arm", "v5")),
        (P("linux", "arm", "8"), P("linux", "arm", "v8")),
        (P("Linux", "AMD64"), P("linux", "amd64")),
        (P("macos", "arm64"), P("darwin", "arm64")),
        (P("MacOS", "x86_64"), P("darwin", "amd64")),
        (P("", "s390x"), P("linux", "s390x")),
        (P("linux", "ppc64le"), P("linux", "ppc64le")),
        (P("windows", "amd64"), P("windows", "amd64")),
    ],
)
def test_normalize(given_: Platform, want: Platform) -> None:
    assert normalize(given_) == want


def test_normalize_keeps_os_version_and_features() -> None:
    p = Platform("Windows", "x86_64", "", "10.0.17763.1", ("win32k",))
    assert normalize(p) == Platform("windows", "amd64", "", "10.0.17763.1", ("win32k",))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("linux/amd64", P("linux", "amd64")),
        ("Linux/AMD64", P("linux", "amd64")),
        ("linux/x86_64", P("linux", "amd64")),
        ("linux/arm64", P("linux", "arm64")),
        ("linux/arm64/v8", P("linux", "arm64")),
        ("linux/aarch64", P("linux", "arm64")),
        ("linux/arm", P("linux", "arm", "v7")),
        ("linux/arm/v6", P("linux", "arm", "v6")),
        ("linux/arm/7", P("linux", "arm", "v7")),
        ("linux/riscv64", P("linux", "riscv64")),
        ("darwin/arm64", P("darwin", "arm64")),
        ("macos/arm64", P("darwin", "arm64")),
        ("windows/amd64", P("windows", "amd64")),
        (" linux/s390x ", P("linux", "s390x")),
        # A bare architecture means linux.
        ("arm64", P("linux", "arm64")),
        ("aarch64", P("linux", "arm64")),
        ("amd64", P("linux", "amd64")),
        ("armhf", P("linux", "arm", "v7")),
        ("386", P("linux", "386")),
        # Unknown names are allowed when both parts are given (containerd does too).
        ("plan10/zarch", P("plan10", "zarch")),
    ],
)
def test_parse_platform(text: str, want: Platform) -> None:
    assert parse_platform(text) == want


def test_parse_bare_os_takes_host_architecture() -> None:
    host = host_platform()
    assert parse_platform("linux") == host
    assert parse_platform("windows") == Platform("windows", host.architecture, host.variant)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("linux/amd64/v2/x", r"expected os/architecture\[/variant\]"),
        ("linux/$", "letters, digits"),
        ("linux//amd64", "letters, digits"),
        ("linux/", "letters, digits"),
        ("linux/amd 64", "letters, digits"),
        ("bogus", "unknown operating system or architecture"),
    ],
)
def test_parse_platform_errors(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_platform(text)


def test_parse_platforms_list() -> None:
    got = parse_platforms("linux/amd64, linux/arm64/v8,linux/arm64,linux/arm/v7")
    assert got == [P("linux", "amd64"), P("linux", "arm64"), P("linux", "arm", "v7")]
    assert parse_platforms("linux/s390x") == [P("linux", "s390x")]
    with pytest.raises(InvalidInputError, match="empty item"):
        parse_platforms("linux/amd64,,linux/arm64")
    with pytest.raises(InvalidInputError, match="unknown operating system"):
        parse_platforms("linux/amd64,nonsense")


@pytest.mark.parametrize(
    ("machine", "want"),
    [
        ("x86_64", P("linux", "amd64")),
        ("aarch64", P("linux", "arm64")),
        ("arm64", P("linux", "arm64")),
        ("armv7l", P("linux", "arm", "v7")),
        ("armv6l", P("linux", "arm", "v6")),
        ("armv5tel", P("linux", "arm", "v5")),
        ("armv8l", P("linux", "arm", "v8")),
        ("i686", P("linux", "386")),
        ("ppc64le", P("linux", "ppc64le")),
        ("s390x", P("linux", "s390x")),
        ("riscv64", P("linux", "riscv64")),
    ],
)
def test_host_platform_from_machine(machine: str, want: Platform) -> None:
    assert host_platform(machine) == want


def test_host_platform_is_linux_and_normalised() -> None:
    host = host_platform()
    assert host.os == "linux"
    assert normalize(host) == host
    assert host.architecture and host.architecture not in ("x86_64", "aarch64")


def _strs(ps: list[Platform]) -> list[str]:
    return [str(p) for p in ps]


def test_compatible_vectors() -> None:
    assert _strs(compatible(P("linux", "amd64"))) == ["linux/amd64", "linux/386"]
    assert _strs(compatible(P("linux", "amd64", "v3"))) == [
        "linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386",
    ]  # fmt: skip
    assert _strs(compatible(P("linux", "arm64"))) == [
        "linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5",
    ]  # fmt: skip
    assert _strs(compatible(P("linux", "arm64", "v8"))) == _strs(compatible(P("linux", "arm64")))
    assert _strs(compatible(P("linux", "arm"))) == [
        "linux/arm/v7", "linux/arm/v6", "linux/arm/v5",
    ]  # fmt: skip
    assert _strs(compatible(P("linux", "arm", "v5"))) == ["linux/arm/v5"]
    assert _strs(compatible(P("linux", "s390x"))) == ["linux/s390x"]
    assert _strs(compatible(P("linux", "386"))) == ["linux/386"]


@pytest.mark.parametrize(
    ("want", "have", "ok"),
    [
        (P("linux", "amd64"), P("linux", "amd64"), True),
        (P("linux", "amd64"), P("linux", "x86_64"), True),
        (P("linux", "amd64"), P("linux", "386"), True),
        (P("linux", "386"), P("linux", "amd64"), False),
        (P("linux", "amd64"), P("linux", "amd64", "v2"), False),
        (P("linux", "amd64", "v2"), P("linux", "amd64"), True),
        (P("linux", "arm64"), P("linux", "arm64", "v8"), True),
        (P("linux", "arm64", "v8"), P("linux", "arm64"), True),
        (P("linux", "arm64"), P("linux", "aarch64"), True),
        (P("linux", "arm64"), P("linux", "arm", "v7"), True),
        (P("linux", "arm64"), P("linux", "arm"), True),
        (P("linux", "arm", "v7"), P("linux", "arm64"), False),
        (P("linux", "arm", "v7"), P("linux", "arm", "v6"), True),
        (P("linux", "arm", "v6"), P("linux", "arm", "v7"), False),
        (P("linux", "arm64"), P("linux", "amd64"), False),
        (P("linux", "amd64"), P("windows", "amd64"), False),
        (P("linux", "amd64"), P("unknown", "unknown"), False),
    ],
)
def test_matches(want: Platform, have: Platform, ok: bool) -> None:
    assert matches(want, have) is ok


def test_matches_strict() -> None:
    assert matches(P("linux", "amd64"), P("linux", "386"), strict=False)
    assert not matches(P("linux", "amd64"), P("linux", "386"), strict=True)
    assert matches(P("linux", "arm64"), P("linux", "arm64", "v8"), strict=True)
    assert not matches(P("linux", "arm64"), P("linux", "arm", "v7"), strict=True)


def test_rank_orders_best_first_and_keeps_ties_in_order() -> None:
    cands: list[Platform | None] = [
        P("linux", "386"),        # 0
        P("linux", "arm", "v5"),  # 1
        P("linux", "amd64"),      # 2
        None,                     # 3
        P("linux", "arm64"),      # 4
        P("linux", "x86_64"),     # 5 (same as 2 once normalised)
        P("linux", "arm", "v7"),  # 6
        P("unknown", "unknown"),  # 7
    ]  # fmt: skip
    assert rank(P("linux", "amd64"), cands) == [2, 5, 0]
    assert rank(P("linux", "arm64"), cands) == [4, 6, 1]
    assert rank(P("linux", "arm", "v6"), cands) == [1]
    assert rank(P("linux", "s390x"), cands) == []


def test_select_one_per_wanted_platform_deduplicated() -> None:
    cands: list[Platform | None] = [
        P("linux", "amd64"), P("linux", "arm64", "v8"), P("linux", "arm", "v7"),
        P("linux", "amd64"), None,
    ]  # fmt: skip
    assert select([P("linux", "arm64"), P("linux", "amd64")], cands) == [1, 0]
    # arm/v7 is best for arm/v7; arm64 finds its own entry first.
    assert select([P("linux", "arm", "v7"), P("linux", "arm64")], cands) == [2, 1]
    # Both want the same entry: listed once.
    assert select([P("linux", "amd64"), P("linux", "x86_64")], cands) == [0]
    assert select([P("linux", "s390x")], cands) == []
    assert select([], cands) == []
    # amd64 falls back to 386 when that is all there is.
    assert select([P("linux", "amd64")], [P("linux", "arm64"), P("linux", "386")]) == [1]


# --------------------------------------------------------------------------- properties

_word = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)
_os = st.one_of(st.sampled_from(["linux", "Linux", "windows", "macos", "darwin", ""]), _word)
_arch = st.one_of(
    st.sampled_from(
        ["amd64", "x86_64", "x86-64", "i386", "i686", "386", "arm", "armhf", "armel",
         "arm64", "aarch64", "AArch64", "s390x", "ppc64le", "riscv64"]
    ),
    _word,
)  # fmt: skip
_variant = st.one_of(
    st.sampled_from(["", "v1", "v2", "v3", "5", "6", "7", "8", "v5", "v6", "v7", "v8", "V8"]),
    _word,
)
_platform = st.builds(Platform, _os, _arch, _variant)


@given(_platform)
def test_normalize_is_idempotent(p: Platform) -> None:
    once = normalize(p)
    assert normalize(once) == once
    assert once.os == once.os.lower() and once.architecture == once.architecture.lower()


@given(_platform)
def test_platform_matches_itself(p: Platform) -> None:
    assert matches(p, p)
    assert matches(p, p, strict=True)
    assert matches(p, normalize(p))
    assert matches(normalize(p), p)
    assert rank(p, [p]) == [0]
    assert select([p], [None, p]) == [1]


@given(_platform, _platform)
def test_strict_match_implies_match(a: Platform, b: Platform) -> None:
    if matches(a, b, strict=True):
        assert matches(a, b)
    na, nb = normalize(a), normalize(b)
    same = (na.os, na.architecture, na.variant) == (nb.os, nb.architecture, nb.variant)
    assert matches(a, b, strict=True) == same


@given(st.sampled_from(["linux/amd64", "linux/arm64/v8", "linux/arm/v6", "windows/amd64"]))
def test_parse_str_round_trip(text: str) -> None:
    p = parse_platform(text)
    assert parse_platform(str(p)) == p
