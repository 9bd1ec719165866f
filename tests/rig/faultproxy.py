"""A fault-injecting HTTP proxy for registry tests.

Sits in front of a real registry (``upstream`` = ``host:port``), forwards requests with
keep-alive, records every request, and, per :class:`Rule`, misbehaves a given number of
times: answer a status (500 / 503 / 429 with ``Retry-After``...), cut a body after N
bytes, ignore ``Range``, send a wrong ``Docker-Content-Digest``, append extra bytes,
redirect elsewhere. It can also demand a bearer token (``require_token``), answering 401
with a ``WWW-Authenticate: Bearer`` challenge whose realm is its own ``/token`` endpoint,
which hands the token out (to anyone, or to one basic user).

The registry builds absolute URLs (upload ``Location``) from the ``Host`` header, which
is forwarded unchanged, so they point back at the proxy.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
BLOB_GET = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")


@dataclass
class Rule:
    """Misbehave ``times`` times (-1: always) on requests matching ``method`` and ``path``
    (a regex searched in the path without the query)."""

    # status | cut | ignore_range | wrong_digest | extra_bytes | redirect | drop_digest |
    # relative_location | pause | gather | content_range | flip_byte
    action: str
    method: str | None = None
    path: str = ""
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    cut_after: int = 0
    extra: bytes = b"EXTRA"
    extra_declared: bool = True  # Content-Length counts the extra bytes (else: no length)
    digest: str = "sha256:" + "0" * 64
    redirect_to: str = ""  # "http://host:port": the same path there
    content_type: str | None = None  # override Content-Type
    # content_range: the Content-Range of a 206 becomes this (None: the header is dropped)
    content_range: str | None = None
    flip_at: int = 0  # flip_byte: the body byte at this offset is inverted (same length)
    hits: int = 0
    # pause: after ``cut_after`` body bytes (flushed), set ``reached`` and wait for ``release``
    # (at most ``hold_timeout`` seconds, so a failing test cannot hang the proxy forever).
    reached: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    release: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    hold_timeout: float = 120.0
    # gather: hold each matching request until ``gather`` of them are in the proxy at once
    # (then ``reached`` is set and all go on), or ``hold_timeout`` passes: a client that
    # sends them one after another never sets ``reached``.
    gather: int = 0
    arrived: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False,
                                       compare=False)

    def wait_for_others(self) -> None:
        with self._cond:
            self.arrived += 1
            if self.arrived >= self.gather:
                self.reached.set()
            self._cond.notify_all()  # reached, or one more for wait_arrived
            self._cond.wait_for(self.reached.is_set, self.hold_timeout)

    def open_gate(self) -> None:
        """Let every request this gather rule holds go on (the end of a test)."""
        with self._cond:
            self.reached.set()
            self._cond.notify_all()

    def wait_arrived(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` requests are held by this gather rule (or arrived)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.arrived >= n, timeout)

    def matches(self, method: str, path: str) -> bool:
        if self.times == 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return not self.path or re.search(self.path, path) is not None


@dataclass
class Recorded:
    method: str
    path: str  # with the query
    headers: dict[str, str]


@dataclass
class FaultProxy:
    upstream: str  # "127.0.0.1:5000"
    bind: str = "127.0.0.1"
    rules: list[Rule] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    require_token: str | None = None  # demand "Authorization: Bearer <this>"
    token_user: tuple[str, str] | None = None  # /token demands these basic credentials
    token_key: str = "token"  # or "access_token"
    token_requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer((self.bind, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"{self.bind}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()

    def take_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for r in self.rules:
                if r.matches(method, path):
                    if r.times > 0:
                        r.times -= 1
                    r.hits += 1
                    return r
        return None

    def record(self, rec: Recorded, token: bool = False) -> None:
        with self._lock:
            (self.token_requests if token else self.requests).append(rec)

    def seen(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and re.search(pattern, r.path)
            ]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # silence
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ------------------------------------------------------------------ helpers

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _token_endpoint(self, path: str) -> None:
        o = self.owner
        body = self._read_body()
        o.record(Recorded(self.command, self.path, dict(self.headers.items())), token=True)
        if o.token_user is not None:
            want = "Basic " + base64.b64encode(":".join(o.token_user).encode()).decode()
            if self.headers.get("Authorization") != want:
                self._reply(401, b'{"details":"bad credentials"}')
                return
        del path, body
        payload = {o.token_key: o.require_token or "", "expires_in": 300}
        self._reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    # ------------------------------------------------------------------ main

    def _handle(self) -> None:
        o = self.owner
        path = urlsplit(self.path).path
        if path == "/token":
            self._token_endpoint(path)
            return
        o.record(Recorded(self.command, self.path, dict(self.headers.items())))
        if o.require_token is not None and path != "/v2/" and (
            self.headers.get("Authorization") != f"Bearer {o.require_token}"
        ):
            self._read_body()
            scope = ""
            m = re.match(r"^/v2/(.+)/(manifests|blobs|tags)/", path)
            if m:
                scope = f',scope="repository:{m.group(1)}:pull"'
            self._reply(
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {
                    "Content-Type": "application/json",
                    "WWW-Authenticate": f'Bearer realm="http://{self.headers.get("Host")}/token",'
                    f'service="faultproxy"{scope}',
                },
            )
            return
        rule = o.take_rule(self.command, path)
        if rule is not None and rule.action == "status":
            self._read_body()
            headers = {"Content-Type": "application/json"}
            if rule.retry_after is not None:
                headers["Retry-After"] = rule.retry_after
            self._reply(rule.status, b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}', headers)
            return
        if rule is not None and rule.action == "gather":
            rule.wait_for_others()
        if rule is not None and rule.action == "redirect":
            self._read_body()
            self._reply(307, b"", {"Location": rule.redirect_to + self.path})
            return
        self._forward(rule)

    def _forward(self, rule: Rule | None) -> None:
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if rule is not None and rule.action == "ignore_range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        conn = http.client.HTTPConnection(self.owner.upstream, timeout=60)
        try:
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                up = conn.getresponse()
            except OSError as e:  # upstream down: a gateway error, as a real proxy says
                self._reply(502, f"upstream: {e}".encode())
                return
            out_headers = [(k, v) for k, v in up.getheaders() if k.lower() not in HOP_BY_HOP]
            if self.command == "HEAD":
                self._send_head(up.status, out_headers, rule)
                self.wfile.flush()
                return
            self._send_body(up, out_headers, rule)
        finally:
            conn.close()

    def _patched(self, headers: list[tuple[str, str]], rule: Rule | None) -> list[tuple[str, str]]:
        if rule is None:
            return headers
        if rule.action == "wrong_digest":
            headers = [(k, rule.digest if k.lower() == "docker-content-digest" else v) for k, v in headers]
        if rule.action == "relative_location":
            headers = [
                (k, re.sub(r"^https?://[^/]+", "", v) if k.lower() == "location" else v)
                for k, v in headers
            ]
        if rule.action == "drop_digest":
            headers = [(k, v) for k, v in headers if k.lower() != "docker-content-digest"]
        if rule.action == "content_range":
            headers = [(k, v) for k, v in headers if k.lower() != "content-range"]
            if rule.content_range is not None:
                headers.append(("Content-Range", rule.content_range))
        if rule.content_type is not None:
            headers = [(k, rule.content_type if k.lower() == "content-type" else v) for k, v in headers]
        return headers

    def _send_head(self, status: int, headers: list[tuple[str, str]], rule: Rule | None) -> None:
        self.send_response(status)
        for k, v in self._patched(headers, rule):
            self.send_header(k, v)
        self.end_headers()

    def _send_body(
        self, up: http.client.HTTPResponse, headers: list[tuple[str, str]], rule: Rule | None
    ) -> None:
        headers = self._patched(headers, rule)
        length = up.getheader("Content-Length")
        if length is None:
            data = up.read()
            headers = [*headers, ("Content-Length", str(len(data)))]
            source: Callable[[int], bytes] = _reader(data)
            total = len(data)
        else:
            source = up.read
            total = int(length)
        extra = b""
        if rule is not None and rule.action == "extra_bytes":
            extra = rule.extra
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if rule.extra_declared:
                headers.append(("Content-Length", str(total + len(extra))))
            else:
                self.close_connection = True
                headers.append(("Connection", "close"))
        self.send_response(up.status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if rule is not None and rule.action == "flip_byte":
            data = source(total)
            flipped = bytearray(data)
            flipped[rule.flip_at] ^= 0xFF
            source = _reader(bytes(flipped))
        cut = rule.cut_after if rule is not None and rule.action == "cut" else -1
        pause = rule.cut_after if rule is not None and rule.action == "pause" else -1
        sent = 0
        while True:
            chunk = source(64 * 1024)
            if not chunk:
                break
            if rule is not None and 0 <= pause <= sent + len(chunk):
                self.wfile.write(chunk[: pause - sent])
                self.wfile.flush()
                rule.reached.set()
                rule.release.wait(rule.hold_timeout)
                chunk, sent, pause = chunk[pause - sent :], pause, -1
            if cut >= 0 and sent + len(chunk) >= cut:
                self.wfile.write(chunk[: cut - sent])
                self.wfile.flush()
                self._abort()
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        if extra:
            self.wfile.write(extra)
        self.wfile.flush()
        if cut >= 0:  # the body was shorter than the cut point: cut at its end
            self._abort()

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    return read


def query(path: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path).query)


@contextlib.contextmanager
def running_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A FaultProxy for a test: on exit, every held body is released (no handler thread
    is left waiting) and the proxy stopped."""
    p = FaultProxy(upstream)
    try:
        yield p
    finally:
        for rule in p.rules:
            rule.release.set()
        p.stop()
