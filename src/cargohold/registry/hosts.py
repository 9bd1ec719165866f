"""Which endpoints to try for a registry host: containerd's ``hosts.toml``. Pure except for
reading the config directory.

Layout (containerd's ``config_path``, default ``/etc/containerd/certs.d``)::

    <config dir>/<host>/hosts.toml          e.g. certs.d/docker.io/hosts.toml
    <config dir>/<host>:<port>/hosts.toml   or the Windows-safe <host>_<port>_/
    <config dir>/_default/hosts.toml        used when no directory matches

A ``hosts.toml``::

    server = "https://registry.example.com"      # the origin (default: the host itself)

    [host."https://mirror.example.com"]          # tried first, in file order
      capabilities = ["pull", "resolve"]         # default: pull, resolve, push
      skip_verify = false
      ca = "/etc/certs/mirror.pem"               # or a list; relative to the host dir
      client = [["/etc/certs/c.pem", "/etc/certs/c.key"]]
      override_path = false                      # true: the URL path is the API root
      [host."https://mirror.example.com".header]
        x-custom = "value"                       # or a list of values

Mirrors are tried in the order they appear, then the origin (``server``, if set,
replaces the registry host as origin). A host directory without ``hosts.toml`` is read
the Docker way: ``*.crt`` are CA files, ``*.cert`` + ``*.key`` client pairs.

Scheme rules for the origin when ``server`` is not set (as containerd 2.x):

* ``plain_http=True`` -> ``http://``; ``plain_http=False`` -> ``https://`` only;
* ``plain_http=None`` (not said): ``https://``, except for localhost / 127.0.0.0/8 / ::1:
  port 80 -> plain HTTP; port 443 or none -> HTTPS with verification skipped; any other
  port -> HTTPS first with verification skipped, falling back to plain HTTP when the TLS
  handshake fails (:attr:`Endpoint.http_fallback`). containerd 1.6's ``ctr`` went straight
  to HTTP for localhost; 2.x tries HTTPS first — cargohold follows 2.x.
* ``docker.io`` is served by ``https://registry-1.docker.io``.

``insecure=True`` skips TLS verification on every endpoint that does not set
``skip_verify`` itself. Mirrors written without a scheme are HTTPS. Client certificates are
parsed; the transport presents the first pair of an endpoint (one TLS identity per
connection pool).
"""

from __future__ import annotations

import ipaddress
import posixpath
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cargohold.errors import InvalidInputError

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
CAPABILITIES = ("pull", "resolve", "push")
ALL_CAPABILITIES = frozenset(CAPABILITIES)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to send registry API requests to."""

    base_url: str  # "https://host[:port]"
    path: str = "/v2"  # API root: "/v2", or the URL path with override_path
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()  # (cert, key or "" if in the cert file)
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False
    http_fallback: bool = False  # HTTPS first; plain HTTP if the TLS handshake fails

    @property
    def scheme(self) -> str:
        return self.base_url.split("://", 1)[0]

    @property
    def host(self) -> str:
        """``host[:port]`` as in the URL."""
        return self.base_url.split("://", 1)[1]

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def url(self, suffix: str) -> str:
        """The URL of ``suffix`` (``/<repo>/manifests/<ref>``) under the API root."""
        return f"{self.base_url}{self.path}{suffix}"

    def as_http(self) -> Endpoint:
        """The same endpoint over plain HTTP (the localhost fallback)."""
        return replace(self, base_url=f"http://{self.host}", http_fallback=False)


@dataclass(frozen=True, slots=True)
class HostConfig:
    """One parsed ``[host."..."]`` table, or the top level (``server``) when ``url`` is the
    server or empty (meaning: the default origin)."""

    url: str  # "" for the top level without `server`
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool | None = None
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False


@dataclass(frozen=True, slots=True)
class HostsFile:
    """A parsed ``hosts.toml``: mirrors in order, then the server (origin) entry."""

    mirrors: tuple[HostConfig, ...] = ()
    server: HostConfig = field(default_factory=lambda: HostConfig(""))


def _fail(where: str, msg: str) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: {msg}", hint="fix the hosts.toml named in the message (containerd's format)"
    )


def _abs(p: str, base: Path) -> str:
    return p if posixpath.isabs(p) else str(base / p)


def _strings(value: Any, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(where, f"{what!r} must be a string or a list of strings")


def _parse_table(url: str, table: Mapping[str, Any], base: Path, where: str) -> HostConfig:
    caps_raw = table.get("capabilities")
    if caps_raw is None or caps_raw == []:
        caps = ALL_CAPABILITIES
    else:
        names = [c.lower() for c in _strings(caps_raw, where, "capabilities")]
        unknown = [c for c in names if c not in ALL_CAPABILITIES]
        if unknown:
            raise _fail(where, f"unknown capability {unknown[0]!r} (known: {', '.join(CAPABILITIES)})")
        caps = frozenset(names)
    skip = table.get("skip_verify")
    if skip is not None and not isinstance(skip, bool):
        raise _fail(where, "'skip_verify' must be true or false")
    ca: tuple[str, ...] = ()
    if table.get("ca") is not None:
        ca = tuple(_abs(p, base) for p in _strings(table["ca"], where, "ca"))
    clients: list[tuple[str, str]] = []
    client = table.get("client")
    if client is not None:
        items = [client] if isinstance(client, str) else client
        if not isinstance(items, list):
            raise _fail(where, "'client' must be a path, a list of paths or of [cert, key] pairs")
        for item in items:
            if isinstance(item, str):
                clients.append((_abs(item, base), ""))
            elif (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, str) for x in item)
            ):
                clients.append((_abs(item[0], base), _abs(item[1], base) if item[1] else ""))
            else:
                raise _fail(where, f"invalid 'client' entry {item!r}: a path or a [cert, key] pair")
    headers: list[tuple[str, str]] = []
    hdr = table.get("header")
    if hdr is not None:
        if not isinstance(hdr, dict):
            raise _fail(where, "'header' must be a table")
        for k, v in hdr.items():
            headers.extend((str(k), s) for s in _strings(v, where, f"header {k}"))
    override = table.get("override_path", False)
    if not isinstance(override, bool):
        raise _fail(where, "'override_path' must be true or false")
    return HostConfig(
        url=url,
        capabilities=caps,
        skip_verify=skip,
        ca_files=ca,
        client_certs=tuple(clients),
        headers=tuple(headers),
        override_path=override,
    )


def parse_hosts_toml(text: str, base_dir: Path | str, where: str = "hosts.toml") -> HostsFile:
    """Parse a ``hosts.toml``; relative ``ca``/``client`` paths are taken from ``base_dir``."""
    base = Path(base_dir)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _fail(where, f"not valid TOML: {e}") from None
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise _fail(where, "'server' must be a string")
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise _fail(where, "'host' must be a table of [host.\"<url>\"] tables")
    mirrors = []
    for url, table in hosts.items():  # tomllib keeps the file's order
        if not isinstance(table, dict):
            raise _fail(where, f"host {url!r} must be a table")
        mirrors.append(_parse_table(url, table, base, f"{where}: host {url!r}"))
    top = {k: v for k, v in doc.items() if k not in ("server", "host")}
    return HostsFile(tuple(mirrors), _parse_table(server, top, base, where))


def _cert_files(hostdir: Path) -> HostsFile:
    """Docker's certs.d layout: ``*.crt`` CAs, ``*.cert`` (+ ``*.key``) client pairs."""
    cas: list[str] = []
    clients: list[tuple[str, str]] = []
    try:
        names = sorted(p.name for p in hostdir.iterdir() if p.is_file())
    except OSError:
        names = []
    for name in names:
        if name.endswith(".crt"):
            cas.append(str(hostdir / name))
        elif name.endswith(".cert"):
            key = hostdir / (name[: -len(".cert")] + ".key")
            clients.append((str(hostdir / name), str(key) if key.exists() else ""))
    return HostsFile((), HostConfig("", ca_files=tuple(cas), client_certs=tuple(clients)))


def host_dir_names(host: str) -> list[str]:
    """Directory names tried for ``host``, in order (containerd's hostPaths)."""
    names = []
    idx = host.rfind(":")
    if idx > 0 and not host.endswith("]"):
        names.append(f"{host[:idx]}_{host[idx + 1:]}_")
    names += [host, "_default"]
    return names


def find_host_dir(config_dir: Path | str | None, host: str) -> Path | None:
    if not config_dir:
        return None
    root = Path(config_dir)
    for name in host_dir_names(host):
        p = root / name
        if p.is_dir():
            return p
    return None


def load_hosts_file(config_dir: Path | str | None, host: str) -> HostsFile | None:
    """The host's parsed config, or None when there is no directory for it."""
    hostdir = find_host_dir(config_dir, host)
    if hostdir is None:
        return None
    f = hostdir / "hosts.toml"
    try:
        text = f.read_text()
    except FileNotFoundError:
        return _cert_files(hostdir)
    except OSError as e:
        raise _fail(str(f), f"cannot read: {e}") from None
    if not text.strip():
        return _cert_files(hostdir)
    return parse_hosts_toml(text, hostdir, str(f))


def split_host_port(host: str) -> tuple[str, str]:
    """``("127.0.0.1", "5000")`` from ``127.0.0.1:5000``; IPv6 in brackets is understood."""
    if host.startswith("["):
        end = host.find("]")
        name = host[1:end]
        rest = host[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else ""
    name, sep, port = host.rpartition(":")
    if not sep or ":" in name:
        return host, ""
    return name, port


def is_localhost(host: str) -> bool:
    name, _ = split_host_port(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _endpoint_from_url(
    url: str, cfg: HostConfig, *, insecure: bool, is_mirror: bool, where: str
) -> Endpoint:
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    parts = urlsplit(url)
    if not parts.netloc:
        raise _fail(where, f"invalid host URL {url!r}")
    path = parts.path
    if path and path != "/":
        path = posixpath.normpath(path)
        if not path.endswith("/v2") and not cfg.override_path:
            path += "/v2"
    elif not cfg.override_path:
        path = "/v2"
    else:
        path = ""
    skip = cfg.skip_verify if cfg.skip_verify is not None else insecure
    return _configured(cfg, f"{parts.scheme}://{parts.netloc}", path, skip, is_mirror=is_mirror)


def default_origin(
    registry_host: str, cfg: HostConfig, *, plain_http: bool | None, insecure: bool
) -> Endpoint:
    """The origin endpoint when no ``server`` is configured."""
    skip = cfg.skip_verify if cfg.skip_verify is not None else insecure
    fallback = False
    if registry_host == DOCKER_HUB:
        scheme, host = "https", DOCKER_HUB_API
    elif plain_http is not None:
        scheme, host = ("http" if plain_http else "https"), registry_host
    elif is_localhost(registry_host):
        host = registry_host
        _, port = split_host_port(registry_host)
        if port == "80":
            scheme = "http"
        else:
            scheme = "https"
            if cfg.skip_verify is None:
                skip = True
            fallback = port not in ("", "443")
    else:
        scheme, host = "https", registry_host
    return _configured(cfg, f"{scheme}://{host}", "/v2", skip, http_fallback=fallback)


def _configured(
    cfg: HostConfig,
    base_url: str,
    path: str,
    skip_verify: bool,
    *,
    is_mirror: bool = False,
    http_fallback: bool = False,
) -> Endpoint:
    """The endpoint at ``base_url`` + ``path`` with ``cfg``'s capabilities, CAs, client
    certificates and headers."""
    return Endpoint(
        base_url=base_url,
        path=path,
        capabilities=cfg.capabilities,
        skip_verify=skip_verify,
        ca_files=cfg.ca_files,
        client_certs=cfg.client_certs,
        headers=cfg.headers,
        is_mirror=is_mirror,
        http_fallback=http_fallback,
    )


def host_candidates(
    registry_host: str,
    config_dir: Path | str | None = DEFAULT_HOSTS_DIR,
    *,
    plain_http: bool | None = None,
    insecure: bool = False,
) -> list[Endpoint]:
    """Endpoints to try for ``registry_host`` (a reference's domain, e.g. ``docker.io`` or
    ``127.0.0.1:5000``): configured mirrors in file order, then the origin.

    Filter by capability with :meth:`Endpoint.can`.
    """
    if registry_host == "index.docker.io":
        registry_host = DOCKER_HUB
    hf = load_hosts_file(config_dir, registry_host) or HostsFile()
    where = f"hosts.toml for {registry_host}"
    out = [
        _endpoint_from_url(m.url, m, insecure=insecure, is_mirror=True, where=where)
        for m in hf.mirrors
    ]
    if hf.server.url:
        out.append(
            _endpoint_from_url(hf.server.url, hf.server, insecure=insecure, is_mirror=False, where=where)
        )
    else:
        out.append(default_origin(registry_host, hf.server, plain_http=plain_http, insecure=insecure))
    return out
