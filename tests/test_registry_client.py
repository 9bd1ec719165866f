"""RegistryClient and push_image against a real registry, mirrors and a fault proxy."""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cargohold.errors import (
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.reference import Reference, parse_reference
from cargohold.registry.client import RegistryClient
from cargohold.registry.push import push_image
from cargohold.registry.transport import TLSHandshakeError, Transport
from tests.rig.faultproxy import FaultProxy, Rule
from tests.rig.services import Registry, start_registry
from tests.rig.tokenserver import make_cert

pytestmark = pytest.mark.registry

_n = itertools.count()


# --------------------------------------------------------------------------- helpers


@dataclass
class HandImage:
    """A minimal image made of bytes: one layer, a config, a manifest (PushableImage)."""

    blobs: dict[Digest, bytes]
    root: Descriptor
    layer: Descriptor
    config: Descriptor
    order: list[Descriptor] = field(default_factory=list)

    def blobs_in_push_order(self) -> list[Descriptor]:
        return list(self.order)

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blobs[digest])


def hand_image(layer_bytes: bytes, media: str = "oci") -> HandImage:
    blobs: dict[Digest, bytes] = {}

    def add(media_type: str, data: bytes) -> Descriptor:
        d = Digest.from_bytes(data)
        blobs[d] = data
        return Descriptor(media_type, d, len(data))

    docker = media == "docker"
    layer = add(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP, layer_bytes)
    config = add(
        mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [str(layer.digest)]},
            }
        ).encode(),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }
    root = add(manifest["mediaType"], json.dumps(manifest, indent=1).encode())  # type: ignore[arg-type]
    return HandImage(blobs, root, layer, config, [layer, config, root])


def unique(prefix: str = "reg") -> str:
    return f"{prefix}{os.getpid()}x{next(_n)}"


def ref_for(host: str, repo: str = "", tag: str = "v1") -> Reference:
    return parse_reference(f"{host}/{repo or unique()}:{tag}")


class Sleeps(list[float]):
    def __call__(self, s: float) -> None:
        self.append(s)


def make_client(
    hosts_dir: Path | None = None, *, retries: int = 5, sleeps: Sleeps | None = None, **kw: Any
) -> RegistryClient:
    t = Transport(
        backoff=0.001,
        max_attempts=retries,
        sleep=sleeps if sleeps is not None else Sleeps(),
        timeout=(5.0, 20.0),
        ca_file=kw.pop("ca_file", None),
    )
    return RegistryClient(hosts_dir=hosts_dir, retries=retries, transport=t, **kw)


class Sink:
    """A ``write`` callable that records what it got."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.calls: list[int] = []

    def __call__(self, chunk: Any) -> None:
        self.calls.append(len(chunk))
        self.buf += chunk


def patterned(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def pushed(registry: Registry) -> tuple[Reference, HandImage]:
    """One image (a 3 MiB + layer) in the session registry, pushed monolithically."""
    img = hand_image(patterned(3 * 1024 * 1024 + 12345, seed=1))
    ref = ref_for(registry.host)
    push_image(make_client(), ref, img)
    return ref, img


# --------------------------------------------------------------------------- push / pull


def test_push_resolve_fetch_download(registry: Registry) -> None:
    c = make_client()
    img = hand_image(patterned(2 * 1024 * 1024 + 7, seed=2))
    ref = ref_for(registry.host)
    root = push_image(c, ref, img)
    assert root.digest == img.root.digest and root.size == img.root.size

    desc = c.resolve(ref)
    assert (desc.media_type, desc.digest, desc.size) == (mt.OCI_MANIFEST, img.root.digest, img.root.size)
    assert c.fetch_manifest(ref, desc) == img.blobs[img.root.digest]

    sink = Sink()
    progress: list[int] = []
    c.download_blob(ref, img.layer, sink, on_progress=progress.append)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]
    assert max(sink.calls) <= 1 << 20 and sum(progress) == img.layer.size
    assert c.tags(ref) == ["v1"]

    # pushing again uploads nothing
    assert c.push_blob(ref, img.layer, lambda: img.open(img.layer.digest)) is False


def test_resolve_by_digest_and_docker_types(registry: Registry) -> None:
    c = make_client()
    img = hand_image(b"docker layer", media="docker")
    ref = ref_for(registry.host)
    push_image(c, ref, img)
    by_digest = parse_reference(f"{ref.name}@{img.root.digest}")
    d = c.resolve(by_digest)
    assert d.media_type == mt.DOCKER_MANIFEST and d.digest == img.root.digest
    both = parse_reference(f"{ref.name}:v1@{img.root.digest}")
    assert c.resolve(both).digest == img.root.digest


def test_download_from_offset(registry: Registry, pushed: tuple[Reference, HandImage]) -> None:
    ref, img = pushed
    data = img.blobs[img.layer.digest]
    for offset in (1, 1 << 20, len(data) - 1):
        sink = Sink()
        make_client().download_blob(ref, img.layer, sink, offset=offset)
        assert bytes(sink.buf) == data[offset:]
    sink = Sink()
    make_client().download_blob(ref, img.layer, sink, offset=len(data))
    assert sink.calls == []
    with pytest.raises(InvalidInputError):
        make_client().download_blob(ref, img.layer, sink, offset=len(data) + 1)


def test_chunked_push(registry: Registry, proxy: FaultProxy) -> None:
    c = make_client()
    img = hand_image(patterned(300_000, seed=3))
    ref = ref_for(proxy.host)
    push_image(c, ref, img, chunked=True, chunk_size=64 * 1024)
    patches = proxy.seen("PATCH", "/blobs/uploads/")
    layer_patches = [p for p in patches if p.headers.get("Content-Range", "").startswith("0-65535")]
    assert layer_patches, "the layer went up in chunks"
    ranges = [p.headers["Content-Range"] for p in patches]
    assert "262144-299999" in ranges
    assert proxy.seen("PUT", "digest=sha256")
    sink = Sink()
    make_client().download_blob(ref_for(registry.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


@pytest.mark.parametrize("chunked", [False, True])
def test_push_with_relative_locations(registry: Registry, proxy: FaultProxy, chunked: bool) -> None:
    img = hand_image(patterned(150_000, seed=11))
    ref = ref_for(proxy.host)
    rule = proxy.add(Rule("relative_location", path="/blobs/uploads/", times=-1))
    push_image(make_client(), ref, img, chunked=chunked, chunk_size=60_000)
    # every upload step (POST, PATCHes) answered with a path-only Location
    assert rule.hits == len(proxy.seen(None, "/blobs/uploads/")) >= 4
    sink = Sink()
    make_client().download_blob(ref_for(registry.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


def test_cross_repo_mount(registry: Registry, proxy: FaultProxy) -> None:
    img = hand_image(patterned(100_000, seed=12))
    a = ref_for(registry.host)
    push_image(make_client(), a, img)
    b = ref_for(proxy.host)
    c = make_client()
    assert c.push_blob(b, img.layer, lambda: img.open(img.layer.digest), mount_from=a.repository)
    (post,) = proxy.seen("POST", "/blobs/uploads/")
    assert f"mount={img.layer.digest}".replace(":", "%3A") in post.path and f"from={a.repository}" in post.path
    assert not proxy.seen("PUT") and not proxy.seen("PATCH")
    assert c.blob_exists(b, img.layer)


def test_push_manifest_by_digest_and_tag(registry: Registry) -> None:
    c = make_client()
    img = hand_image(b"tiny")
    ref = ref_for(registry.host, tag="first")
    for d in img.order[:-1]:
        c.push_blob(ref, d, lambda d=d: img.open(d.digest))  # type: ignore[misc]
    body = img.blobs[img.root.digest]
    d1 = c.push_manifest(ref, img.root.media_type, body)
    assert d1.digest == img.root.digest
    c.push_manifest(ref, img.root.media_type, body, tag="second")
    assert sorted(c.tags(ref)) == ["second"]
    assert c.resolve(ref_for(registry.host, ref.repository, "second")).digest == img.root.digest


def test_push_image_into_a_digest_ref(registry: Registry) -> None:
    img = hand_image(b"pinned")
    repo = unique()
    ref = parse_reference(f"{registry.host}/{repo}@{img.root.digest}")
    assert push_image(make_client(), ref, img).digest == img.root.digest
    wrong = parse_reference(f"{registry.host}/{repo}@sha256:{'1' * 64}")
    with pytest.raises(InvalidInputError):
        push_image(make_client(), wrong, img)


def test_tags_pagination() -> None:
    """distribution 2.8 ignores ``n``: a small server of our own pages with ``Link``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    pages = {
        "/v2/r/tags/list?n=1000": (["a", "b"], "</v2/r/tags/list?last=b&n=2>; rel=\"next\""),
        "/v2/r/tags/list?last=b&n=2": (["c"], '<http://{host}/v2/r/tags/list?last=c&n=2>; rel="next"'),
        "/v2/r/tags/list?last=c&n=2": (["d"], None),
    }
    seen: list[str] = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            tags, link = pages[self.path]
            body = json.dumps({"name": "r", "tags": tags}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if link:
                self.send_header("Link", link.replace("{host}", self.headers["Host"]))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        host = f"127.0.0.1:{srv.server_address[1]}"
        assert make_client(plain_http=True).tags(ref_for(host, "r")) == ["a", "b", "c", "d"]
        assert seen == list(pages)
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- not found


def test_not_found_names_the_reference(registry: Registry, pushed: tuple[Reference, HandImage]) -> None:
    ref, _ = pushed
    c = make_client()
    for bad in (
        ref_for(registry.host, "no/such/repo"),
        ref_for(registry.host, ref.repository, "nosuchtag"),
        parse_reference(f"{ref.name}@sha256:{'2' * 64}"),
    ):
        with pytest.raises(NotFoundError) as ei:
            c.resolve(bad)
        assert str(bad) in str(ei.value)
    missing = Descriptor(mt.OCI_LAYER_GZIP, Digest("sha256", "3" * 64), 10)
    with pytest.raises(NotFoundError) as ei:
        c.download_blob(ref, missing, Sink())
    assert str(missing.digest) in str(ei.value) and ref.name in str(ei.value)
    with pytest.raises(NotFoundError):
        c.fetch_manifest(ref, Descriptor(mt.OCI_MANIFEST, Digest("sha256", "4" * 64), 10))


def test_missing_tags_are_asked_once_each(registry: Registry, proxy: FaultProxy) -> None:
    """A 404 is definitive: never retried. It used to cost every later request a retry
    (and a backoff sleep): the HEAD's response stayed unfinished on the pooled connection,
    so the next request on it failed with ResponseNotReady."""
    c = make_client()
    errors: list[NotFoundError] = []  # kept alive, as a batch's failures are
    refs = [ref_for(proxy.host, f"missing/once{next(_n)}") for _ in range(5)]
    for ref in refs:
        with pytest.raises(NotFoundError) as ei:
            c.resolve(ref)
        errors.append(ei.value)
    heads = proxy.seen("HEAD", "/manifests/")
    assert [r.path for r in heads] == [f"/v2/{r.repository}/manifests/v1" for r in refs]
    assert len(proxy.requests) == len(refs)


# --------------------------------------------------------------------------- resolve fallbacks


def test_head_without_digest_falls_back_to_get(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    pref = ref_for(proxy.host, ref.repository)
    proxy.add(Rule("drop_digest", method="HEAD", path="/manifests/"))
    d = make_client().resolve(pref)
    assert d.digest == img.root.digest and d.size == img.root.size
    assert proxy.seen("HEAD", "/manifests/v1") and proxy.seen("GET", "/manifests/v1")


def test_head_405_falls_back_to_get(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    proxy.add(Rule("status", method="HEAD", path="/manifests/", status=405))
    c = make_client()
    pref = ref_for(proxy.host, ref.repository)
    d = c.resolve(pref)
    assert d.digest == img.root.digest and d.media_type == mt.OCI_MANIFEST
    # The body the GET read serves the manifest fetch that follows: one GET, not two.
    assert Digest.from_bytes(c.fetch_manifest(pref, d)) == d.digest
    assert len(proxy.seen("GET", "/manifests/")) == 1
    assert Digest.from_bytes(c.fetch_manifest(pref, d)) == d.digest  # then from the registry
    assert len(proxy.seen("GET", "/manifests/")) == 2


def test_get_fallback_sniffs_media_type(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    proxy.add(Rule("status", method="HEAD", path="/manifests/", status=405))
    proxy.add(Rule("drop_digest", method="GET", path="/manifests/", content_type="application/json"))
    d = make_client().resolve(ref_for(proxy.host, ref.repository))
    assert d.media_type == mt.OCI_MANIFEST and d.digest == img.root.digest


def test_get_fallback_checks_header_digest(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, _ = pushed
    proxy.add(Rule("status", method="HEAD", path="/manifests/", status=405))
    proxy.add(Rule("wrong_digest", method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        make_client().resolve(ref_for(proxy.host, ref.repository))


def test_schema1_is_refused(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, _ = pushed
    proxy.add(Rule("wrong_digest", method="HEAD", path="/manifests/", content_type=mt.DOCKER_SCHEMA1_SIGNED))
    with pytest.raises(UnsupportedError) as ei:
        make_client().resolve(ref_for(proxy.host, ref.repository))
    assert "schema 1" in str(ei.value)


def test_resolve_digest_ref_mismatch(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    pinned = parse_reference(f"{proxy.host}/{ref.repository}@{img.root.digest}")
    proxy.add(Rule("wrong_digest", method="HEAD", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        make_client().resolve(pinned)


# --------------------------------------------------------------------------- fetch_manifest


def test_fetch_manifest_checks(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    pref = ref_for(proxy.host, ref.repository)
    c = make_client()
    proxy.add(Rule("wrong_digest", method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        c.fetch_manifest(pref, img.root)
    proxy.add(Rule("extra_bytes", method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        c.fetch_manifest(pref, img.root)
    proxy.add(Rule("extra_bytes", method="GET", path="/manifests/", extra_declared=False))
    with pytest.raises(DigestMismatchError):
        c.fetch_manifest(pref, img.root)
    lying = Descriptor(img.root.media_type, img.root.digest, img.root.size - 1)
    with pytest.raises(DigestMismatchError):
        c.fetch_manifest(pref, lying)
    huge = Descriptor(img.root.media_type, img.root.digest, 5 * 1024 * 1024)
    with pytest.raises(InvalidInputError):
        c.fetch_manifest(pref, huge)
    # a cut is retried
    proxy.add(Rule("cut", method="GET", path="/manifests/", cut_after=10))
    assert c.fetch_manifest(pref, img.root) == img.blobs[img.root.digest]


@pytest.mark.parametrize("header", ["kept", "dropped"])
def test_manifest_of_the_right_size_and_a_wrong_digest(
    pushed: tuple[Reference, HandImage], proxy: FaultProxy, header: str
) -> None:
    """The registry sends a manifest of the expected length whose bytes differ (one byte
    flipped), with its honest Docker-Content-Digest header or none: the bytes are hashed,
    so it is a DigestMismatchError, not retried and not returned."""
    ref, img = pushed
    pref = ref_for(proxy.host, ref.repository)
    proxy.add(Rule("flip_byte", method="GET", path="/manifests/", flip_at=img.root.size // 2))
    if header == "dropped":
        proxy.add(Rule("drop_digest", method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatchError, match="content has digest"):
        make_client().fetch_manifest(pref, img.root)
    assert len(proxy.seen("GET", "/manifests/")) == 1


# --------------------------------------------------------------------------- download faults


def test_download_resumes_after_cuts(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    data = img.blobs[img.layer.digest]
    proxy.add(Rule("cut", method="GET", path="/blobs/", cut_after=1_000_000, times=2))
    sink = Sink()
    make_client().download_blob(ref_for(proxy.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == data
    gets = proxy.seen("GET", "/blobs/")
    assert len(gets) == 3
    ranges = [g.headers.get("Range") for g in gets]
    assert ranges[0] is None
    # each resume starts exactly where the bytes given to write ended
    assert ranges[1] == "bytes=1000000-" and ranges[2] == "bytes=2000000-"


def test_download_resume_when_range_ignored(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    data = img.blobs[img.layer.digest]
    proxy.add(Rule("cut", method="GET", path="/blobs/", cut_after=1_500_000, times=1))
    proxy.add(Rule("ignore_range", method="GET", path="/blobs/", times=-1))
    sink = Sink()
    make_client().download_blob(ref_for(proxy.host, ref.repository), img.layer, sink, offset=100)
    assert bytes(sink.buf) == data[100:]
    sink = Sink()
    make_client().download_blob(ref_for(proxy.host, ref.repository), img.layer, sink, offset=len(data) - 5)
    assert bytes(sink.buf) == data[-5:]


@pytest.mark.parametrize(("content_range", "error", "match"), [
    (None, DigestMismatchError, "206 without a valid Content-Range"),
    ("bytes */{size}", DigestMismatchError, "206 without a valid Content-Range"),
    ("items 100-{last}/{size}", DigestMismatchError, "206 without a valid Content-Range"),
    ("bytes 100-{last}/{bigger}", DigestMismatchError, "its size is"),
    ("bytes 200-{last}/{size}", UnavailableError, "got from 200"),
    # Says the body starts before what was asked, but it starts where asked: the length
    # does not fit what the range promises.
    ("bytes 0-{last}/{size}", DigestMismatchError, "sends"),
])
def test_resume_with_a_bad_content_range_is_refused(
    pushed: tuple[Reference, HandImage], proxy: FaultProxy,
    content_range: str | None, error: type[Exception], match: str,
) -> None:
    """A 206 answering a resume (Range: bytes=100-) without a Content-Range, with one that
    does not parse, names another size or starts after the offset, or does not fit the
    body: refused before a byte is written (a resumed download must never splice bytes
    from the wrong offset)."""
    ref, img = pushed
    data = img.blobs[img.layer.digest]
    size = len(data)
    value = None if content_range is None else content_range.format(
        size=size, last=size - 1, bigger=size + 1)
    proxy.add(Rule("content_range", method="GET", path="/blobs/", content_range=value))
    sink = Sink()
    with pytest.raises(error, match=match):
        make_client().download_blob(ref_for(proxy.host, ref.repository), img.layer, sink,
                                    offset=100)
    assert bytes(sink.buf) == b""
    gets = proxy.seen("GET", "/blobs/")
    assert [g.headers.get("Range") for g in gets] == ["bytes=100-"]
    # The same resume through an honest registry completes.
    make_client().download_blob(ref_for(proxy.host, ref.repository), img.layer, sink,
                                offset=100)
    assert bytes(sink.buf) == data[100:]


def test_download_retries_5xx_and_429(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    sleeps = Sleeps()
    proxy.add(Rule("status", method="GET", path="/blobs/", status=503, times=2))
    proxy.add(Rule("status", method="GET", path="/blobs/", status=429, retry_after="3", times=1))
    proxy.add(Rule("status", method="GET", path="/blobs/", status=500, times=1))
    sink = Sink()
    make_client(sleeps=sleeps).download_blob(ref_for(proxy.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]
    assert len(sleeps) == 4 and 3.0 in sleeps


def test_download_gives_up(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    pref = ref_for(proxy.host, ref.repository)
    proxy.add(Rule("status", method="GET", path="/blobs/", status=503, times=-1))
    with pytest.raises(UnavailableError):
        make_client(retries=3).download_blob(pref, img.layer, Sink())
    proxy.clear()
    # cut before any byte every time: no progress, so the budget runs out
    proxy.add(Rule("cut", method="GET", path="/blobs/", cut_after=0, times=-1))
    sink = Sink()
    with pytest.raises(UnavailableError) as ei:
        make_client(retries=3).download_blob(pref, img.layer, sink)
    assert "short" in str(ei.value) or "broken" in str(ei.value)
    assert len(proxy.seen("GET", "/blobs/")) == 3 and not sink.buf


def test_download_cut_every_mb_still_completes(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    proxy.add(Rule("cut", method="GET", path="/blobs/", cut_after=700_000, times=-1))
    sink = Sink()
    make_client(retries=2).download_blob(ref_for(proxy.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


def test_download_extra_bytes_is_an_error(pushed: tuple[Reference, HandImage], proxy: FaultProxy) -> None:
    ref, img = pushed
    pref = ref_for(proxy.host, ref.repository)
    size = img.layer.size
    proxy.add(Rule("extra_bytes", method="GET", path="/blobs/"))
    sink = Sink()
    with pytest.raises(DigestMismatchError):
        make_client().download_blob(pref, img.layer, sink)
    assert len(sink.buf) <= size
    proxy.add(Rule("extra_bytes", method="GET", path="/blobs/", extra_declared=False))
    sink = Sink()
    with pytest.raises(DigestMismatchError):
        make_client().download_blob(pref, img.layer, sink)
    assert len(sink.buf) <= size
    assert bytes(sink.buf) == img.blobs[img.layer.digest][: len(sink.buf)]


def test_download_smaller_blob_than_descriptor(pushed: tuple[Reference, HandImage]) -> None:
    ref, img = pushed
    lying = Descriptor(img.layer.media_type, img.layer.digest, img.layer.size + 10)
    with pytest.raises(DigestMismatchError):
        make_client().download_blob(ref, lying, Sink())
    with pytest.raises(DigestMismatchError):
        make_client().download_blob(ref, lying, Sink(), offset=img.layer.size + 5)


def test_download_redirect_keeps_credentials_home(
    pushed: tuple[Reference, HandImage], registry: Registry
) -> None:
    ref, img = pushed
    storage = FaultProxy(registry.host)
    front = FaultProxy(registry.host, require_token="sekrit")
    try:
        front.add(Rule("redirect", method="GET", path="/blobs/", redirect_to=f"http://localhost:{storage.port}"))
        sink = Sink()
        make_client().download_blob(ref_for(front.host, ref.repository), img.layer, sink)
        assert bytes(sink.buf) == img.blobs[img.layer.digest]
        (at_front,) = [r for r in front.seen("GET", "/blobs/") if "Authorization" in r.headers]
        assert at_front.headers["Authorization"] == "Bearer sekrit"
        (at_storage,) = storage.seen("GET", "/blobs/")
        assert "authorization" not in {k.lower() for k in at_storage.headers}
    finally:
        front.stop()
        storage.stop()


def test_push_retries_a_failed_upload(registry: Registry, proxy: FaultProxy) -> None:
    img = hand_image(patterned(200_000, seed=9))
    ref = ref_for(proxy.host)
    proxy.add(Rule("status", method="PATCH", path="/blobs/uploads/", status=503, times=1))
    proxy.add(Rule("cut", method="PUT", path="/blobs/uploads/", cut_after=0, times=1))
    push_image(make_client(), ref, img, chunked=True, chunk_size=50_000)
    assert len(proxy.seen("POST", "/blobs/uploads/")) >= 3  # started over twice
    sink = Sink()
    make_client().download_blob(ref_for(registry.host, ref.repository), img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


def test_push_manifest_digest_header_is_checked(registry: Registry, proxy: FaultProxy) -> None:
    img = hand_image(b"m")
    ref = ref_for(proxy.host)
    proxy.add(Rule("wrong_digest", method="PUT", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        push_image(make_client(), ref, img)


# --------------------------------------------------------------------------- mirrors


def write_mirror_hosts(hosts_dir: Path, origin: str, mirror_url: str, caps: str = '"pull", "resolve"') -> None:
    d = hosts_dir / origin
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(
        f'server = "http://{origin}"\n\n[host."{mirror_url}"]\n  capabilities = [{caps}]\n'
    )


def _blob_in_storage(root: Path, digest: Digest) -> bool:
    return (root / "docker/registry/v2/blobs" / digest.algorithm / digest.hex[:2] / digest.hex / "data").exists()


def test_pull_through_mirror_then_fallback(registry: Registry, tmp_path: Path) -> None:
    img = hand_image(patterned(1_300_000, seed=5))
    ref = ref_for(registry.host)
    push_image(make_client(), ref, img)

    mirror = start_registry(tmp_path / "mirror", proxy_remote=registry.url)
    front = FaultProxy(mirror.host)
    try:
        hosts = tmp_path / "certs.d"
        write_mirror_hosts(hosts, registry.host, front.url)
        c = make_client(hosts)
        eps = c.endpoints(ref, "resolve")
        assert [e.base_url for e in eps] == [front.url, registry.url]

        desc = c.resolve(ref)
        assert desc.digest == img.root.digest
        assert c.fetch_manifest(ref, desc) == img.blobs[img.root.digest]
        sink = Sink()
        c.download_blob(ref, img.layer, sink)
        assert bytes(sink.buf) == img.blobs[img.layer.digest]
        ns = "ns=" + registry.host.replace(":", "%3A")
        assert front.seen("HEAD", f"/{ref.repository}/manifests/v1\\?{ns}$")
        assert front.seen("GET", f"/blobs/{img.layer.digest}\\?{ns}$")
        for _ in range(100):  # the mirror stores what it proxied (in the background)
            if _blob_in_storage(mirror.root, img.layer.digest):
                break
            time.sleep(0.05)
        assert _blob_in_storage(mirror.root, img.layer.digest)

        # the mirror goes away: the origin serves, and the mirror is left alone for a while
        mirror.stop()
        front.clear()
        c2 = make_client(hosts)
        assert c2.resolve(ref).digest == img.root.digest
        sink = Sink()
        c2.download_blob(ref, img.layer, sink)
        assert bytes(sink.buf) == img.blobs[img.layer.digest]
        assert len(front.seen("HEAD")) == 2  # mirror_attempts, then marked down
        assert not front.seen("GET", "/blobs/")
    finally:
        front.stop()
        mirror.stop()


def test_mirror_404_falls_through_to_origin(registry: Registry, tmp_path: Path) -> None:
    other = start_registry(tmp_path / "empty")  # a "mirror" that has nothing
    try:
        img = hand_image(b"only at origin")
        ref = ref_for(registry.host)
        push_image(make_client(), ref, img)
        hosts = tmp_path / "certs.d"
        write_mirror_hosts(hosts, registry.host, other.url)
        c = make_client(hosts)
        assert c.resolve(ref).digest == img.root.digest
        sink = Sink()
        c.download_blob(ref, img.layer, sink)
        assert bytes(sink.buf) == img.blobs[img.layer.digest]
        # push goes to the first endpoint that may push: the origin here
        assert [e.base_url for e in c.endpoints(ref, "push")] == [registry.url]
    finally:
        other.stop()


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[Registry, Path]]:
    cert, key = make_cert(tmp_path / "tls")
    reg = start_registry(tmp_path / "tlsreg", tls=(cert, key))
    yield reg, cert
    reg.stop()


def test_tls_registry_verification(tls_registry: tuple[Registry, Path], tmp_path: Path) -> None:
    reg, cert = tls_registry
    img = hand_image(b"over tls")
    ref = ref_for(reg.host)
    # localhost default: HTTPS without verification
    push_image(make_client(), ref, img)
    # strict HTTPS without the CA: refused
    with pytest.raises(TLSHandshakeError) as ei:
        make_client(plain_http=False).resolve(ref)
    assert ei.value.certificate_error
    # with the CA (client option, or hosts.toml 'ca'): verified
    assert make_client(plain_http=False, ca_file=str(cert)).resolve(ref).digest == img.root.digest
    hosts = tmp_path / "certs.d"
    (hosts / reg.host).mkdir(parents=True)
    (hosts / reg.host / "hosts.toml").write_text(f'server = "https://{reg.host}"\nca = "{cert}"\n')
    assert make_client(hosts).resolve(ref).digest == img.root.digest


def test_plain_registry_needs_fallback_or_plain_http(registry: Registry, pushed: tuple[Reference, HandImage]) -> None:
    ref, img = pushed
    assert make_client().resolve(ref).digest == img.root.digest  # HTTPS tried, HTTP used
    assert make_client(plain_http=True).resolve(ref).digest == img.root.digest
    with pytest.raises(TLSHandshakeError) as ei:
        make_client(plain_http=False).resolve(ref)
    assert not ei.value.certificate_error


# --------------------------------------------------------------------------- threads


def test_parallel_downloads_share_one_client(registry: Registry, pushed: tuple[Reference, HandImage]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ref, img = pushed
    c = make_client(max_per_host=2)
    data = img.blobs[img.layer.digest]

    def one(offset: int) -> bool:
        sink = Sink()
        c.download_blob(ref, img.layer, sink, offset=offset)
        return bytes(sink.buf) == data[offset:]

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(one, [0, 10, 1000, 1 << 20, 2 << 20, 3 << 20]))



def test_is_proxy_for() -> None:
    from cargohold.registry.client import is_proxy_for
    from cargohold.registry.hosts import Endpoint

    assert not is_proxy_for(Endpoint("https://reg:5000"), "reg:5000")
    assert not is_proxy_for(Endpoint("https://registry-1.docker.io"), "docker.io")
    assert is_proxy_for(Endpoint("https://mirror.example"), "docker.io")
    assert is_proxy_for(Endpoint("http://127.0.0.1:1"), "reg:5000")
