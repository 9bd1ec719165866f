from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.bake.spec import CacheSpec, load_spec, parse_spec
from cargohold.cli import output
from cargohold.errors import InvalidInputError
from cargohold.units import GIB, KIB, MB, MIB, format_rate, format_size, parse_size

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD = """\
# a node image
store = "containerd"
namespace = "k8s.io"
platforms = ["linux/amd64", "linux/arm64/v8"]
budget = "20GiB"
reserve = "500MB"
jobs = 3

[[image]]
ref = "registry.k8s.io/pause:3.9"
critical = true

[[image]]
ref = "nginx"
mode = "fetch"
priority = 2.5

[[image]]
ref = "quay.io/prometheus/node-exporter:v1.8.1"
priority = 0
platforms = ["linux/arm64"]
"""


def spec(text: str, name: str = "cache.toml") -> CacheSpec:
    return parse_spec(text, name=name, format="toml")


def error_of(text: str, name: str = "cache.toml") -> str:
    with pytest.raises(InvalidInputError) as info:
        spec(text, name)
    return str(info.value)


def test_good_spec() -> None:
    s = spec(GOOD)
    assert s.format == "toml" and s.path == "cache.toml"
    assert s.store == "containerd" and s.namespace == "k8s.io"
    assert [str(p) for p in s.platforms] == ["linux/amd64", "linux/arm64"]
    assert s.budget == 20 * GIB and s.reserve == 500_000_000 and s.jobs == 3
    pause, nginx, exporter = s.images
    assert str(pause.ref) == "registry.k8s.io/pause:3.9"
    assert pause.critical and pause.mode == "auto" and pause.requested == "pull"
    assert pause.priority == 1.0 and pause.line == 9
    assert str(nginx.ref) == "docker.io/library/nginx:latest"
    assert nginx.mode == "fetch" and nginx.requested == "fetch" and nginx.priority == 2.5
    assert nginx.line == 13
    assert exporter.priority == 0.0 and isinstance(exporter.priority, float)
    assert [str(p) for p in s.platforms_for(exporter)] == ["linux/arm64"]
    assert s.platforms_for(nginx) == s.platforms
    assert s.critical == (pause,)


def test_globals_are_optional() -> None:
    s = spec('[[image]]\nref = "nginx"\n')
    assert (s.store, s.namespace, s.budget, s.reserve, s.jobs) == (None,) * 5
    assert s.platforms == ()
    assert s.images[0].mode == "auto" and not s.images[0].critical


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # wrong mode
        (
            'budget = "1GiB"\n\n[[image]]\nref = "a"\n\n[[image]]\nref = "b"\n\n'
            '[[image]]\nref = "c"\nmode = "eager"\n',
            'cache.toml:11: image[3].mode: must be one of pull, fetch, auto (got "eager")',
        ),
        # negative priority
        (
            '[[image]]\nref = "a"\npriority = -1\n',
            "cache.toml:3: image[1].priority: must be a number >= 0 (got -1)",
        ),
        ('[[image]]\nref = "a"\npriority = "high"\n', "cache.toml:3: image[1].priority:"),
        ('[[image]]\nref = "a"\npriority = true\n', "cache.toml:3: image[1].priority:"),
        ('[[image]]\nref = "a"\npriority = inf\n', "cache.toml:3: image[1].priority:"),
        # unknown keys, in an image and at the top
        (
            '[[image]]\nref = "a"\n\n[[image]]\nref = "b"\npriorty = 3\n',
            'cache.toml:6: image[2].priorty: unknown key (did you mean "priority"?',
        ),
        (
            'budget = "1GiB"\nbudjet = "2GiB"\n[[image]]\nref = "a"\n',
            'cache.toml:2: budjet: unknown key (did you mean "budget"?',
        ),
        ('[settings]\njobs = 2\n[[image]]\nref = "a"\n', "cache.toml:1: settings: unknown key"),
        # missing ref: the table's header line
        (
            '[[image]]\nref = "a"\n\n[[image]]\n# no ref\nmode = "pull"\n',
            "cache.toml:4: image[2].ref: required key is missing",
        ),
        ("[[image]]\nref = 3\n", "cache.toml:2: image[1].ref: must be a string (got 3)"),
        # bad size unit
        (
            'budget = "20 GiBs"\n[[image]]\nref = "a"\n',
            'cache.toml:1: budget: invalid size "20 GiBs": unknown unit "GiBs"',
        ),
        (
            'jobs = 1\nreserve = "2G"\n[[image]]\nref = "a"\n',
            'cache.toml:2: reserve: invalid size "2G": unit "G" is ambiguous; write GB',
        ),
        ('budget = 1.5e9\n[[image]]\nref = "a"\n', "cache.toml:1: budget: write whole bytes"),
        ('budget = -5\n[[image]]\nref = "a"\n', "cache.toml:1: budget: invalid size -5"),
        ('budget = "0GiB"\n[[image]]\nref = "a"\n', "cache.toml:1: budget: must be more than 0"),
        # bad ref
        (
            '[[image]]\nref = "Registry/UPPER:tag"\n',
            "cache.toml:2: image[1].ref: invalid reference 'Registry/UPPER:tag'",
        ),
        ('[[image]]\nref = "nginx:"\n', "cache.toml:2: image[1].ref: invalid reference"),
        # duplicate ref (after normalisation)
        (
            '[[image]]\nref = "nginx"\n\n[[image]]\nref = "docker.io/library/nginx:latest"\n',
            "cache.toml:5: image[2].ref: duplicate of image[1] at line 1 "
            "(docker.io/library/nginx:latest)",
        ),
        # bad platforms
        (
            'platforms = ["linux/amd64", "linux/arm64/v8/x"]\n[[image]]\nref = "a"\n',
            "cache.toml:1: platforms[1]: invalid platform 'linux/arm64/v8/x'",
        ),
        (
            '[[image]]\nref = "a"\nplatforms = ["plan10"]\n',
            "cache.toml:3: image[1].platforms[0]: invalid platform 'plan10'",
        ),
        ('[[image]]\nref = "a"\nplatforms = []\n', "cache.toml:3: image[1].platforms: must be"),
        ('platforms = "linux/amd64"\n[[image]]\nref = "a"\n', "cache.toml:1: platforms: must be"),
        # other fields
        (
            '[[image]]\nref = "a"\ncritical = true\nmode = "fetch"\n',
            'cache.toml:4: image[1].mode: a critical image is always pulled: mode "fetch"',
        ),
        ('[[image]]\nref = "a"\ncritical = "yes"\n', "cache.toml:3: image[1].critical: must be"),
        ('jobs = 0\n[[image]]\nref = "a"\n', "cache.toml:1: jobs: must be an integer >= 1 (got 0)"),
        ('jobs = true\n[[image]]\nref = "a"\n', "cache.toml:1: jobs: must be an integer >= 1"),
        (
            'store = "docker"\n[[image]]\nref = "a"\n',
            'cache.toml:1: store: must be one of embedded, containerd (got "docker")',
        ),
        ('namespace = "a b"\n[[image]]\nref = "a"\n', "cache.toml:1: namespace: must be"),
        ('budget = "1GiB"\n', "cache.toml:1: image: no images"),
        ('image = "nginx"\n', "cache.toml:1: image: must be an array of tables"),
        ('image = ["nginx"]\n', "cache.toml:1: image[1]: must be a table"),
        # invalid TOML: tomllib's line
        ('jobs = 2\n[[image]]\nref = "a\n', "cache.toml:3: invalid TOML"),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_lines_survive_multiline_values_strings_and_comments() -> None:
    text = (
        'platforms = [\n  "linux/amd64",\n  # [[image]] in a comment\n  "linux/arm64",\n]\n'
        'namespace = """k8s\n"""\n'  # invalid (a newline), and a multi-line string
        '[[image]]\nref = "a"\n'
    )
    assert error_of(text).startswith("cache.toml:6: namespace: must be")
    text = (
        '# [[image]]\nplatforms = [\n "linux/amd64", # "[[image]]"\n]\n\n'
        "[[image]]\n"
        'ref = "a"  # mode = "eager"\n'
        "priority = 1\n"
        "\n"
        '[[ image ]]  # the second\nref = "b"\n'
        "platforms = [\n"
        '  "linux/amd64",\n'
        "]\n"
        "  mode = 'lazy'\n"
    )
    assert error_of(text).startswith(
        'cache.toml:15: image[2].mode: must be one of pull, fetch, auto (got "lazy")'
    )


def test_lines_after_multiline_strings_and_bracketed_comments() -> None:
    # a multi-line literal string is a valid ref ("nginx"); its newline is counted
    text = "[[image]]\nref = '''\nnginx'''\nmode = \"eager\"\n"
    assert error_of(text).startswith("cache.toml:4: image[1].mode:")
    # brackets and quotes in comments do not open anything
    text = (
        "# TODO: [[image]] tables for the GPU pool [draft, don't use {yet\n"
        '[[image]]\nref = "a"  # see [1\n'
        "\n"
        '[[image]]\nref = "b"\npriority = -1\n'
    )
    assert error_of(text).startswith("cache.toml:7: image[2].priority:")


def test_key_line_within_its_own_table_not_the_previous_one() -> None:
    text = '[[image]]\nref = "a"\nmode = "pull"\n\n[[image]]\nref = "b"\npriority = -2\n'
    assert error_of(text).startswith("cache.toml:7: image[2].priority")
    # the same key in the first table must not be reported for the second
    text = '[[image]]\nref = "a"\npriority = 1\n\n[[image]]\nref = "b"\npriority = -2\n'
    assert error_of(text).startswith("cache.toml:7: image[2].priority")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_reported_line_is_the_bad_line(n: int, data: st.DataObject) -> None:
    """Random layouts (blank lines, comments, multi-line arrays, key order): the line
    named for a bad mode is the line where that mode is written."""
    bad = data.draw(st.integers(min_value=0, max_value=n - 1))
    lines: list[str] = []
    if data.draw(st.booleans()):
        lines += ["platforms = [", '  "linux/amd64",  # [[image]]', "]"]
    lines.append('budget = "1GiB"')
    expected = 0
    for k in range(n):
        lines += [""] * data.draw(st.integers(0, 2))
        if data.draw(st.booleans()):
            lines.append(f"# image {k} [[image]]")
        lines.append("[[image]]" if data.draw(st.booleans()) else "[[ image ]]")
        keys = [f'ref = "repo{k}"']
        if data.draw(st.booleans()):
            keys.append("priority = 2")
        if data.draw(st.booleans()):
            keys.append('platforms = [\n  "linux/amd64",\n]')
        keys.append('mode = "eager"' if k == bad else 'mode = "fetch"')
        keys = data.draw(st.permutations(keys))
        for key in keys:
            if key.startswith("mode") and k == bad:
                expected = len(lines) + 1
            lines += key.split("\n")
    message = error_of("\n".join(lines) + "\n")
    assert message.startswith(f"cache.toml:{expected}: image[{bad + 1}].mode:"), message


# ---------------------------------------------------------------- plain lists


def test_plain_list() -> None:
    text = (
        "# node image\n"
        "\n"
        "registry.k8s.io/pause:3.9\n"
        "   nginx   # trailing comment\n"
        "localhost:5000/team/app@sha256:" + "a" * 64 + "\n"
    )
    s = parse_spec(text, name="images.txt", format="list")
    assert s.format == "list" and s.budget is None and s.store is None
    assert [str(e.ref) for e in s.images] == [
        "registry.k8s.io/pause:3.9",
        "docker.io/library/nginx:latest",
        "localhost:5000/team/app@sha256:" + "a" * 64,
    ]
    assert [e.line for e in s.images] == [3, 4, 5]
    assert all(e.mode == "auto" and e.priority == 1.0 and not e.critical for e in s.images)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx\n\nUPPER\n", "images.txt:3: ref: invalid reference 'UPPER'"),
        ("nginx\n# x\ndocker.io/library/nginx\n", "images.txt:3: ref: duplicate of line 1"),
        ("# only comments\n\n", "images.txt:1: no image references"),
        ('nginx\nbudget = "1GiB"\n', 'images.txt:2: ref: "budget = \\"1GiB\\"" looks like TOML'),
        ("[[image]]\n", 'images.txt:1: ref: "[[image]]" looks like TOML'),
    ],
)
def test_plain_list_errors(text: str, expected: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_spec(text, name="images.txt", format="list")
    assert str(info.value).startswith(expected), str(info.value)


def test_format_is_chosen_by_extension(tmp_path: Path) -> None:
    toml = tmp_path / "cache.TOML"
    toml.write_text('[[image]]\nref = "nginx"\npriority = 3\n')
    assert load_spec(toml).format == "toml" and load_spec(toml).images[0].priority == 3
    assert load_spec(toml).path == str(toml)
    plain = tmp_path / "images.list"
    plain.write_text("nginx\nbusybox\n")
    assert load_spec(plain).format == "list" and len(load_spec(plain).images) == 2
    # TOML content under another name is refused with a hint, unless format says so
    other = tmp_path / "cache.conf"
    other.write_text('[[image]]\nref = "nginx"\n')
    with pytest.raises(InvalidInputError, match=r"cache.conf:1: .*looks like TOML.*\.toml"):
        load_spec(other)
    assert load_spec(other, format="toml").images[0].ref.path == "library/nginx"
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b'\xef\xbb\xbf[[image]]\nref = "nginx"\n')  # as some Windows editors save
    assert load_spec(bom).images[0].line == 1


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"cache spec .*missing.toml does not exist"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"nginx\n\xff\xfe\n")
    with pytest.raises(InvalidInputError, match=r"bin.txt:2: not UTF-8"):
        load_spec(bad)
    with pytest.raises(InvalidInputError, match="is a directory"):
        load_spec(tmp_path)


def test_examples_are_valid() -> None:
    s = load_spec(EXAMPLES / "cache.toml")
    assert s.format == "toml" and len(s.images) >= 15
    assert {e.ref.path for e in s.critical} >= {"pause", "coredns/coredns", "kube-proxy"}
    assert s.budget is not None and s.budget > 10 * GIB
    assert {e.mode for e in s.images} == {"auto", "fetch", "pull"}
    plain = load_spec(EXAMPLES / "images.txt")
    assert plain.format == "list" and len(plain.images) >= 5


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * GIB),
        ("500MB", 500_000_000),
        ("1.5 GiB", 3 * GIB // 2),
        ("1024", 1024),
        ("0", 0),
        ("7 B", 7),
        ("64Mi", 64 * MIB),
        ("2kb", 2000),
        ("2KiB", 2 * KIB),
        ("1TB", 10**12),
        ("1tib", 2**40),
        (".5 MiB", MIB // 2),
        ("1.0000000001 B", 1),
        (12345, 12345),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("20G", "ambiguous"),
        ("5m", "ambiguous"),
        ("20 GiBs", "unknown unit"),
        ("-1GiB", "negative"),
        (-1, "negative"),
        ("", "expected a number"),
        ("GiB", "expected a number"),
        ("1.2.3GB", "expected a number"),
        ("1e9", "expected a number"),
        ("1 ex", "unknown unit"),
        (True, "expected bytes"),
    ],
)
def test_parse_size_errors(text: str | int, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        parse_size(text)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([("B", 1), ("kB", 1000), ("MiB", MIB), ("GB", 10**9), ("GiB", GIB)]),
    st.sampled_from(["", " "]),
)
def test_parse_size_units(amount: int, unit: tuple[str, int], space: str) -> None:
    name, factor = unit
    assert parse_size(f"{amount}{space}{name}") == amount * factor
    assert parse_size(f"{amount}{space}{name.upper()}") == amount * factor


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips_within_rounding(n: int) -> None:
    text = format_size(n)
    assert re.fullmatch(r"\d+ B|\d+\.\d (kB|MB|GB|TB|PB)", text), text
    back = parse_size(text)
    assert abs(back - n) <= 0.05 * n + 1


def test_format_size() -> None:
    """One convention, SI: a size written "200MB" reads back as 200.0 MB (issue 14, 9)."""
    assert format_size(0) == "0 B"
    assert format_size(999) == "999 B"
    assert format_size(1500) == "1.5 kB"
    assert format_size(parse_size("200MB")) == "200.0 MB"
    assert format_size(parse_size("250MB")) == "250.0 MB"
    assert format_size(20 * GIB) == "21.5 GB"
    assert format_size(-3 * MB) == "-3.0 MB"
    assert format_size(999_960) == "1.0 MB"  # never "1000.0 kB"
    assert format_size(10**18) == "1000.0 PB"
    assert not hasattr(output, "human_bytes")  # one formatter, one name: units.format_size
    assert format_rate(12_300_000) == "12.3 MB/s"
