"""Registry authentication: ``WWW-Authenticate`` parsing, the bearer-token flow, basic auth,
and credentials from Docker's ``config.json`` and credential helpers.

Flow (as Docker and containerd do it): a request is sent without credentials (or with
what worked before for that host); a 401 carries a challenge:

* ``Basic realm=...``: credentials for the host are sent as basic auth from then on;
* ``Bearer realm=...,service=...,scope=...``: a token is fetched with
  ``GET <realm>?service=<service>&scope=<scope>...`` (anonymously, or with basic
  credentials), or with an OAuth2 ``POST`` (``grant_type=refresh_token``) when the
  credentials are an identity token; the answer's ``token`` (or ``access_token``) is sent as
  ``Authorization: Bearer``. Tokens are cached per (host, scope) until they expire
  (``expires_in``, 60 s when not given) and fetched again on a 401.

Credentials are looked up (first file that has an entry for the host wins) in: the
``--authfile`` path, ``$REGISTRY_AUTH_FILE``, ``$DOCKER_CONFIG/config.json``,
``~/.docker/config.json``. In a file: ``credHelpers[<host>]``, then ``auths`` (``auth`` =
base64 ``user:password``, or ``username``/``password``, or ``identitytoken``), then the
``credsStore`` default helper. Keys match by host name: ``https://host/v1/``, ``host``,
``http(s)://host``; Docker Hub is ``https://index.docker.io/v1/`` (also ``docker.io``,
``index.docker.io``, ``registry-1.docker.io``). Helpers are run as
``docker-credential-<name> get`` with the server URL on stdin and answer
``{"ServerURL", "Username", "Secret"}`` (``Username`` ``<token>`` = identity token).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cargohold.errors import InvalidInputError, UnauthorizedError, UnavailableError
from cargohold.registry.transport import TLSConfig, Transport
from cargohold.singleflight import SingleFlight

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: Token lifetime when the token server does not say (the Docker token spec's default).
DEFAULT_TOKEN_TTL = 60.0
#: Renew a token this long before it expires.
TOKEN_MARGIN = 5.0
MAX_TOKEN_RESPONSE = 1 << 20
HELPER_TIMEOUT = 30.0
CLIENT_ID = "cargohold"


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lower case, parameter
    names too (values keep their case)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)


_TOKEN_DELIMS = frozenset(' \t,="')


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _read_token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] not in _TOKEN_DELIMS:
        j += 1
    return s[i:j], j


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """``s[i]`` is the opening quote; returns the unescaped value and the index after."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i  # unterminated: take the rest


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Parse one or more ``WWW-Authenticate`` header values into challenges.

    Handles several challenges in one header, quoted strings with commas and escapes,
    unquoted tokens, spaces around ``=``, and a bare token68 (kept as ``token68``).
    """
    out: list[Challenge] = []
    for s in [values] if isinstance(values, str) else values:
        i, n = 0, len(s)
        scheme: str | None = None
        params: dict[str, str] = {}
        while i < n:
            i = _skip_ws(s, i)
            if i < n and s[i] == ",":
                i += 1
                continue
            if i >= n:
                break
            tok, j = _read_token(s, i)
            if not tok:  # stray character: skip it
                i = j + 1
                continue
            k = _skip_ws(s, j)
            if scheme is not None and k < n and s[k] == "=":
                # name=value, or a token68 ending in '=' padding
                v = _skip_ws(s, k + 1)
                if v < n and s[v] == '"':
                    value, i = _read_quoted(s, v)
                    params[tok.lower()] = value
                    continue
                value, e = _read_token(s, v)
                if value or (e < n and s[e] == ","):
                    params[tok.lower()] = value
                    i = e
                    continue
                # "abc==" (token68): consume '=' padding
                e = k
                while e < n and s[e] == "=":
                    e += 1
                params["token68"] = tok + s[k:e]
                i = e
                continue
            # a new challenge starts
            if scheme is not None:
                out.append(Challenge(scheme, params))
            scheme, params = tok.lower(), {}
            i = j
        if scheme is not None:
            out.append(Challenge(scheme, params))
    return out


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, or (``username == ""``) an identity (refresh) token."""

    username: str
    secret: str = field(repr=False)

    @property
    def is_identity_token(self) -> bool:
        return not self.username

    def basic(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def normalize_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``; Docker Hub aliases -> ``docker.io``."""
    k = key.strip()
    if "://" in k:
        k = urlsplit(k).netloc or k.split("://", 1)[1]
    k = k.split("/", 1)[0].lower()
    return "docker.io" if k in DOCKER_HUB_ALIASES else k


def server_url(host: str) -> str:
    """What ``docker login`` stores a host under (Docker Hub's legacy URL, else the host)."""
    return DOCKER_HUB_KEY if normalize_host(host) == "docker.io" else host


def default_auth_files(
    authfile: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> list[Path]:
    """The files searched, in order (missing ones are skipped, except an explicit authfile)."""
    env = os.environ if env is None else env
    out: list[Path] = []
    if authfile:
        out.append(Path(authfile))
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        out.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    home = env.get("HOME") or str(Path.home())
    out.append(Path(home) / ".docker" / "config.json")
    return out


def _decode_auth_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    tok = entry.get("identitytoken")
    if isinstance(tok, str) and tok:
        return Credentials("", tok)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            raw = base64.b64decode(auth + "=" * (-len(auth) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise UnauthorizedError(
                f"{where}: 'auth' is not base64 of user:password",
                hint=f"run docker login again or fix {where}",
            ) from None
        user, sep, pw = raw.partition(":")
        if not sep:
            raise UnauthorizedError(
                f"{where}: 'auth' does not decode to user:password",
                hint=f"run docker login again or fix {where}",
            )
        return Credentials(user, pw)
    name, password = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(password, str):
        return Credentials(name, password)
    return None


def run_helper(
    name: str, host: str, *, timeout: float = HELPER_TIMEOUT, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """``docker-credential-<name> get`` for ``host``; None when it has no credentials."""
    prog = f"docker-credential-{name}"
    url = server_url(host)
    try:
        proc = subprocess.run(
            [prog, "get"],
            input=url.encode(),
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError:
        raise UnauthorizedError(
            f"credential helper {prog} (configured for {host}) is not installed",
            hint=f"install {prog}, or remove it from credHelpers/credsStore in the Docker config",
        ) from None
    except subprocess.TimeoutExpired:
        raise UnauthorizedError(
            f"credential helper {prog} did not answer for {host} within {timeout:g}s",
            hint=f"check that {prog} works: echo {url} | {prog} get",
        ) from None
    except OSError as e:
        raise UnauthorizedError(
            f"cannot run credential helper {prog}: {e}",
            hint=f"check that {prog} works: echo {url} | {prog} get",
        ) from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower() or "credentials not found" in proc.stderr.decode(
            "utf-8", "replace"
        ).lower():
            return None
        msg = (out or proc.stderr.decode("utf-8", "replace").strip())[:300]
        raise UnauthorizedError(
            f"credential helper {prog} failed for {host}: {msg or f'exit status {proc.returncode}'}",
            hint=f"check that {prog} works: echo {url} | {prog} get",
        )
    try:
        obj = json.loads(out)
    except ValueError:
        raise UnauthorizedError(
            f"credential helper {prog} answered something that is not JSON for {host}",
            hint=f"check that {prog} works: echo {url} | {prog} get",
        ) from None
    if not isinstance(obj, dict):
        return None
    user, secret = obj.get("Username", ""), obj.get("Secret", "")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":
        return Credentials("", secret)
    return Credentials(user, secret)


class CredentialStore:
    """Credentials per registry host from Docker config files and helpers. Thread-safe;
    files are read once, helper answers cached."""

    def __init__(
        self,
        authfile: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        helper_timeout: float = HELPER_TIMEOUT,
        static: Mapping[str, Credentials] | None = None,
    ) -> None:
        self.authfile = Path(authfile) if authfile else None
        self.env = dict(os.environ if env is None else env)
        self.helper_timeout = helper_timeout
        self._static = {normalize_host(k): v for k, v in (static or {}).items()}
        self._files: list[tuple[Path, dict[str, Any]]] | None = None
        self._cache: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def _load(self) -> list[tuple[Path, dict[str, Any]]]:
        if self._files is not None:
            return self._files
        files: list[tuple[Path, dict[str, Any]]] = []
        for p in default_auth_files(self.authfile, self.env):
            try:
                text = p.read_text()
            except FileNotFoundError:
                if self.authfile is not None and p == self.authfile:
                    raise InvalidInputError(f"auth file {p} does not exist") from None
                continue
            except OSError as e:
                raise UnauthorizedError(
                    f"cannot read auth file {p}: {e}", hint=f"check the permissions of {p}"
                ) from None
            try:
                obj = json.loads(text) if text.strip() else {}
            except ValueError as e:
                raise UnauthorizedError(
                    f"auth file {p} is not valid JSON: {e}", hint=f"fix or remove {p}"
                ) from None
            if isinstance(obj, dict):
                files.append((p, obj))
        self._files = files
        return files

    def get(self, host: str) -> Credentials | None:
        """Credentials for ``host`` (``host[:port]``), or None (anonymous)."""
        key = normalize_host(host)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        creds = self._lookup(key)
        with self._lock:
            self._cache[key] = creds
        return creds

    def _lookup(self, key: str) -> Credentials | None:
        if key in self._static:
            return self._static[key]
        for path, doc in self._load():
            helpers = doc.get("credHelpers")
            if isinstance(helpers, dict):
                for k, name in helpers.items():
                    if isinstance(name, str) and name and normalize_host(k) == key:
                        return run_helper(name, key, timeout=self.helper_timeout, env=self.env)
            auths = doc.get("auths")
            if isinstance(auths, dict):
                for k, entry in auths.items():
                    if normalize_host(k) == key:
                        creds = _decode_auth_entry(entry, f"{path}: auths[{k!r}]")
                        if creds is not None:
                            return creds
            store = doc.get("credsStore")
            if isinstance(store, str) and store:
                creds = run_helper(store, key, timeout=self.helper_timeout, env=self.env)
                if creds is not None:
                    return creds
        return None


# --------------------------------------------------------------------------- tokens


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class _HostAuth:
    scheme: str  # "basic" or "bearer"
    realm: str = ""
    service: str = ""


def scope_for(repository: str, actions: str) -> str:
    """``repository:<repo>:<actions>`` (actions ``pull`` or ``pull,push``)."""
    return f"repository:{repository}:{actions}"


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """Scopes with the actions on one resource merged, in first-seen order:
    ``repository:a:pull,push`` + ``repository:a:pull`` -> ``repository:a:pull,push``."""
    order: list[str] = []
    actions: dict[str, list[str]] = {}
    for scope in scopes:
        scope = scope.strip()
        if not scope:
            continue
        resource, sep, acts = scope.rpartition(":")
        if not sep or ":" not in resource:
            resource, acts = scope, ""
        if resource not in actions:
            order.append(resource)
            actions[resource] = []
        for a in acts.split(","):
            if a and a not in actions[resource]:
                actions[resource].append(a)
    return [f"{r}:{','.join(actions[r])}" if actions[r] else r for r in order]


class Authorizer:
    """Authorization headers per (host, scope); learns each host's scheme from its 401s.
    Thread-safe; concurrent fetches of one token are coalesced."""

    def __init__(
        self,
        transport: Transport,
        credentials: CredentialStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.credentials = credentials
        self.clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostAuth] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._flight = SingleFlight()

    def authorization(self, host: str, scope: str, tls: TLSConfig | None = None) -> str | None:
        """The ``Authorization`` value to send to ``host`` for ``scope``, if one is known."""
        with self._lock:
            ha = self._hosts.get(host)
            if ha is None:
                return None
            if ha.scheme == "bearer":
                tok = self._tokens.get((host, scope))
                if tok is not None and tok.expires_at > self.clock():
                    return "Bearer " + tok.value
        if ha.scheme == "basic":
            creds = self.credentials.get(host)
            return creds.basic() if creds is not None and creds.username else None
        return "Bearer " + self._fetch_token(host, ha, [scope], tls)

    def challenge(
        self,
        host: str,
        scope: str,
        header_values: Iterable[str],
        tls: TLSConfig | None = None,
        *,
        sent: str | None = None,
    ) -> bool:
        """Handle a 401 from ``host``; True if a retry with new credentials makes sense."""
        challenges = parse_www_authenticate(list(header_values))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None and bearer.get("realm"):
            ha = _HostAuth("bearer", bearer.get("realm"), bearer.get("service"))
            with self._lock:
                self._hosts[host] = ha
                tok = self._tokens.get((host, scope))
                if tok is not None and sent == "Bearer " + tok.value:
                    del self._tokens[(host, scope)]
            scopes = merge_scopes([scope, *bearer.get("scope").split(" ")])
            self._fetch_token(host, ha, scopes, tls, key_scope=scope)
            return True
        if basic is not None:
            with self._lock:
                self._hosts[host] = _HostAuth("basic", basic.get("realm"))
            creds = self.credentials.get(host)
            if creds is None or not creds.username:
                return False
            return sent != creds.basic()
        return False

    def _fetch_token(
        self,
        host: str,
        ha: _HostAuth,
        scopes: list[str],
        tls: TLSConfig | None,
        *,
        key_scope: str | None = None,
    ) -> str:
        cache_key = (host, key_scope or scopes[0])

        def fetch() -> str:
            with self._lock:
                tok = self._tokens.get(cache_key)
                if tok is not None and tok.expires_at > self.clock():
                    return tok.value
            value, ttl = self._request_token(host, ha, scopes, tls)
            with self._lock:
                self._tokens[cache_key] = _Token(
                    value, self.clock() + max(ttl - min(TOKEN_MARGIN, ttl / 10), 1.0)
                )
            return value

        return self._flight.do(f"{cache_key[0]}\n{cache_key[1]}", fetch)

    def _request_token(
        self, host: str, ha: _HostAuth, scopes: list[str], tls: TLSConfig | None
    ) -> tuple[str, float]:
        creds = self.credentials.get(host)
        realm = ha.realm
        if not realm.startswith(("http://", "https://")):
            raise UnauthorizedError(f"{host}: bearer challenge has an invalid realm {realm!r}")
        # The realm is usually another host: verify it normally, but keep a private CA.
        realm_tls = TLSConfig(ca_files=tls.ca_files) if tls is not None else None
        if urlsplit(realm).netloc == host and tls is not None:
            realm_tls = tls
        headers = {"Accept": "application/json"}
        if creds is not None and creds.is_identity_token:
            form = [("grant_type", "refresh_token"), ("refresh_token", creds.secret)]
            form += [("client_id", CLIENT_ID)]
            if ha.service:
                form.append(("service", ha.service))
            form += [("scope", s) for s in scopes]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self.transport.request(
                "POST", realm, headers=headers, body=urlencode(form).encode(), tls=realm_tls
            )
        else:
            query = [("service", ha.service)] if ha.service else []
            query += [("scope", s) for s in scopes]
            url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
            if creds is not None:
                headers["Authorization"] = creds.basic()
            resp = self.transport.request("GET", url, headers=headers, tls=realm_tls)
        with resp:
            if resp.status in (401, 403):
                who = "anonymous access" if creds is None else "the credentials"
                raise UnauthorizedError(
                    f"{host}: token server {_short(realm)} refused {who} "
                    f"for {' '.join(scopes)} (HTTP {resp.status})"
                )
            if resp.status != 200:
                raise UnavailableError(
                    f"{host}: token server {_short(realm)} answered HTTP {resp.status}: "
                    f"{resp.error_text()}"
                )
            body = resp.read_limited(MAX_TOKEN_RESPONSE)
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise UnauthorizedError(f"{host}: token server {_short(realm)} sent no JSON object")
        token = obj.get("token") or obj.get("access_token")
        if not isinstance(token, str) or not token:
            raise UnauthorizedError(f"{host}: token server {_short(realm)} sent no token")
        ttl = obj.get("expires_in")
        ttl_f = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else DEFAULT_TOKEN_TTL
        return token, ttl_f


def _short(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"
