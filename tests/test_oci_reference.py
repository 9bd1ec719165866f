"""cargohold.oci.reference: Docker/containerd normalisation, validation and round trips."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cargohold.errors import InvalidInputError
from cargohold.oci.digest import Digest
from cargohold.oci.reference import Reference, parse_reference, split_domain

HEX = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
DIG = f"sha256:{HEX}"


# Vectors from distribution/reference's normalize tests (ParseNormalizedNamed), with
# TagNameOnly's ":latest" added where there is neither tag nor digest.
@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("user/repo", "docker.io", "user/repo", "latest", None),
        ("docker/docker", "docker.io", "docker/docker", "latest", None),
        ("library/debian", "docker.io", "library/debian", "latest", None),
        ("docker.io/docker/docker", "docker.io", "docker/docker", "latest", None),
        ("docker.io/library/debian", "docker.io", "library/debian", "latest", None),
        ("docker.io/debian", "docker.io", "library/debian", "latest", None),
        ("index.docker.io/docker/docker", "docker.io", "docker/docker", "latest", None),
        ("index.docker.io/debian", "docker.io", "library/debian", "latest", None),
        ("127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker", "latest", None),
        ("127.0.0.1:5000/debian", "127.0.0.1:5000", "debian", "latest", None),
        ("localhost/repo", "localhost", "repo", "latest", None),
        ("localhost:5000/repo", "localhost:5000", "repo", "latest", None),
        ("localhost:5000/ns/repo:v1", "localhost:5000", "ns/repo", "v1", None),
        ("test.com/foo", "test.com", "foo", "latest", None),
        ("test_com/foo", "docker.io", "test_com/foo", "latest", None),
        ("test-com:8080/foo", "test-com:8080", "foo", "latest", None),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", "latest", None),
        ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", "latest", None),
        ("[::1]:5000/foo", "[::1]:5000", "foo", "latest", None),
        # A first component with an upper-case letter is read as a domain.
        ("Foo/bar", "Foo", "bar", "latest", None),
        # No '/': "localhost:5000" is the repository "localhost" with tag "5000".
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
        ("192.168.0.1:80", "docker.io", "library/192.168.0.1", "80", None),
        ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
        ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
        ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io",
         "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "latest",
         None),
        (f"docker.io/{HEX}", "docker.io", f"library/{HEX}", "latest", None),
        ("docker---rules/docker", "docker.io", "docker---rules/docker", "latest", None),
        ("dock__er/docker", "docker.io", "dock__er/docker", "latest", None),
        (f"redis@{DIG}", "docker.io", "library/redis", None, DIG),
        (f"quay.io/a/b:1.0@{DIG}", "quay.io", "a/b", "1.0", DIG),
    ],
)  # fmt: skip
def test_normalisation(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.domain == domain
    assert ref.path == path
    assert ref.tag == tag
    assert (str(ref.digest) if ref.digest else None) == digest


def test_full_string_forms() -> None:
    assert str(parse_reference("nginx")) == "docker.io/library/nginx:latest"
    assert str(parse_reference("user/repo:1")) == "docker.io/user/repo:1"
    assert (
        str(parse_reference(f"busybox:latest@{DIG}")) == f"docker.io/library/busybox:latest@{DIG}"
    )
    assert str(parse_reference(f"busybox@{DIG}")) == f"docker.io/library/busybox@{DIG}"


def test_digest_only_gets_no_default_tag() -> None:
    ref = parse_reference(f"repo@{DIG}")
    assert ref.tag is None
    assert ref.digest == Digest("sha256", HEX)
    assert ref.object == DIG


def test_tag_and_digest_kept() -> None:
    ref = parse_reference(f"repo:v2@{DIG}")
    assert ref.tag == "v2"
    assert ref.object == DIG  # the digest wins for the request


def test_no_default_tag_option() -> None:
    assert parse_reference("nginx", default_tag=False).tag is None


@pytest.mark.parametrize(
    ("familiar", "full", "domain", "path"),
    [
        ("fooo/bar", "docker.io/fooo/bar", "docker.io", "fooo/bar"),
        ("ubuntu", "docker.io/library/ubuntu", "docker.io", "library/ubuntu"),
        ("other/library", "docker.io/other/library", "docker.io", "other/library"),
        ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase",
         "127.0.0.1:8000", "private/moonbase"),
        ("example.com/privatebase", "example.com/privatebase", "example.com", "privatebase"),
        ("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base", "docker.io",
         "library/ubuntu-12.04-base"),
        ("library/foo/bar", "docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ("store/foo/bar", "docker.io/store/foo/bar", "docker.io", "store/foo/bar"),
    ],
)  # fmt: skip
def test_familiar_and_full_names(familiar: str, full: str, domain: str, path: str) -> None:
    for text in (familiar, full):
        ref = parse_reference(text, default_tag=False)
        assert ref.name == full
        assert ref.familiar() == familiar
        assert ref.domain == domain
        assert ref.repository == path


def test_familiar_keeps_tag_and_digest() -> None:
    ref = parse_reference(f"busybox:latest@{DIG}")
    assert ref.familiar() == f"busybox:latest@{DIG}"


def test_familiar_stays_unambiguous() -> None:
    # Docker would print "localhost/x", which parses back with domain "localhost".
    ref = parse_reference("docker.io/localhost/x:1")
    assert ref.familiar() == "docker.io/localhost/x:1"
    assert parse_reference(ref.familiar()) == ref


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty reference"),
        ("NGINX", "must be lowercase"),
        ("docker/Docker", "must be lowercase"),
        ("docker.io/docker/Docker", "must be lowercase"),
        ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
        ("nginx@sha256:abc", "64 hex characters"),
        ("nginx@sha256:" + "G" * 64, "lower-case hex"),
        ("nginx@md5:" + "a" * 32, "unsupported algorithm"),
        ("nginx@", "empty digest"),
        ("nginx:", "empty tag"),
        ("nginx:" + "a" * 129, "longer than 128"),
        ("nginx:-x", "invalid tag"),
        ("nginx:.x", "invalid tag"),
        ("nginx:a+b", "invalid tag"),
        ("https://github.com/docker/docker", "invalid"),
        ("-docker", "invalid path component"),
        ("-docker/docker", "invalid path component"),
        ("docker-/docker", "invalid path component"),
        ("____/____", "invalid path component"),
        ("dock..er/docker", "invalid domain"),  # has a dot: read as a domain
        ("dock..er/docker", "invalid domain"),  # has a dot: read as a domain
        ("docker///docker", "empty path component"),
        ("docker/", "empty path component"),
        ("-docker.io/docker/docker", "invalid domain"),
        (HEX, "64-character hexadecimal"),
        ("nginx latest", "white space"),
        (":tag", "missing repository name"),
        ("a/" + "b" * 250, "longer than 255"),
    ],
)
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_reference(text)
    assert reason in str(exc.value)
    assert repr(text) in str(exc.value)  # the message names the input


def test_name_length_counts_the_domain() -> None:
    # distribution/reference counts the whole normalised name, docker.io/library/ included.
    path = "a" * (255 - len("docker.io/library/"))
    assert parse_reference(path).name == f"docker.io/library/{path}"
    with pytest.raises(InvalidInputError, match="longer than 255"):
        parse_reference(path + "a")


def test_tag_of_128_accepted() -> None:
    assert parse_reference("nginx:" + "a" * 128).tag == "a" * 128


def test_object_and_api_host() -> None:
    assert parse_reference("nginx").object == "latest"
    assert parse_reference("nginx:1.25").object == "1.25"
    assert parse_reference("nginx").api_host == "registry-1.docker.io"
    assert parse_reference("index.docker.io/x/y").api_host == "registry-1.docker.io"
    assert parse_reference("ghcr.io/x/y").api_host == "ghcr.io"
    assert parse_reference("localhost:5000/x").api_host == "localhost:5000"
    assert Reference("ghcr.io", "x").object == "latest"


def test_with_digest_and_with_tag() -> None:
    ref = parse_reference("ghcr.io/a/b:1")
    d = Digest("sha256", HEX)
    pinned = ref.with_digest(d)
    assert str(pinned) == f"ghcr.io/a/b:1@{DIG}"
    assert ref.with_digest(DIG) == pinned
    assert str(ref.with_tag("2")) == "ghcr.io/a/b:2"
    assert str(pinned.without_digest()) == "ghcr.io/a/b:1"
    assert ref.tag == "1" and ref.digest is None  # frozen: the original is unchanged
    with pytest.raises(InvalidInputError, match="invalid tag"):
        ref.with_tag("no/slash")
    with pytest.raises(InvalidInputError, match="invalid digest"):
        ref.with_digest("sha256:xyz")


def test_split_domain() -> None:
    assert split_domain("nginx") == ("docker.io", "library/nginx")
    assert split_domain("index.docker.io/a/b") == ("docker.io", "a/b")
    assert split_domain("a.b/c") == ("a.b", "c")


def test_reference_is_hashable_and_comparable() -> None:
    a = parse_reference("nginx")
    b = parse_reference("docker.io/library/nginx:latest")
    assert a == b
    assert len({a, b}) == 1


# --------------------------------------------------------------------------- properties

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_port = st.integers(min_value=1, max_value=65535).map(lambda p: f":{p}")
_dotted = st.lists(_label, min_size=2, max_size=3).map(".".join)
_domain = st.one_of(
    st.none(),
    st.sampled_from(["docker.io", "index.docker.io", "localhost", "[::1]:5000"]),
    st.builds(lambda host, port: host + port, _dotted, st.one_of(st.just(""), _port)),
    st.builds(lambda host, port: host + port, _label, _port),
    _port.map(lambda p: "localhost" + p),
)
_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=4).map("/".join)
_tag = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(
    st.none(),
    st.builds(Digest.from_bytes, st.binary(max_size=16), st.sampled_from(["sha256", "sha512"])),
)


@given(_domain, _path, _tag, _digest)
def test_round_trip(domain: str | None, path: str, tag: str | None, digest: Digest | None) -> None:
    first = path.split("/")[0]
    # Without a domain, a first component with a '.' (or "localhost") would be one.
    assume(domain is not None or ("." not in first and first != "localhost"))
    text = path if domain is None else f"{domain}/{path}"
    assume(len(text) < 200 and len(path) != 64)
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    ref = parse_reference(text)
    again = parse_reference(str(ref))
    assert again == ref
    assert str(again) == str(ref)
    assert parse_reference(ref.familiar()) == ref
    assert ref.digest == digest
    assert ref.tag == (tag if tag is not None or digest is not None else "latest")
    assert ref.path.endswith(path)
    assert ref.object == (str(digest) if digest is not None else ref.tag)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_invalid_input(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidInputError:
        return
    assert parse_reference(str(ref)) == ref
