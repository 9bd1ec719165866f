"""The HTTP transport: backoff, Retry-After, retries, redirects, per-host limits."""

from __future__ import annotations

import email.utils
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cargohold.errors import Interrupted, UnavailableError
from cargohold.registry.transport import (
    TLSConfig,
    TLSHandshakeError,
    Transport,
    backoff_delay,
    parse_retry_after,
)
from tests.rig.faultproxy import FaultProxy, Rule
from tests.rig.services import Registry, free_port


class Sleeps(list[float]):
    def __call__(self, s: float) -> None:
        self.append(s)


def make_transport(sleeps: Sleeps | None = None, **kw: object) -> Transport:
    return Transport(sleep=sleeps if sleeps is not None else Sleeps(), backoff=0.001, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pure


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_backoff_full_jitter_bounds() -> None:
    assert backoff_delay(1, base=0.5, cap=30, rand=lambda: 1.0) == 0.5
    assert backoff_delay(2, base=0.5, cap=30, rand=lambda: 1.0) == 1.0
    assert backoff_delay(4, base=0.5, cap=30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(20, base=0.5, cap=30, rand=lambda: 1.0) == 30.0
    assert backoff_delay(3, base=0.5, cap=30, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, base=0.5, cap=30, rand=lambda: 0.5) == 1.0


def test_backoff_retry_after_wins_and_is_capped() -> None:
    assert backoff_delay(1, base=0.5, cap=30, retry_after=12, retry_after_cap=60) == 12
    assert backoff_delay(1, base=0.5, cap=30, retry_after=3600, retry_after_cap=60) == 60
    assert backoff_delay(1, base=0.5, cap=30, retry_after=-5) == 0


# --------------------------------------------------------------------------- against a proxy


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.stop()


def test_retries_5xx_then_succeeds(proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    t = make_transport(sleeps)
    proxy.add(Rule("status", path="^/v2/$", status=500, times=1))
    proxy.add(Rule("status", path="^/v2/$", status=502, times=1))
    proxy.add(Rule("status", path="^/v2/$", status=504, times=1))
    with t.request("GET", f"{proxy.url}/v2/") as r:
        assert r.status == 200
        r.read_limited(100)
    assert len(proxy.seen("GET", "^/v2/$")) == 4
    assert len(sleeps) == 3


def test_retry_after_is_honoured(proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    t = make_transport(sleeps, retry_after_cap=20.0)
    proxy.add(Rule("status", path="^/v2/$", status=429, retry_after="7", times=1))
    proxy.add(Rule("status", path="^/v2/$", status=503, retry_after="3600", times=1))
    with t.request("GET", f"{proxy.url}/v2/") as r:
        assert r.status == 200
    assert sleeps == [7.0, 20.0]


def test_gives_up_after_max_attempts(proxy: FaultProxy) -> None:
    sleeps = Sleeps()
    t = make_transport(sleeps, max_attempts=3)
    proxy.add(Rule("status", path="^/v2/$", status=503, times=-1))
    with pytest.raises(UnavailableError) as ei:
        t.request("GET", f"{proxy.url}/v2/")
    assert "503" in str(ei.value)
    assert len(proxy.seen("GET", "^/v2/$")) == 3 and len(sleeps) == 2


def test_4xx_is_returned_not_retried(proxy: FaultProxy) -> None:
    t = make_transport()
    with t.request("GET", f"{proxy.url}/v2/nope/manifests/latest") as r:
        assert r.status == 404
    assert len(proxy.seen("GET", "nope")) == 1


def test_connection_refused_is_retried_then_unavailable() -> None:
    sleeps = Sleeps()
    t = make_transport(sleeps, max_attempts=2)
    with pytest.raises(UnavailableError) as ei:
        t.request("GET", f"http://127.0.0.1:{free_port()}/v2/")
    assert "after 2 attempts" in str(ei.value)
    assert len(sleeps) == 1


def test_redirect_to_other_host_drops_authorization(registry: Registry) -> None:
    target = FaultProxy(registry.host)
    front = FaultProxy(registry.host)
    try:
        # "localhost" and "127.0.0.1" are different hosts as far as credentials go.
        front.add(Rule("redirect", path="^/v2/$", redirect_to=f"http://localhost:{target.port}"))
        t = make_transport()
        with t.request(
            "GET", f"{front.url}/v2/", headers={"Authorization": "Bearer secret", "X-Keep": "1"}
        ) as r:
            assert r.status == 200
            assert r.url.startswith(f"http://localhost:{target.port}/")
        (got,) = target.seen("GET", "^/v2/$")
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert "authorization" not in headers and headers["x-keep"] == "1"
        (sent,) = front.seen("GET", "^/v2/$")
        assert sent.headers.get("Authorization") == "Bearer secret"
        # a redirect to the same host:port keeps it
        front.clear()
        front.add(Rule("redirect", path="^/v2/$", redirect_to=front.url))
        with t.request("GET", f"{front.url}/v2/", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 200
        first, second = front.seen("GET", "^/v2/$")
        assert first.headers.get("Authorization") == second.headers.get("Authorization") == "Bearer x"
    finally:
        front.stop()
        target.stop()


class _Slow(BaseHTTPRequestHandler):
    """Holds every request until ``gate`` opens; counts those in progress (``cond``)."""

    protocol_version = "HTTP/1.1"
    active = 0
    peak = 0
    cond = threading.Condition()
    gate = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        cls = type(self)
        with cls.cond:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.cond.notify_all()
        cls.gate.wait(120)  # (bounded only so that a failing test cannot hang the run)
        with cls.cond:
            cls.active -= 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class _CountingSlot(threading.BoundedSemaphore):
    """The transport's per-host semaphore, counting the requests waiting for it."""

    def __init__(self, value: int, cond: threading.Condition) -> None:
        super().__init__(value)
        self.cond = cond
        self.waiting = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
        try:
            return super().acquire(blocking, timeout)
        finally:
            with self.cond:
                self.waiting -= 1

    __enter__ = acquire


def test_per_host_limit() -> None:
    """Six requests, at most two at a time: the gate opens only once two are in the server
    and the four others wait for the host's slot (so a broken limit shows as a peak > 2)."""
    _Slow.gate.clear()
    _Slow.active = _Slow.peak = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        t = make_transport(max_per_host=2)
        netloc = f"127.0.0.1:{srv.server_address[1]}"
        slot = _CountingSlot(2, _Slow.cond)
        t._slots[netloc] = slot
        url = f"http://{netloc}/x"
        results: list[int] = []

        def one() -> None:
            with t.request("GET", url) as r:
                results.append(r.status)
                r.read_limited(10)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for th in threads:
            th.start()
        with _Slow.cond:
            piled = _Slow.cond.wait_for(lambda: _Slow.active + slot.waiting == 6, timeout=60)
            assert piled, (_Slow.active, slot.waiting)
            assert (_Slow.active, _Slow.peak, slot.waiting) == (2, 2, 4)
        _Slow.gate.set()
        for th in threads:
            th.join(60)
            assert not th.is_alive()
        assert results == [200] * 6
        assert _Slow.peak == 2
    finally:
        _Slow.gate.set()
        srv.shutdown()
        srv.server_close()


def test_tls_to_plain_http_server_is_a_handshake_error(registry: Registry) -> None:
    t = make_transport()
    with pytest.raises(TLSHandshakeError):
        t.request("GET", f"https://{registry.host}/v2/", tls=TLSConfig(skip_verify=True))


def test_body_factory_is_reopened_per_attempt(proxy: FaultProxy) -> None:
    import io

    opened: list[int] = []

    def body() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(b"")

    proxy.add(Rule("status", path="^/v2/$", method="POST", status=503, times=1))
    t = make_transport()
    with t.request("POST", f"{proxy.url}/v2/", body=body, headers={"Content-Length": "0"}) as r:
        assert r.status in (200, 404, 405)
    assert len(opened) == 2


# --------------------------------------------------------------------------- proxies


def test_no_proxy_rules() -> None:
    from cargohold.registry.transport import no_proxy_matches

    assert no_proxy_matches("a.example.com", "443", "example.com")
    assert no_proxy_matches("example.com", "443", "example.com")
    assert no_proxy_matches("a.example.com", "443", ".example.com")
    assert not no_proxy_matches("example.com", "443", ".example.com")
    assert no_proxy_matches("a.example.com", "443", "*.example.com")
    assert not no_proxy_matches("badexample.com", "443", "example.com")
    assert no_proxy_matches("reg", "5000", "other, reg:5000")
    assert not no_proxy_matches("reg", "5001", "reg:5000")
    assert no_proxy_matches("10.1.2.3", "80", "10.0.0.0/8")
    assert not no_proxy_matches("11.1.2.3", "80", "10.0.0.0/8")
    assert no_proxy_matches("::1", "80", "[::1]")
    assert no_proxy_matches("anything", "1", "*")
    assert not no_proxy_matches("anything", "1", "")


def test_proxy_selection() -> None:
    t = Transport(proxies={"http": "proxy:3128", "https": "http://p2:8080", "no": "internal.example"})
    assert t.proxy_for("http://reg.example/v2/") == "http://proxy:3128"
    assert t.proxy_for("https://reg.example/v2/") == "http://p2:8080"
    assert t.proxy_for("https://x.internal.example/v2/") is None
    assert t.proxy_for("http://localhost:5000/v2/") is None  # loopback never goes through
    assert t.proxy_for("http://127.0.0.1:5000/v2/") is None
    assert Transport(proxies={}).proxy_for("https://reg.example/") is None


def test_http_proxy_from_environment(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a forwarding proxy (the fault proxy forwards whatever it is asked for to the
    registry, so a made-up host name works)."""
    from cargohold.registry.push import push_image
    from tests.test_registry_client import Sink, hand_image, make_client, ref_for

    proxy = FaultProxy(registry.host)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "elsewhere.example")
        for k in ("http_proxy", "no_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(k, raising=False)
        img = hand_image(b"proxied")
        ref = ref_for("registry.test:5000")
        c = make_client(plain_http=True)
        push_image(c, ref, img)
        sink = Sink()
        c.download_blob(ref, img.layer, sink)
        assert bytes(sink.buf) == img.blobs[img.layer.digest]
        seen = proxy.seen(None, "/v2/")
        assert seen and all(r.path.startswith("http://registry.test:5000/v2/") for r in seen)
        import base64

        want = "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert all({k.lower(): v for k, v in r.headers.items()}["proxy-authorization"] == want for r in seen)
    finally:
        proxy.stop()


def test_abort_ends_a_request_waiting_for_its_response(proxy: FaultProxy) -> None:
    """abort() from another thread shuts the connection down: a request whose response
    the server holds raises Interrupted at once (not after the read timeout, set far
    beyond the test's wait here), and later requests do not start."""
    t = Transport(backoff=0.001, timeout=(10.0, 600.0))
    held = proxy.add(Rule("gather", path="^/v2/$", times=-1, gather=2, hold_timeout=600))
    outcome: list[BaseException | int] = []

    def request() -> None:
        try:
            with t.request("GET", f"{proxy.url}/v2/") as r:
                outcome.append(r.status)
        except BaseException as e:  # the test inspects it
            outcome.append(e)

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    try:
        assert held.wait_arrived(1, 60)
        t.abort()
        worker.join(120)
        assert not worker.is_alive()
    finally:
        held.open_gate()
    (got,) = outcome
    assert isinstance(got, Interrupted), got
    with pytest.raises(Interrupted):
        t.request("GET", f"{proxy.url}/v2/")
    assert held.arrived == 1
