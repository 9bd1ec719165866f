"""Image references (``[domain/]path[:tag][@digest]``), parsed and normalised. Pure: no I/O.

Normalisation follows Docker's ``reference.ParseNormalizedNamed`` followed by
``reference.TagNameOnly`` (what containerd and ``docker pull`` do):

* ``nginx``                 -> ``docker.io/library/nginx:latest``
* ``user/repo``             -> ``docker.io/user/repo:latest``
* ``index.docker.io/x/y``   -> ``docker.io/x/y:latest``
* ``localhost/repo``, ``localhost:5000/repo``, ``host.tld/ns/repo``, ``host:5000/repo``
  keep their domain;
* ``repo@sha256:...``       -> no default tag (a digest pins the image);
* ``repo:tag@sha256:...``   -> keeps both (unlike ``ParseDockerRef``, which drops the tag).

The first ``/``-separated component is a domain only if it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter (repository paths are lower case, so Docker
reads such a component as a host name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from cargohold.errors import InvalidInputError
from cargohold.oci.digest import Digest

T = TypeVar("T")

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
#: Longest name (``domain/path``) Docker accepts.
NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128

# The grammar of distribution/reference (regexp.go), spelt out in ASCII classes
# (Python's \w would also match non-ASCII letters).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"

_PATH_COMPONENT_RE = re.compile(rf"^{_PATH_COMPONENT}$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference; build it with :func:`parse_reference`."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """``domain/path``: the repository's full name."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The path inside the registry (``library/nginx``), as in ``/v2/<repository>/``."""
        return self.path

    @property
    def object(self) -> str:
        """What goes in ``/v2/<name>/manifests/<object>``: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host to talk to: Docker Hub's API lives on ``registry-1.docker.io``."""
        return DOCKER_HUB_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """Docker's short form: ``docker.io/`` and an official image's ``library/`` dropped.

        Unlike Docker, the ``docker.io/`` prefix is kept when dropping it would make the
        first path component read as a domain (e.g. ``docker.io/localhost/x``), so the
        short form always parses back to the same reference.
        """
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            parts = path.split("/")
            if len(parts) == 2 and parts[0] == "library":
                path = parts[1]
            if not _looks_like_domain(path.split("/")[0]) or "/" not in path:
                name = path
        out = name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def with_digest(self, digest: Digest | str) -> Reference:
        """The same reference pinned to ``digest`` (the tag, if any, is kept)."""
        d = digest if isinstance(digest, Digest) else _parse_digest(str(self), digest)
        return replace(self, digest=d)

    def with_tag(self, tag: str) -> Reference:
        """The same repository with tag ``tag`` (the digest, if any, is kept)."""
        _check_tag(f"{self.name}:{tag}", tag)
        return replace(self, tag=tag)

    def without_digest(self) -> Reference:
        """The tag form (``latest`` if there was no tag)."""
        return replace(self, digest=None, tag=self.tag if self.tag is not None else DEFAULT_TAG)


def _looks_like_domain(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component.lower() != component
    )


def _fail(text: str, reason: str) -> InvalidInputError:
    return InvalidInputError(
        f"invalid reference {text!r}: {reason}",
        hint="a reference is [host[:port]/]repository[:tag][@sha256:<64 hex>], "
             "e.g. docker.io/library/busybox:1.36",
    )


def _check_tag(text: str, tag: str) -> None:
    if not tag:
        raise _fail(text, "empty tag")
    if len(tag) > TAG_LENGTH_MAX:
        raise _fail(text, f"tag is longer than {TAG_LENGTH_MAX} characters ({len(tag)})")
    if not _TAG_RE.match(tag):
        raise _fail(
            text,
            f"invalid tag {tag!r}: letters, digits, '_', '.' and '-' only, "
            "not starting with '.' or '-'",
        )


def _parse_digest(text: str, value: str) -> Digest:
    try:
        return Digest.parse(value)
    except InvalidInputError as e:
        raise _fail(text, str(e)) from None


def split_domain(name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: ``(domain, remainder)`` with Docker Hub defaults applied."""
    first, sep, rest = name.partition("/")
    if not sep or not _looks_like_domain(first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise an image reference; InvalidInputError says what is wrong.

    With ``default_tag`` (the default) a reference with neither tag nor digest gets
    ``latest``, as containerd's TagNameOnly does.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"invalid reference {text!r}: not a string")
    if not text:
        raise _fail(text, "empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise _fail(text, "contains white space")
    if _HEX64_RE.match(text):
        raise _fail(text, "a 64-character hexadecimal string is an image ID, not a repository name")

    # Digest first ('@' cannot appear elsewhere), then the tag: a ':' after the last '/'.
    rest, at, digest_text = text.partition("@")
    if at and not digest_text:
        raise _fail(text, "empty digest after '@'")
    digest = _parse_digest(text, digest_text) if at else None
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check_tag(text, tag)
    if not rest:
        raise _fail(text, "missing repository name")

    domain, path = split_domain(rest)
    if path.lower() != path:
        raise _fail(text, f"repository name must be lowercase (got {path!r})")
    if not _DOMAIN_RE.match(domain):
        raise _fail(text, f"invalid domain {domain!r}")
    port = domain.rpartition(":")[2] if not domain.endswith("]") else ""
    if port.isdigit() and not 0 < int(port) < 65536:
        raise _fail(text, f"port {port} of {domain!r} is out of range (1-65535)")
    for component in path.split("/"):
        if not component:
            raise _fail(text, "empty path component (stray '/')")
        if not _PATH_COMPONENT_RE.match(component):
            raise _fail(
                text,
                f"invalid path component {component!r}: lower-case letters and digits, "
                "separated by '.', '_', '__' or dashes, starting and ending with a letter or digit",
            )
    name_len = len(domain) + 1 + len(path)
    if name_len > NAME_TOTAL_LENGTH_MAX:
        raise _fail(
            text, f"repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters ({name_len})"
        )
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def lookup_by_name(by_name: Mapping[str, T], text: str) -> T | None:
    """What ``by_name`` (keyed by image names) holds for ``text``, as given or normalised
    (``busybox`` finds ``docker.io/library/busybox:latest``); None if neither is there or
    ``text`` is no reference."""
    found = by_name.get(text)
    if found is not None:
        return found
    try:
        return by_name.get(str(parse_reference(text)))
    except InvalidInputError:
        return None
