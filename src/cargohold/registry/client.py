"""The OCI Distribution client: resolve, fetch manifests, stream blobs, push.

Endpoints come from ``hosts.toml`` (:mod:`cargohold.registry.hosts`): mirrors in order,
then the origin. An operation tries the endpoints that have its capability (``resolve``
for tags, ``pull`` for content by digest, ``push``); a mirror that answers 404, refuses
access or cannot be reached is skipped (and one that cannot be reached is left alone for
``mirror_cooldown`` seconds); the origin's answer is final. Mirrors get at most
``mirror_attempts`` tries per request so a dead mirror costs little.

Errors: :class:`NotFoundError` (404 everywhere), :class:`UnauthorizedError` (401/403 after
authenticating), :class:`UnavailableError` (connection errors or 5xx after retries),
:class:`DigestMismatchError` (content or headers disagreeing with the descriptor),
:class:`UnsupportedError` (Docker schema 1), :class:`InvalidInputError` (too large).

Thread-safe: one client is shared by the threads of a fetch.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from urllib3.exceptions import HTTPError as _U3HTTPError

from cargohold import __version__
from cargohold.errors import (
    DigestMismatchError,
    Interrupted,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import MAX_MANIFEST_SIZE
from cargohold.oci.reference import Reference
from cargohold.registry.auth import Authorizer, CredentialStore, scope_for
from cargohold.registry.hosts import DEFAULT_HOSTS_DIR, Endpoint, host_candidates
from cargohold.registry.transport import (
    CHUNK,
    Body,
    Response,
    TLSConfig,
    TLSHandshakeError,
    Transport,
    in_words,
)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: Tags fetched per page of the tag list.
TAGS_PAGE = 1000
MAX_JSON = 4 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_LINK_NEXT = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?")


def _host(resp: Response) -> str:
    """The host:port a response came from (for messages)."""
    return urlsplit(resp.url).netloc or "the registry"


class _Cut(Exception):
    """A body ended early or the connection broke mid-body: retry from where we are."""


@dataclass(slots=True)
class _BlobCopy:
    """One blob download: what, from where, into what; ``pos`` is the next byte to get."""

    ref: Reference
    desc: Descriptor
    write: Callable[[Any], object]
    on_progress: Callable[[int], None] | None
    pos: int


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower() if value else ""


def _digest_header(resp: Response) -> Digest | None:
    v = resp.header("Docker-Content-Digest")
    if not v:
        return None
    try:
        return Digest.parse(v.strip())
    except InvalidInputError:
        raise DigestMismatchError(
            f"{resp.url}: invalid Docker-Content-Digest header {v!r}"
        ) from None


def _same(a: Digest, b: Digest) -> bool:
    """Digests disagree only if they use the same algorithm and differ."""
    return a.algorithm != b.algorithm or a == b


def sniff_media_type(data: bytes) -> str:
    """The media type a manifest body says, or implies by its fields ("" if not JSON)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if obj.get("schemaVersion") == 1 or "fsLayers" in obj:
        return mt.DOCKER_SCHEMA1_SIGNED if "signatures" in obj else mt.DOCKER_SCHEMA1
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "config" in obj and "layers" in obj:
        return mt.OCI_MANIFEST
    return ""


def registry_error_text(body: bytes) -> str:
    """``CODE: message`` from a registry's JSON error body, else the text itself."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("errors"), list):
        parts = []
        for e in obj["errors"][:3]:
            if isinstance(e, dict):
                code, msg = e.get("code", ""), e.get("message", "")
                parts.append(f"{code}: {msg}" if code else str(msg))
        if parts:
            return "; ".join(parts)
    return " ".join(body[:300].decode("utf-8", "replace").split())


def is_proxy_for(ep: Endpoint, domain: str) -> bool:
    """Whether ``ep`` serves ``domain``'s content as a mirror (containerd's isProxy)."""
    if ep.host == domain:
        return False
    return not (domain == "docker.io" and ep.host == "registry-1.docker.io")


def _pull_path(ep: Endpoint, ref: Reference, suffix: str) -> str:
    """``/<repo>/<suffix>``, with ``?ns=<registry>`` for a mirror (as containerd sends, so
    that one mirror can serve several upstream registries)."""
    path = f"/{ref.repository}/{suffix}"
    if is_proxy_for(ep, ref.domain):
        path += "?" + urlencode([("ns", ref.domain)])
    return path


def _add_query(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    extra = urlencode(params)
    q = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, q, parts.fragment))


class RegistryClient:
    """Talks the OCI Distribution API to registries and their mirrors."""

    def __init__(
        self,
        *,
        hosts_dir: str | Path | None = DEFAULT_HOSTS_DIR,
        authfile: str | Path | None = None,
        plain_http: bool | None = None,
        insecure: bool = False,
        ca_file: str | Path | None = None,
        max_per_host: int = 4,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: tuple[float, float] = (10.0, 60.0),
        user_agent: str = f"cargohold/{__version__}",
        mirror_attempts: int = 2,
        mirror_cooldown: float = 30.0,
        transport: Transport | None = None,
        credentials: CredentialStore | None = None,
    ) -> None:
        self.hosts_dir = hosts_dir
        self.plain_http = plain_http
        self.insecure = insecure
        self.retries = retries
        self.mirror_attempts = max(1, min(mirror_attempts, retries))
        self.mirror_cooldown = mirror_cooldown
        self.transport = transport or Transport(
            max_per_host=max_per_host,
            max_attempts=retries,
            backoff=backoff,
            timeout=timeout,
            user_agent=user_agent,
            ca_file=str(ca_file) if ca_file else None,
        )
        self.credentials = credentials or CredentialStore(authfile)
        self.auth = Authorizer(self.transport, self.credentials)
        self._lock = threading.Lock()
        # Blob downloads in flight, and whether abort() stopped them.
        self._streams: set[Response] = set()
        self._aborted = threading.Event()
        # Manifest bodies a GET resolve read, for the fetch_manifest that follows (a few).
        self._resolved_bodies: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._endpoint_cache: dict[str, list[Endpoint]] = {}
        self._plain_fallback: set[str] = set()  # hosts found to speak plain HTTP
        self._down_until: dict[str, float] = {}

    # ------------------------------------------------------------------ endpoints

    def endpoints(self, ref: Reference, capability: str) -> list[Endpoint]:
        """Endpoints for ``ref``'s registry with ``capability``, in the order tried."""
        with self._lock:
            eps = self._endpoint_cache.get(ref.domain)
        if eps is None:
            eps = host_candidates(
                ref.domain, self.hosts_dir, plain_http=self.plain_http, insecure=self.insecure
            )
            with self._lock:
                self._endpoint_cache[ref.domain] = eps
        out = [e for e in eps if e.can(capability)]
        if not out:
            raise UnavailableError(
                f"no endpoint for {ref.domain} may {capability} (see its hosts.toml capabilities)"
            )
        now = time.monotonic()
        with self._lock:
            alive = [e for e in out[:-1] if self._down_until.get(e.base_url, 0.0) <= now]
        return [*alive, out[-1]]

    def _effective(self, ep: Endpoint) -> Endpoint:
        if ep.http_fallback and ep.host in self._plain_fallback:
            return ep.as_http()
        return ep

    @staticmethod
    def _tls(ep: Endpoint) -> TLSConfig:
        return TLSConfig(
            skip_verify=ep.skip_verify,
            ca_files=ep.ca_files,
            client_cert=ep.client_certs[0] if ep.client_certs else None,
        )

    def _try_endpoints(self, eps: list[Endpoint], op: Callable[[Endpoint], T]) -> T:
        """Run ``op`` on each endpoint until one answers; the last one's error is final."""
        for i, ep in enumerate(eps):
            last = i == len(eps) - 1
            try:
                return op(ep)
            except (NotFoundError, UnauthorizedError, UnavailableError) as e:
                if last:
                    raise
                if isinstance(e, UnavailableError):
                    with self._lock:
                        self._down_until[ep.base_url] = time.monotonic() + self.mirror_cooldown
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ requests

    def _send(
        self,
        ep: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        max_attempts: int | None,
    ) -> Response:
        attempts = max_attempts or (self.mirror_attempts if ep.is_mirror else None)
        try:
            return self.transport.request(
                method, url, headers=headers, body=body, tls=self._tls(ep), max_attempts=attempts
            )
        except TLSHandshakeError as e:
            # Fall back to HTTP when the server does not speak TLS, not on a bad certificate.
            if not ep.http_fallback or not url.startswith("https://") or e.certificate_error:
                raise
            with self._lock:
                self._plain_fallback.add(ep.host)
            url = "http://" + url[len("https://") :]
            return self.transport.request(
                method, url, headers=headers, body=body, tls=self._tls(ep), max_attempts=attempts
            )

    def _call(
        self,
        ep: Endpoint,
        repository: str,
        actions: str,
        method: str,
        path: str | None = None,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        body: Body = None,
        max_attempts: int | None = None,
    ) -> Response:
        """One authenticated request to ``ep`` (``path`` under its API root, or ``url``).

        Returns the response for any status but 401 (answered by authenticating once more)
        and retryable statuses (retried by the transport).
        """
        eff = self._effective(ep)
        target = url if url is not None else eff.url(path or "")
        hdrs: dict[str, str] = {}
        for k, v in ep.headers:
            hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
        if headers:
            hdrs.update(headers)
        same_host = urlsplit(target).netloc == ep.host
        scope = scope_for(repository, actions)
        tls = self._tls(ep)
        auth = self.auth.authorization(ep.host, scope, tls) if same_host else None
        for attempt in range(2):
            h = dict(hdrs)
            if auth:
                h["Authorization"] = auth
            resp = self._send(ep, method, target, h, body, max_attempts)
            if resp.status != 401 or attempt == 1 or not same_host:
                return resp
            challenges = resp.headers.getlist("WWW-Authenticate")
            resp.drain()
            if not self.auth.challenge(ep.host, scope, challenges, tls, sent=auth):
                raise self._unauthorized(ep, repository, 401, "")
            auth = self.auth.authorization(ep.host, scope, tls)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unauthorized(self, ep: Endpoint, repository: str, status: int, text: str) -> UnauthorizedError:
        creds = self.credentials.get(ep.host)
        who = "anonymously" if creds is None else "with the configured credentials"
        msg = f"{ep.host}: access to {repository} denied {who} (HTTP {status})"
        if text:
            msg += f": {text}"
        return UnauthorizedError(msg)

    def _fail(self, resp: Response, ep: Endpoint, repository: str, what: str) -> NoReturn:
        """Raise the error for an unexpected status (consumes and closes ``resp``)."""
        status = resp.status
        try:
            # A 404's body is read too (and dropped): the connection then serves the next
            # request (many missing images in a row).
            body = resp.read_limited(64 * 1024)
            text = registry_error_text(body) if status != 404 else ""
        except (_U3HTTPError, OSError):
            text = ""
        resp.close()
        where = f" (mirror {ep.base_url})" if ep.is_mirror else ""
        if status == 404:
            raise NotFoundError(f"{what}: not found{where}")
        if status in (401, 403):
            raise self._unauthorized(ep, repository, status, text)
        if status in (400, 405, 411, 413, 415, 416):
            raise InvalidInputError(f"{what}: the registry refused the request (HTTP {status}){where}: {text}")
        raise UnavailableError(f"{what}: unexpected HTTP {status}{where}: {text}")

    def _read_retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` again (with backoff) when a body read breaks mid-way."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except _Cut as e:
                if attempt >= self.retries:
                    raise UnavailableError(f"{what}: {e} (after {attempt} attempts)") from None
                self.transport.backoff_sleep(attempt)

    # ------------------------------------------------------------------ resolve

    def resolve(self, ref: Reference) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest or index ``ref`` names."""
        return self._try_endpoints(
            self.endpoints(ref, "resolve"),
            lambda ep: self._read_retrying(str(ref), lambda: self._resolve_at(ep, ref)),
        )

    def _resolve_at(self, ep: Endpoint, ref: Reference) -> Descriptor:
        path = _pull_path(ep, ref, f"manifests/{ref.object}")
        accept = {"Accept": ", ".join(mt.MANIFEST_ACCEPT)}
        resp = self._call(ep, ref.repository, "pull", "HEAD", path, headers=accept)
        status = resp.status
        if status == 200:
            media_type = _media_type(resp.header("Content-Type"))
            digest = _digest_header(resp)
            size = resp.content_length
            resp.drain()
            if media_type in mt.SCHEMA1:
                mt.refuse_unsupported_manifest(media_type, f"{ref}")
            if digest is None and ref.digest is not None:
                digest = ref.digest
            if (
                digest is not None
                and size is not None
                and (mt.is_index(media_type) or mt.is_manifest(media_type))
            ):
                self._check_ref_digest(ref, digest)
                if size > MAX_MANIFEST_SIZE:
                    raise self._too_large(ref, size)
                return Descriptor(media_type, digest, size)
        elif status in (404, 401, 403):
            self._fail(resp, ep, ref.repository, f"manifest {ref}")
        else:
            resp.drain()  # HEAD unsupported (405...) or unhelpful: use GET
        return self._resolve_get(ep, ref, accept)

    def _resolve_get(self, ep: Endpoint, ref: Reference, accept: dict[str, str]) -> Descriptor:
        path = _pull_path(ep, ref, f"manifests/{ref.object}")
        resp = self._call(ep, ref.repository, "pull", "GET", path, headers=accept)
        with resp:
            if resp.status != 200:
                self._fail(resp, ep, ref.repository, f"manifest {ref}")
            size = resp.content_length
            if size is not None and size > MAX_MANIFEST_SIZE:
                raise self._too_large(ref, size)
            header_digest = _digest_header(resp)
            media_type = _media_type(resp.header("Content-Type"))
            try:
                body = resp.read_limited(MAX_MANIFEST_SIZE)
            except (_U3HTTPError, OSError) as e:
                raise _Cut(f"reading manifest {ref}: {in_words(e, _host(resp))}") from None
        if len(body) > MAX_MANIFEST_SIZE:
            raise self._too_large(ref, len(body))
        if size is not None and len(body) < size:
            raise _Cut(f"manifest {ref}: body ended after {len(body)} of {size} bytes")
        if media_type in mt.SCHEMA1:
            mt.refuse_unsupported_manifest(media_type, f"{ref}")
        if not (mt.is_index(media_type) or mt.is_manifest(media_type)):
            media_type = sniff_media_type(body) or media_type
            mt.refuse_unsupported_manifest(media_type, f"manifest {ref}")
        alg = ref.digest.algorithm if ref.digest is not None else "sha256"
        digest = Digest.from_bytes(body, alg)
        if header_digest is not None and not _same(header_digest, digest):
            raise DigestMismatchError(
                f"manifest {ref}: the registry says {header_digest} but the content is {digest}"
            )
        self._check_ref_digest(ref, digest)
        with self._lock:
            self._resolved_bodies[(ref.name, str(digest))] = body
            while len(self._resolved_bodies) > 16:
                self._resolved_bodies.popitem(last=False)
        return Descriptor(media_type, digest, len(body))

    @staticmethod
    def _check_ref_digest(ref: Reference, digest: Digest) -> None:
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(f"{ref}: the registry resolved it to {digest}")

    @staticmethod
    def _too_large(what: object, size: int) -> InvalidInputError:
        return InvalidInputError(
            f"manifest {what}: {size} bytes is larger than the {MAX_MANIFEST_SIZE} byte limit"
        )

    # ------------------------------------------------------------------ manifests

    def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        """The bytes of manifest/index ``desc`` of ``ref``'s repository, verified."""
        if desc.size > MAX_MANIFEST_SIZE:
            raise self._too_large(desc.digest, desc.size)
        with self._lock:
            body = self._resolved_bodies.pop((ref.name, str(desc.digest)), None)
        if body is not None and len(body) == desc.size:
            return body  # read (and hashed to this digest) by a resolve that fell back to GET
        return self._try_endpoints(
            self.endpoints(ref, "pull"),
            lambda ep: self._read_retrying(
                f"manifest {desc.digest}", lambda: self._fetch_manifest_at(ep, ref, desc)
            ),
        )

    def _fetch_manifest_at(self, ep: Endpoint, ref: Reference, desc: Descriptor) -> bytes:
        accept = [desc.media_type] if desc.media_type not in mt.MANIFEST_ACCEPT else []
        accept += list(mt.MANIFEST_ACCEPT)
        what = f"manifest {desc.digest} of {ref.name}"
        resp = self._call(
            ep,
            ref.repository,
            "pull",
            "GET",
            _pull_path(ep, ref, f"manifests/{desc.digest}"),
            headers={"Accept": ", ".join(accept)},
        )
        with resp:
            if resp.status != 200:
                self._fail(resp, ep, ref.repository, what)
            size = resp.content_length
            if size is not None and size != desc.size:
                if size > MAX_MANIFEST_SIZE:
                    raise self._too_large(desc.digest, size)
                raise DigestMismatchError(f"{what}: the registry sends {size} bytes, expected {desc.size}")
            header_digest = _digest_header(resp)
            if header_digest is not None and not _same(header_digest, desc.digest):
                raise DigestMismatchError(f"{what}: the registry says its digest is {header_digest}")
            try:
                body = resp.read_limited(desc.size)
            except (_U3HTTPError, OSError) as e:
                raise _Cut(f"reading {what}: {in_words(e, _host(resp))}") from None
        if len(body) > desc.size:
            raise DigestMismatchError(f"{what}: the registry sends more than the expected {desc.size} bytes")
        if len(body) < desc.size:
            if size is None:
                raise DigestMismatchError(f"{what}: {len(body)} bytes, expected {desc.size}")
            raise _Cut(f"{what}: body ended after {len(body)} of {desc.size} bytes")
        got = Digest.from_bytes(body, desc.digest.algorithm)
        if got != desc.digest:
            raise DigestMismatchError(f"{what}: content has digest {got}")
        return body

    # ------------------------------------------------------------------ blobs

    def download_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        write: Callable[[Any], object],
        *,
        offset: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream blob ``desc`` from byte ``offset`` into ``write`` (about 1 MiB per call).

        Breaks (cut connections, short bodies, 5xx) are retried and resumed with ``Range``
        from the current position: bytes given to ``write`` are never asked for again. A
        server ignoring ``Range`` has the prefix skipped. More bytes than ``desc.size``
        raise :class:`DigestMismatchError` (nothing beyond the size is written). The digest
        is the caller's to verify.
        """
        if offset < 0 or offset > desc.size:
            raise InvalidInputError(f"blob {desc.digest}: offset {offset} outside 0..{desc.size}")
        if offset == desc.size:
            return
        state = _BlobCopy(ref, desc, write, on_progress, offset)
        self._try_endpoints(self.endpoints(ref, "pull"), lambda ep: self._download_at(ep, state))

    def _download_at(self, ep: Endpoint, state: _BlobCopy) -> None:
        ref, desc = state.ref, state.desc
        attempt = 0
        limit = self.mirror_attempts if ep.is_mirror else self.retries
        while True:
            start = state.pos
            try:
                self._stream(ep, state)
                return
            except _Cut as e:
                if self._aborted.is_set():
                    raise Interrupted(f"blob {desc.digest} of {ref.name}: download stopped") from None
                if state.pos > start:
                    attempt = 0  # progress: the budget is for consecutive failures
                attempt += 1
                if attempt >= limit:
                    raise UnavailableError(
                        f"blob {desc.digest} of {ref.name}: {e} "
                        f"(at byte {state.pos} of {desc.size}, after {attempt} attempts)"
                    ) from None
                self.transport.backoff_sleep(attempt)

    def _stream(self, ep: Endpoint, state: _BlobCopy) -> None:
        ref, desc, write, on_progress = state.ref, state.desc, state.write, state.on_progress
        pos = state.pos
        size = desc.size
        what = f"blob {desc.digest} of {ref.name}"
        headers = {"Range": f"bytes={pos}-"} if pos else {}
        if self._aborted.is_set():
            raise Interrupted(f"{what}: download stopped")
        resp = self._call(
            ep, ref.repository, "pull", "GET", _pull_path(ep, ref, f"blobs/{desc.digest}"), headers=headers
        )
        with self._lock:
            self._streams.add(resp)
        try:
            status = resp.status
            skip = 0
            if status == 206:
                m = _CONTENT_RANGE.match(resp.header("Content-Range") or "")
                if m is None:
                    raise DigestMismatchError(f"{what}: 206 without a valid Content-Range")
                first, total = int(m.group(1)), m.group(3)
                if total != "*" and int(total) != size:
                    raise DigestMismatchError(f"{what}: the registry says its size is {total}, expected {size}")
                if first > pos:
                    raise UnavailableError(f"{what}: asked for bytes from {pos}, got from {first}")
                skip = pos - first
            elif status == 200:
                skip = pos  # Range ignored (or not sent): the whole blob comes
            elif status == 416:
                raise DigestMismatchError(f"{what}: the registry has fewer than {pos + 1} bytes")
            else:
                self._fail(resp, ep, ref.repository, what)
            remaining = size - pos
            length = resp.content_length
            if length is not None and length != remaining + skip:
                raise DigestMismatchError(
                    f"{what}: the registry sends {length} bytes from byte {pos - skip}, "
                    f"expected {remaining + skip} (size {size})"
                )
            read = resp.read
            while True:
                try:
                    chunk: bytes | memoryview = read(CHUNK)
                except (_U3HTTPError, OSError) as e:
                    raise _Cut(in_words(e, _host(resp))) from None
                if not chunk:
                    break
                n = len(chunk)
                if skip:
                    if n <= skip:
                        skip -= n
                        continue
                    chunk = memoryview(chunk)[skip:]
                    n -= skip
                    skip = 0
                if n > remaining:
                    raise DigestMismatchError(f"{what}: the registry sends more than {size} bytes")
                write(chunk)
                remaining -= n
                state.pos += n
                if on_progress is not None:
                    on_progress(n)
            if remaining:
                raise _Cut(f"body ended {remaining} bytes short")
        finally:
            with self._lock:
                self._streams.discard(resp)
            resp.close()

    def blob_exists(self, ref: Reference, desc: Descriptor) -> bool:
        """Whether ``ref``'s repository has blob ``desc`` (HEAD on the push endpoint)."""
        ep = self.endpoints(ref, "push")[0]
        return self._blob_exists_at(ep, ref, desc)

    def _blob_exists_at(self, ep: Endpoint, ref: Reference, desc: Descriptor) -> bool:
        resp = self._call(ep, ref.repository, "pull,push", "HEAD", f"/{ref.repository}/blobs/{desc.digest}")
        if resp.status == 200:
            resp.drain()
            return True
        if resp.status == 404:
            resp.drain()
            return False
        self._fail(resp, ep, ref.repository, f"blob {desc.digest} of {ref.name}")

    # ------------------------------------------------------------------ push

    def push_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        open: Callable[[], BinaryIO],
        *,
        chunked: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        mount_from: str | None = None,
    ) -> bool:
        """Upload blob ``desc`` to ``ref``'s repository unless it is there: True if uploaded
        (or mounted from repository ``mount_from``), False if it existed.

        Monolithic: ``POST`` then ``PUT ?digest=`` with the whole body. Chunked: ``PATCH``
        per ``chunk_size`` with ``Content-Range``, then ``PUT ?digest=``. A failed upload is
        started over (``open`` is called again) up to ``retries`` times.
        """
        if chunk_size < 1:
            raise InvalidInputError(f"chunk_size must be positive (got {chunk_size})")
        ep = self.endpoints(ref, "push")[0]
        if self._blob_exists_at(ep, ref, desc):
            return False
        what = f"blob {desc.digest} to {ref.name}"
        attempt = 0
        while True:
            attempt += 1
            try:
                self._upload(ep, ref, desc, open, chunked, chunk_size, mount_from, what)
                return True
            except (UnavailableError, _Cut) as e:
                if attempt >= self.retries:
                    if isinstance(e, UnavailableError):
                        raise
                    raise UnavailableError(f"pushing {what}: {e} (after {attempt} attempts)") from None
                self.transport.backoff_sleep(attempt)

    def _upload(
        self,
        ep: Endpoint,
        ref: Reference,
        desc: Descriptor,
        open: Callable[[], BinaryIO],
        chunked: bool,
        chunk_size: int,
        mount_from: str | None,
        what: str,
    ) -> None:
        repo = ref.repository
        start = f"/{repo}/blobs/uploads/"
        if mount_from:
            start += "?" + urlencode([("mount", str(desc.digest)), ("from", mount_from)])
        resp = self._call(ep, repo, "pull,push", "POST", start, headers={"Content-Length": "0"})
        if resp.status == 201 and mount_from:
            resp.drain()
            return
        if resp.status != 202:
            self._fail(resp, ep, repo, f"starting upload of {what}")
        location = self._location(resp, what)
        resp.drain()
        if chunked:
            location = self._upload_chunks(ep, repo, desc, open, chunk_size, location, what)
            body: Body = b""
            headers = {"Content-Length": "0"}
        else:
            body = open
            headers = {"Content-Length": str(desc.size)}
        headers["Content-Type"] = "application/octet-stream"
        resp = self._call(
            ep,
            repo,
            "pull,push",
            "PUT",
            url=_add_query(location, [("digest", str(desc.digest))]),
            headers=headers,
            body=body,
            max_attempts=1,
        )
        with resp:
            if resp.status != 201:
                if resp.status >= 500:
                    raise UnavailableError(f"pushing {what}: HTTP {resp.status}: {resp.error_text()}")
                self._fail(resp, ep, repo, f"pushing {what}")
            got = _digest_header(resp)
            resp.drain()
        if got is not None and not _same(got, desc.digest):
            raise DigestMismatchError(f"pushing {what}: the registry stored it as {got}")

    def _upload_chunks(
        self,
        ep: Endpoint,
        repo: str,
        desc: Descriptor,
        open: Callable[[], BinaryIO],
        chunk_size: int,
        location: str,
        what: str,
    ) -> str:
        sent = 0
        with open() as f:
            while True:
                data = f.read(chunk_size)
                if not data:
                    break
                end = sent + len(data) - 1
                resp = self._call(
                    ep,
                    repo,
                    "pull,push",
                    "PATCH",
                    url=location,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{sent}-{end}",
                        "Content-Length": str(len(data)),
                    },
                    body=data,
                    max_attempts=1,
                )
                if resp.status != 202:
                    if resp.status >= 500:
                        text = resp.error_text()
                        resp.close()
                        raise UnavailableError(f"pushing {what}: HTTP {resp.status}: {text}")
                    self._fail(resp, ep, repo, f"pushing {what}")
                location = self._location(resp, what)
                rng = resp.header("Range")
                resp.drain()
                if rng is not None:
                    got_end = rng.rsplit("-", 1)[-1].strip()
                    if got_end.isdigit() and int(got_end) != end:
                        raise _Cut(f"the registry has bytes up to {got_end}, sent up to {end}")
                sent = end + 1
        if sent != desc.size:
            raise InvalidInputError(f"pushing {what}: the source has {sent} bytes, expected {desc.size}")
        return location

    @staticmethod
    def _location(resp: Response, what: str) -> str:
        loc = resp.header("Location")
        if not loc:
            resp.close()
            raise UnavailableError(f"pushing {what}: the registry sent no upload Location")
        return urljoin(resp.url, loc)

    def push_manifest(
        self, ref: Reference, media_type: str, body: bytes, *, tag: str | None = None
    ) -> Descriptor:
        """PUT a manifest or index by ``tag`` (or by its digest); returns its descriptor."""
        digest = Digest.from_bytes(body)
        target = tag if tag else str(digest)
        ep = self.endpoints(ref, "push")[0]
        what = f"manifest {digest} to {ref.name}:{target}" if tag else f"manifest {digest} to {ref.name}"
        resp = self._call(
            ep,
            ref.repository,
            "pull,push",
            "PUT",
            f"/{ref.repository}/manifests/{target}",
            headers={"Content-Type": media_type, "Content-Length": str(len(body))},
            body=body,
        )
        with resp:
            if resp.status not in (200, 201):
                self._fail(resp, ep, ref.repository, f"pushing {what}")
            got = _digest_header(resp)
            resp.drain()
        if got is not None and not _same(got, digest):
            raise DigestMismatchError(f"pushing {what}: the registry stored it as {got}")
        return Descriptor(media_type, digest, len(body))

    # ------------------------------------------------------------------ tags

    def tags(self, ref: Reference) -> list[str]:
        """All tags of ``ref``'s repository (following ``Link`` pagination)."""
        return self._try_endpoints(self.endpoints(ref, "resolve"), lambda ep: list(self._tags_at(ep, ref)))

    def _tags_at(self, ep: Endpoint, ref: Reference) -> Iterator[str]:
        url: str | None = self._effective(ep).url(f"/{ref.repository}/tags/list?n={TAGS_PAGE}")
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            resp = self._call(ep, ref.repository, "pull", "GET", url=url)
            with resp:
                if resp.status != 200:
                    self._fail(resp, ep, ref.repository, f"tags of {ref.name}")
                link = resp.header("Link")
                try:
                    data = resp.read_limited(MAX_JSON)
                except (_U3HTTPError, OSError) as e:
                    raise UnavailableError(f"tags of {ref.name}: {e}") from None
            try:
                obj = json.loads(data)
            except ValueError:
                raise UnavailableError(f"tags of {ref.name}: the registry sent invalid JSON") from None
            tags = obj.get("tags") if isinstance(obj, dict) else None
            for t in tags or []:
                if isinstance(t, str):
                    yield t
            m = _LINK_NEXT.search(link or "")
            url = urljoin(resp.url, m.group(1)) if m else None

    def abort(self) -> None:
        """Stop every blob download and request now, from any thread (Ctrl-C, SIGTERM):
        blocked reads return at once and the downloads raise Interrupted; what was written
        stays for a resume."""
        self._aborted.set()
        with self._lock:
            streams = list(self._streams)
        for resp in streams:
            resp.abort()
        self.transport.abort()  # manifests, configs and tokens in flight too

    def close(self) -> None:
        self.transport.clear()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RegistryClient", "registry_error_text", "sniff_media_type"]
