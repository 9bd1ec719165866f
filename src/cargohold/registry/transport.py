"""HTTP for the registry client: urllib3 pools, per-host limits, retries, manual redirects.

* Connections are pooled and reused (one urllib3 ``PoolManager``; a pool per host and TLS
  setting).
* At most ``max_per_host`` requests run against one ``host:port`` at a time; a streamed
  response keeps its slot until it is closed.
* Timeouts are bounded (connect, read).
* Requests are retried on 408 / 429 / 500 / 502 / 503 / 504 and on connection errors, at most
  ``max_attempts`` times in all, sleeping an exponential backoff with full jitter
  (``uniform(0, min(cap, base * 2**n))``) or, when the server sent ``Retry-After``
  (seconds or an HTTP date), that long, capped by ``retry_after_cap``.
* Redirects are followed here, not by urllib3, so that ``Authorization`` (and any other
  header named sensitive) is never sent to a host other than the original one.
* ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` (any case) are honoured as Go's
  ``http.ProxyFromEnvironment`` does for containerd: HTTPS through a ``CONNECT`` tunnel,
  credentials in the proxy URL sent as ``Proxy-Authorization``.

Bodies are not read here: :class:`Response` wraps the raw urllib3 response; read it in
large chunks (:data:`CHUNK`), then close it (which returns the connection to the pool if
the body was read to the end, and discards it otherwise).
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.client
import ipaddress
import random
import socket
import ssl
import threading
import time
import urllib.request
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError as _U3ConnectTimeoutError
from urllib3.exceptions import HTTPError as _U3HTTPError
from urllib3.exceptions import InsecureRequestWarning
from urllib3.exceptions import NewConnectionError as _U3NewConnectionError
from urllib3.exceptions import ProtocolError as _U3ProtocolError
from urllib3.exceptions import ReadTimeoutError as _U3ReadTimeoutError
from urllib3.exceptions import SSLError as _U3SSLError

from cargohold.errors import Interrupted, InvalidInputError, UnavailableError

#: Size of one read of a response body: large reads keep the per-chunk overhead low.
CHUNK = 1 << 20
#: Size of one socket write of a request body (uploads).
SEND_BLOCK = 256 * 1024
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES: frozenset[int] = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
#: Headers never forwarded to another host on a redirect.
SENSITIVE_HEADERS: tuple[str, ...] = ("authorization", "cookie", "proxy-authorization")
#: How much of an error body is kept for messages.
ERROR_BODY_LIMIT = 64 * 1024

Body = bytes | Callable[[], "bytes | BinaryIO"] | None


class TLSHandshakeError(UnavailableError):
    """The TLS handshake failed (bad certificate, or the server speaks plain HTTP)."""

    #: True when the server's certificate failed verification (it does speak TLS).
    certificate_error: bool = False

    hint = "pass the registry's CA (--ca-file or hosts.toml 'ca'), or --plain-http / --insecure-skip-verify if you trust the network"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How to verify (or not) a TLS server, and which client certificate to present."""

    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_cert: tuple[str, str] | None = None  # (cert, key or "")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    ref = time.time() if now is None else now
    return max(0.0, when.timestamp() - ref)


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    retry_after_cap: float = 60.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to sleep before retry number ``attempt`` (1 = first retry).

    ``Retry-After`` wins when given (capped by ``retry_after_cap``); otherwise full jitter:
    a uniform draw in ``[0, min(cap, base * 2**(attempt-1))]``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), retry_after_cap)
    ceiling = min(cap, base * float(2 ** max(attempt - 1, 0)))
    return float(rand()) * ceiling


class Response:
    """A response whose body is still on the wire. Close it (or use ``with``)."""

    __slots__ = ("_closed", "_release", "_resp", "headers", "status", "url")

    def __init__(
        self, resp: urllib3.BaseHTTPResponse, url: str, release: Callable[[], None]
    ) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers = resp.headers
        self.url = url
        self._release = release
        self._closed = False

    def header(self, name: str) -> str | None:
        v = self.headers.get(name)
        return v if v is None else str(v)

    @property
    def content_length(self) -> int | None:
        v = self.headers.get("Content-Length")
        if v is None:
            return None
        try:
            n = int(v)
        except ValueError:
            return None
        return n if n >= 0 else None

    def read(self, amt: int = CHUNK) -> bytes:
        """Up to ``amt`` bytes; ``b""`` at the end. Raises urllib3 / OS errors on a cut."""
        return self._resp.read(amt)

    def abort(self) -> None:
        """Shut the socket down from another thread: a read blocked on it returns (with an
        error) at once instead of at the read timeout."""
        with contextlib.suppress(Exception):  # aborting must not fail
            self._resp.shutdown()

    def read_limited(self, limit: int) -> bytes:
        """The whole body if it has at most ``limit`` bytes, else the first ``limit + 1``."""
        parts: list[bytes] = []
        got = 0
        while got <= limit:
            b = self._resp.read(min(CHUNK, limit + 1 - got))
            if not b:
                break
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def error_text(self) -> str:
        """A short description of an error body (for messages); consumes the body."""
        try:
            body = self.read_limited(ERROR_BODY_LIMIT)
        except (_U3HTTPError, OSError):
            return ""
        text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
        return " ".join(text.split())[:300]

    def close(self) -> None:
        """Return the connection to the pool if the body was read, else drop it."""
        if self._closed:
            return
        self._closed = True
        try:
            resp = self._resp
            if resp.closed or _fully_read(resp):
                # Read the (empty) rest: http.client marks its response finished only
                # then (a HEAD's never is otherwise), and a connection whose last response
                # is unfinished fails its next request (ResponseNotReady), costing a retry.
                resp.read()
                resp.release_conn()
            else:
                # Unread bytes would corrupt the next response on this connection.
                resp.close()
                resp.release_conn()
        except Exception:  # closing must not fail
            pass
        finally:
            self._release()

    def drain(self, limit: int = ERROR_BODY_LIMIT) -> None:
        """Read a small body to the end so the connection can be reused, then close."""
        try:
            if self.content_length is None or self.content_length <= limit:
                self.read_limited(limit)
        except (_U3HTTPError, OSError):
            pass
        self.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fully_read(resp: urllib3.BaseHTTPResponse) -> bool:
    fp = getattr(resp, "_fp", None)
    if fp is None:
        return True
    return bool(getattr(fp, "closed", False)) or getattr(fp, "length", None) == 0


def _status_error(status: int, url: str, text: str) -> UnavailableError:
    what = "rate limited (429)" if status == 429 else f"HTTP {status}"
    msg = f"{url}: {what}"
    if text:
        msg += f": {text}"
    return UnavailableError(msg)


class Transport:
    """Thread-safe HTTP client tuned for registries (see the module docstring)."""

    def __init__(
        self,
        *,
        max_per_host: int = 4,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 60.0,
        timeout: tuple[float, float] = (10.0, 60.0),
        user_agent: str = "cargohold",
        ca_file: str | None = None,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] = random.random,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        if max_per_host < 1:
            raise InvalidInputError(f"max_per_host must be at least 1 (got {max_per_host})")
        if max_attempts < 1:
            raise InvalidInputError(f"retries must be at least 1 (got {max_attempts})")
        self.max_per_host = max_per_host
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        self.user_agent = user_agent
        self.ca_file = ca_file
        #: set by abort(): no request starts or retries, backoff sleeps end
        self._aborted = threading.Event()
        self.sleep: Callable[[float], None] = self._pause if sleep is None else sleep
        self.rand = rand
        self._pm = urllib3.PoolManager(
            num_pools=64, maxsize=max_per_host, block=False, retries=False, timeout=self.timeout
        )
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._contexts: dict[TLSConfig, ssl.SSLContext] = {}
        #: scheme -> proxy URL (from the environment unless given), plus "no" for NO_PROXY.
        self.proxies = dict(
            urllib.request.getproxies_environment() if proxies is None else proxies
        )
        self._proxy_managers: dict[str, urllib3.ProxyManager] = {}
        #: every connection opened (weakly): abort() shuts their sockets down
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()
        self._tracked: dict[type, type] = {}

    # ------------------------------------------------------------------ plumbing

    def _slot(self, netloc: str) -> threading.BoundedSemaphore:
        with self._lock:
            s = self._slots.get(netloc)
            if s is None:
                s = self._slots[netloc] = threading.BoundedSemaphore(self.max_per_host)
            return s

    def ssl_context(self, tls: TLSConfig) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(tls)
            if ctx is not None:
                return ctx
        ctx = ssl.create_default_context()
        try:
            for f in ((self.ca_file,) if self.ca_file else ()) + tls.ca_files:
                ctx.load_verify_locations(cafile=f)
            if tls.client_cert is not None:
                cert, key = tls.client_cert
                ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise InvalidInputError(f"cannot load TLS certificate files: {e}") from None
        if tls.skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        with self._lock:
            return self._contexts.setdefault(tls, ctx)

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL to use for ``url``, or None (direct)."""
        parts = urlsplit(url)
        proxy = self.proxies.get(parts.scheme)
        host = (parts.hostname or "").lower()
        if not proxy or not host or _is_loopback(host):
            return None
        port = str(parts.port or (443 if parts.scheme == "https" else 80))
        if no_proxy_matches(host, port, self.proxies.get("no", "")):
            return None
        return proxy if "://" in proxy else "http://" + proxy

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        if proxy is None:
            return self._pm
        with self._lock:
            pm = self._proxy_managers.get(proxy)
            if pm is None:
                p = urlsplit(proxy)
                headers = {}
                if p.username is not None:
                    auth = f"{unquote(p.username)}:{unquote(p.password or '')}"
                    headers = urllib3.make_headers(proxy_basic_auth=auth)
                    proxy = f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "")
                pm = urllib3.ProxyManager(
                    proxy,
                    num_pools=64,
                    maxsize=self.max_per_host,
                    block=False,
                    retries=False,
                    timeout=self.timeout,
                    proxy_headers=headers,
                )
                self._proxy_managers[proxy] = pm
            return pm

    def _track(self, pool: Any) -> Any:
        """``pool`` with its connections registered when they connect (for abort())."""
        base = pool.ConnectionCls
        if getattr(base, "_cargohold_tracked", False):
            return pool
        with self._lock:
            cls = self._tracked.get(base)
            if cls is None:
                conns, lock, aborted = self._conns, self._lock, self._aborted

                def connect(conn: Any) -> None:
                    if aborted.is_set():
                        raise OSError(errno.ECONNABORTED, "request stopped")
                    base.connect(conn)
                    with lock:
                        conns.add(conn)
                    if aborted.is_set():  # abort() ran while this one connected
                        conn.close()
                        raise OSError(errno.ECONNABORTED, "request stopped")

                cls = self._tracked[base] = type(base.__name__, (base,), {
                    "connect": connect, "_cargohold_tracked": True})
        pool.ConnectionCls = cls
        return pool

    def abort(self) -> None:
        """Stop every request now, from any thread (Ctrl-C, SIGTERM): the sockets of open
        connections are shut down, so a request waiting for its response or reading a body
        fails at once instead of at the read timeout, and raises Interrupted, as does any
        request started or retried later."""
        self._aborted.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):  # aborting must not fail
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _pause(self, seconds: float) -> None:
        """A backoff sleep that abort() ends early."""
        self._aborted.wait(seconds)

    def _stopped(self, url: str) -> Interrupted:
        return Interrupted(f"{_origin(url)}: request stopped")

    def _pool(self, url: str, tls: TLSConfig) -> tuple[Any, str, Mapping[str, str]]:
        """The connection pool for ``url``, the request target, and headers to add."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"unsupported URL {url!r}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        proxy = self.proxy_for(url)
        pm = self._manager(proxy)
        extra: Mapping[str, str] = {}
        if proxy is not None and parts.scheme == "http":
            path = url  # absolute-form request line for a forwarding proxy
            extra = getattr(pm, "proxy_headers", {})
        if parts.scheme == "https":
            ctx = self.ssl_context(tls)
            kw: dict[str, Any] = {
                "ssl_context": ctx,
                "cert_reqs": "CERT_NONE" if tls.skip_verify else "CERT_REQUIRED",
                "blocksize": SEND_BLOCK,
            }
            if tls.skip_verify:
                kw["assert_hostname"] = False
            pool = pm.connection_from_host(parts.hostname, parts.port, "https", pool_kwargs=kw)
        else:
            pool = pm.connection_from_host(
                parts.hostname, parts.port, "http", pool_kwargs={"blocksize": SEND_BLOCK}
            )
        return self._track(pool), path, extra

    def _send_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | BinaryIO | None,
        tls: TLSConfig,
    ) -> Response:
        """One HTTP exchange (no retries, no redirects); holds a host slot until closed."""
        netloc = urlsplit(url).netloc
        slot = self._slot(netloc)
        slot.acquire()
        try:
            pool, path, extra = self._pool(url, tls)
            raw = pool.urlopen(
                method,
                path,
                body=body,
                headers={**headers, **extra} if extra else dict(headers),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                release_conn=False,
                timeout=self.timeout,
                chunked=False,
            )
        except BaseException:
            slot.release()
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slot.release()

        return Response(raw, url, release)

    # ------------------------------------------------------------------ the API

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        tls: TLSConfig | None = None,
        max_attempts: int | None = None,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        follow_redirects: bool = True,
        sensitive_headers: Iterable[str] = SENSITIVE_HEADERS,
    ) -> Response:
        """Send a request, retrying and following redirects; the caller reads and closes.

        Any status is returned (4xx included) except retryable ones, which are retried and,
        once attempts run out, raise :class:`UnavailableError`; so do connection errors.
        ``body`` may be bytes, or a callable returning bytes or a fresh file object per
        attempt (a file object is closed after the attempt).
        """
        tls = tls or TLSConfig()
        hdrs = {"User-Agent": self.user_agent}
        if headers:
            hdrs.update(headers)
        attempts = max_attempts or self.max_attempts
        statuses = frozenset(retry_statuses)
        sensitive = {h.lower() for h in sensitive_headers}
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            if self._aborted.is_set():
                raise self._stopped(url)
            try:
                resp = self._follow(method, url, hdrs, body, tls, follow_redirects, sensitive)
            except _U3SSLError as e:
                err = TLSHandshakeError(f"{_origin(url)}: TLS handshake failed: {_tls_reason(e)}")
                err.certificate_error = _caused_by(e, ssl.SSLCertVerificationError)
                raise err from e
            except (_U3HTTPError, OSError) as e:
                if self._aborted.is_set():
                    raise self._stopped(url) from None
                if attempt >= attempts:
                    raise UnavailableError(
                        f"{_reason(e, url)} ({_origin(url)}, after {attempt} "
                        f"attempt{'s' if attempt > 1 else ''})"
                    ) from e
            else:
                if resp.status not in statuses:
                    return resp
                retry_after = parse_retry_after(resp.header("Retry-After"))
                if attempt >= attempts:
                    text = resp.error_text()
                    resp.close()
                    raise _status_error(resp.status, resp.url, text)
                resp.drain()
            self.backoff_sleep(attempt, retry_after)

    def backoff_sleep(self, attempt: int, retry_after: float | None = None) -> None:
        """Sleep the backoff for retry ``attempt`` (used by callers that resume streams)."""
        self.sleep(
            backoff_delay(
                attempt,
                base=self.backoff,
                cap=self.backoff_cap,
                retry_after=retry_after,
                retry_after_cap=self.retry_after_cap,
                rand=self.rand,
            )
        )

    def _follow(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        tls: TLSConfig,
        follow: bool,
        sensitive: set[str],
    ) -> Response:
        origin = urlsplit(url).netloc.lower()
        hdrs = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            payload: bytes | BinaryIO | None
            payload = body() if callable(body) else body
            try:
                resp = self._send_once(method, url, hdrs, payload, tls)
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()
            if not follow or resp.status not in REDIRECT_STATUSES:
                return resp
            location = resp.header("Location")
            if not location:
                return resp
            resp.drain()
            url = urljoin(url, location)
            if urlsplit(url).netloc.lower() != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() not in sensitive}
            if resp.status == 303 and method not in ("GET", "HEAD"):
                method, body = "GET", None
                hdrs = {k: v for k, v in hdrs.items() if k.lower() not in ("content-length", "content-type")}
        raise UnavailableError(f"{_origin(url)}: more than {MAX_REDIRECTS} redirects")

    def clear(self) -> None:
        """Close pooled connections."""
        self._pm.clear()
        with self._lock:
            for pm in self._proxy_managers.values():
                pm.clear()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def no_proxy_matches(host: str, port: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host:port`` (Go's rules: ``*``; ``name`` matches it
    and its subdomains, ``.name`` subdomains only; IP addresses and CIDR ranges; an
    optional ``:port``)."""
    host = host.lower().strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if ip is not None and ip in net:
                return True
            continue
        name, eport = entry, ""
        if entry.startswith("["):
            end = entry.find("]")
            name, rest = entry[1:end], entry[end + 1 :]
            eport = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            name, eport = entry.split(":")
        if eport and eport != port:
            continue
        if name.startswith("*."):
            name = name[1:]
        if name.startswith("."):
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _caused_by(e: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        nxt = getattr(cur, "reason", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return False


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the errors behind it (``reason``, cause, context), outermost first."""
    out = [e]
    cur: BaseException = e
    for _ in range(8):
        nxt = getattr(cur, "reason", None) or cur.__cause__ or cur.__context__
        if not isinstance(nxt, BaseException) or nxt in out:
            break
        out.append(nxt)
        cur = nxt
    return out


#: errno values with a wording of their own (the host is appended).
_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused by",
    errno.ECONNRESET: "connection reset by",
    errno.ECONNABORTED: "connection aborted by",
    errno.EPIPE: "connection closed by",
    errno.ETIMEDOUT: "timed out connecting to",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable for",
}


def in_words(e: BaseException, host: str) -> str:
    """A connection-level error as words naming ``host`` ("connection refused by
    127.0.0.1:5999"), without Python class names or errno numbers."""
    chain = _chain(e)
    for err in reversed(chain):  # the innermost cause says the most
        if isinstance(err, socket.gaierror) or type(err).__name__ == "NameResolutionError":
            return f"cannot resolve the host name of {host}"
        if isinstance(err, OSError) and err.errno in _ERRNO_WORDS:
            return f"{_ERRNO_WORDS[err.errno]} {host}"
    if any(isinstance(err, http.client.RemoteDisconnected) for err in chain):
        return f"{host} closed the connection without answering"
    for err in chain:
        if isinstance(err, _U3ReadTimeoutError):
            return f"{host} did not answer in time"
        if isinstance(err, _U3ConnectTimeoutError | TimeoutError) and not isinstance(
            err, _U3NewConnectionError
        ):
            return f"timed out connecting to {host}"
        if isinstance(err, _U3ProtocolError | http.client.IncompleteRead):
            return f"connection to {host} broken (closed early)"
    inner = chain[-1]
    if isinstance(inner, OSError) and inner.strerror:
        return f"{inner.strerror[:1].lower()}{inner.strerror[1:]} ({host})"
    text = str(inner).strip() or "connection failed"
    return f"{text} ({host})"


def _tls_reason(e: BaseException) -> str:
    """The innermost reason of a TLS failure (OpenSSL's words: which check failed)."""
    inner = _chain(e)[-1]
    return str(inner) or type(inner).__name__


def _reason(e: BaseException, url: str = "") -> str:
    """A short reason for a connection-level error, in words."""
    return in_words(e, urlsplit(url).netloc if url else "the registry")
