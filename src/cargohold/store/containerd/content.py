"""ContentStore over containerd's content service (``containerd.services.content.v1``).

Writes use the bidirectional ``Write`` stream the way containerd's own remote writer does
-- a STAT first (which opens or resumes the ingest and reports its offset), WRITE messages
carrying their offset, a COMMIT with size, expected digest and labels -- but pipelined:
requests are fed to gRPC from a queue by a generator while up to :data:`WINDOW` responses
are outstanding, and WRITE messages are encoded by hand so each payload is copied once (into
the message) instead of into a protobuf object and again into its serialization.

Large blobs of known size and digest skip the stream's data messages when containerd's root
is on this machine: :mod:`cargohold.store.containerd.ingest` appends them to containerd's
ingest file and lets containerd hash and check them on commit.

containerd's error vocabulary, as mapped here:

* a writer for a ref another writer holds: UNAVAILABLE "ref ... locked" -> IngestLockedError
* a writer or commit whose expected digest is already stored: ALREADY_EXISTS ->
  AlreadyExistsError (containerd has dropped the ingest; the blob is there)
* a commit whose bytes do not match: FAILED_PRECONDITION "unexpected commit digest/size"
  -> DigestMismatchError, after which the ingest is aborted
"""

from __future__ import annotations

import builtins
import io
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.errors import (
    CargoholdError,
    ConflictError,
    DigestMismatchError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from cargohold.oci.digest import Digest
from cargohold.store.containerd.client import ContainerdClient, RpcError, from_timestamp
from cargohold.store.containerd.ingest import ClosingWriter, DirectContentWriter, open_direct
from cargohold.store.interfaces import ContentInfo, IngestStatus

#: Bytes per WRITE message and per Read request.
CHUNK = 1 << 20
#: WRITE messages sent but not yet acknowledged before the writer waits for containerd.
WINDOW = 16

WRITE_METHOD = "/containerd.services.content.v1.Content/Write"
#: The plugin that holds containerd's blobs; introspection exports its directory as ``root``.
CONTENT_PLUGIN = ("io.containerd.content.v1", "content")
#: Set to 0 to keep every read (blobs, and layers through containerd's diff service) on
#: containerd's gRPC services even when its root is on this machine.
DIRECT_ENV = "CARGOHOLD_CONTAINERD_DIRECT"


def direct_access_allowed() -> bool:
    """Whether cargohold may read containerd's files and write its snapshots directly."""
    return os.environ.get(DIRECT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# WriteContentRequest field tags: action=1 (varint), offset=5 (varint), data=6 (bytes).
_ACTION_WRITE = b"\x08\x01"
_TAG_OFFSET = b"\x28"
_TAG_DATA = b"\x32"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_write(offset: int, data: bytes | bytearray | memoryview) -> bytes:
    """A serialized ``WriteContentRequest{action: WRITE, offset, data}`` (one copy of data)."""
    head = _ACTION_WRITE
    if offset:
        head += _TAG_OFFSET + _varint(offset)
    head += _TAG_DATA + _varint(len(data))
    return b"".join((head, data))


def _identity(b: bytes) -> bytes:
    return b


def _info(pb: Any) -> ContentInfo:
    created = from_timestamp(pb.created_at) or _EPOCH
    # List does not fill updated_at; Info and Update do.
    updated = from_timestamp(pb.updated_at) or created
    return ContentInfo(Digest.parse(pb.digest), int(pb.size), created, updated, dict(pb.labels))


def _status(pb: Any) -> IngestStatus:
    started = from_timestamp(pb.started_at) or _EPOCH
    return IngestStatus(
        ref=str(pb.ref),
        offset=int(pb.offset),
        total=int(pb.total),
        expected=Digest.parse(pb.expected) if pb.expected else None,
        started_at=started,
        updated_at=from_timestamp(pb.updated_at) or started,
    )


def _is_mismatch(err: CargoholdError) -> bool:
    text = err.message
    return type(err) is ConflictError and any(
        s in text for s in ("unexpected commit", "size validation", "unexpected digest")
    )


class ContainerdContentStore:
    """The ContentStore protocol over a :class:`ContainerdClient`'s namespace."""

    def __init__(self, client: ContainerdClient, *, direct: bool | None = None) -> None:
        self.client = client
        self._pb: Any = client.api.content
        self._stub: Any = client.content_stub
        #: Read committed blobs from containerd's own files, and write large blobs into its
        #: ingest files (:mod:`.ingest`), when its content root is on this machine (see
        #: :meth:`local_root`); default: unless ``CARGOHOLD_CONTAINERD_DIRECT=0``.
        self.direct = direct_access_allowed() if direct is None else direct
        self._root_lock = threading.Lock()
        self._root: Path | None = None
        self._root_known = False

    def local_root(self) -> Path | None:
        """containerd's content directory when this process can read it (containerd on this
        machine, in this mount namespace, and we may read its root), else None. Asked once
        (introspection's export of the content plugin)."""
        if not self.direct:
            return None
        with self._root_lock:
            if not self._root_known:
                self._root = self._find_root()
                self._root_known = True
            return self._root

    def _find_root(self) -> Path | None:
        root = self.client.plugin_exports(*CONTENT_PLUGIN).get("root")
        if not root:
            return None
        # Not its blobs/ directory: a fresh containerd creates that at its first commit.
        if Path(root).is_dir() and os.access(root, os.R_OK | os.X_OK):
            return Path(root)
        return None

    def local_path(self, digest: Digest) -> Path | None:
        """Where containerd keeps the committed blob ``digest`` on this machine, if it is
        readable from here (the file may still be missing or of another size: check)."""
        root = self.local_root()
        if root is None:
            return None
        return root / "blobs" / digest.algorithm / digest.hex

    def _open_local(self, digest: Digest, size: int) -> io.BufferedReader | None:
        path = self.local_path(digest)
        if path is None:
            return None
        try:
            raw = io.FileIO(path, "r")
        except OSError:
            return None
        if os.fstat(raw.fileno()).st_size != size:  # damaged, or not containerd's file
            raw.close()
            return None
        return io.BufferedReader(raw, buffer_size=CHUNK)

    def info(self, digest: Digest) -> ContentInfo:
        resp = self.client.call(
            self._stub.Info, self._pb.InfoRequest(digest=str(digest)), what=f"content {digest}"
        )
        return _info(resp.info)

    def update(self, digest: Digest, labels: Mapping[str, str | None]) -> ContentInfo:
        """Set labels; a None (or empty) value removes the label. Other labels are kept."""
        if not labels:
            return self.info(digest)
        info = self._pb.Info(digest=str(digest), labels={k: v for k, v in labels.items() if v})
        mask = self.client.api.field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        resp = self.client.call(
            self._stub.Update,
            self._pb.UpdateRequest(info=info, update_mask=mask),
            what=f"update content {digest}",
        )
        return _info(resp.info)

    def walk(self, *, filters: Sequence[str] = ()) -> Iterator[ContentInfo]:
        """All content of the namespace (containerd filter syntax, e.g. ``labels.x==y``)."""
        req = self._pb.ListContentRequest(filters=list(filters))
        for resp in self.client.stream(self._stub.List, req, what="list content"):
            for pb in resp.info:
                yield _info(pb)

    def delete(self, digest: Digest) -> None:
        self.client.call(
            self._stub.Delete,
            self._pb.DeleteContentRequest(digest=str(digest)),
            what=f"delete content {digest}",
        )

    def reader(self, digest: Digest) -> io.BufferedReader:
        """A buffered, seekable reader (and its own context manager). Raises NotFoundError
        right away if the blob is missing. containerd's own blob file when it can be read
        from here and has the size containerd reports (committed blobs never change);
        otherwise each refill is one 1 MiB ``Read`` request."""
        info = self.info(digest)
        local = self._open_local(digest, info.size)
        if local is not None:
            return local
        return io.BufferedReader(_BlobReader(self.client, digest, info.size), buffer_size=CHUNK)

    def writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> ContainerdContentWriter | DirectContentWriter:
        """An ingest: over the Write stream, or -- a blob of known size and digest of at
        least :data:`~.ingest.DIRECT_WRITE_MIN` bytes while containerd's root is on this
        machine -- straight into containerd's ingest file, hashed as it is written and
        linked into containerd's store only when it is the expected blob (see :mod:`.ingest`)."""
        w = ContainerdContentWriter(self, ref, total=total, expected=expected)
        if self.direct and expected is not None and total:
            try:
                direct = open_direct(self, w, total, expected)
            except BaseException:
                w.abandon()
                raise
            if direct is not None:
                return direct
        return w

    def status(self, ref: str) -> IngestStatus:
        resp = self.client.call(
            self._stub.Status, self._pb.StatusRequest(ref=ref), what=f"ingest {ref}"
        )
        if not resp.HasField("status"):
            raise NotFoundError(f"ingest {ref}: not found")
        return _status(resp.status)

    def list_statuses(self, *, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        resp = self.client.call(
            self._stub.ListStatuses,
            self._pb.ListStatusesRequest(filters=list(filters)),
            what="list ingests",
        )
        return [_status(pb) for pb in resp.statuses]

    def abort(self, ref: str) -> None:
        """Drop an ingest. NotFoundError if there is none, ConflictError while a writer has it.

        containerd itself would delete an ingest under a live writer; opening (and closing)
        a writer first takes its lock, so a busy ingest is refused as in the embedded store.
        """
        self.status(ref)
        ContainerdContentWriter(self, ref).close()
        self.client.call(self._stub.Abort, self._pb.AbortRequest(ref=ref), what=f"abort {ref}")


class _BlobReader(io.RawIOBase):
    """Raw positional reads of one blob. Sequential reads share one ``Read`` stream over
    the rest of the blob (containerd sends it while we consume it); a seek elsewhere ends
    that stream and the next read starts another."""

    def __init__(self, client: ContainerdClient, digest: Digest, size: int) -> None:
        super().__init__()
        self._client = client
        self._digest = digest
        self._size = size
        self._pos = 0
        self._seq: Iterator[bytes] | None = None  # stream of the bytes from _seq_pos on
        self._seq_pos = 0
        self._left = memoryview(b"")  # received from _seq, not yet consumed

    def _drop_stream(self) -> None:
        seq, self._seq = self._seq, None
        self._left = memoryview(b"")
        if seq is not None:
            close = getattr(seq, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self._drop_stream()
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _chunks(self, offset: int, size: int) -> Iterator[bytes]:
        client = self.client_checked()
        req = client.api.content.ReadContentRequest(
            digest=str(self._digest), offset=offset, size=size
        )
        at = offset
        for resp in client.stream(client.content_stub.Read, req, what=f"read {self._digest}"):
            # containerd 1.6 numbers responses from the start of the request, not the blob.
            if int(resp.offset) not in (at - offset, at):
                raise UnavailableError(
                    f"read {self._digest}: containerd sent offset {resp.offset}, expected "
                    f"{at - offset} (from {offset})"
                )
            data: bytes = resp.data
            at += len(data)
            yield data

    def client_checked(self) -> ContainerdClient:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._client

    def readinto(self, buffer: Any, /) -> int:
        mv = memoryview(buffer).cast("B")
        n = min(len(mv), self._size - self._pos)
        if n <= 0:
            return 0
        if self._seq is None or self._seq_pos != self._pos:
            self._drop_stream()
            self._seq = self._chunks(self._pos, self._size - self._pos)
            self._seq_pos = self._pos
        got = 0
        while got < n:
            if not self._left:
                data = next(self._seq, None)
                if data is None:
                    break
                self._left = memoryview(data)
            k = min(len(self._left), n - got)
            mv[got : got + k] = self._left[:k]
            self._left = self._left[k:]
            got += k
        self._pos += got
        self._seq_pos = self._pos
        return got

    def readall(self) -> bytes:
        n = self._size - self._pos
        if n <= 0:
            return b""
        self._drop_stream()
        data = b"".join(self._chunks(self._pos, n))
        self._pos += len(data)
        return data


class ContainerdContentWriter(ClosingWriter):
    """One ``Write`` stream: an open ingest in containerd (the ref is locked while open).

    Not thread-safe. ``close`` (or leaving the ``with`` block without commit) ends the
    stream after flushing buffered bytes; the ingest stays for a resume by ref.
    """

    def __init__(
        self,
        store: ContainerdContentStore,
        ref: str,
        *,
        total: int = 0,
        expected: Digest | None = None,
    ) -> None:
        client = store.client
        self._store = store
        self._client = client
        self._pb: Any = client.api.content
        self._ref = ref
        self._what = f"content writer {ref}"
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._ended = False  # request side ended (sentinel queued)
        self._done = False  # unusable: committed, closed or failed
        self._pending: deque[int] = deque()  # expected offsets of unacknowledged requests
        self._buf = bytearray()
        self._sent = 0  # offset after everything queued
        self._digest = ""
        method = client.channel.stream_stream(
            WRITE_METHOD,
            request_serializer=_identity,
            response_deserializer=self._pb.WriteContentResponse.FromString,
        )
        try:
            self._call: Any = method(iter(self._queue.get, None), metadata=client.metadata())
        except RpcError as e:
            raise client.error(e, self._what) from None
        stat = self._pb.WriteContentRequest(
            action=self._pb.STAT, ref=ref, total=total, expected=str(expected) if expected else ""
        )
        self._send(stat.SerializeToString(), -1)
        resp = self._recv()
        self._sent = int(resp.offset)
        self.total = int(resp.total)
        self.started_at = from_timestamp(resp.started_at) or datetime.now(UTC)

    # ------------------------------------------------------------ stream plumbing

    def _send(self, payload: bytes, expect_offset: int) -> None:
        self._queue.put(payload)
        self._pending.append(expect_offset)

    def _recv(self) -> Any:
        try:
            resp = next(self._call)
        except StopIteration:
            self._fail()
            raise UnavailableError(f"{self._what}: containerd ended the stream early") from None
        except RpcError as e:
            self._fail()
            raise self._client.error(e, self._what) from None
        want = self._pending.popleft()
        if want >= 0 and int(resp.offset) != want:
            self._fail()
            raise UnavailableError(
                f"{self._what}: containerd is at offset {resp.offset}, expected {want}"
            )
        if resp.digest:
            self._digest = resp.digest
        return resp

    def _end_requests(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def _fail(self) -> None:
        self._done = True
        self._end_requests()
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()

    def _drain(self) -> None:
        while self._pending:
            self._recv()

    def _finish_stream(self) -> None:
        """End our side and read containerd's to the end (it then has released the ref)."""
        self._end_requests()
        self._done = True
        try:
            for _ in self._call:
                pass
        except RpcError as e:
            raise self._client.error(e, self._what) from None

    def _send_data(self, data: bytes | bytearray | memoryview) -> None:
        self._sent += len(data)
        self._send(encode_write(self._sent - len(data), data), self._sent)
        while len(self._pending) > WINDOW:
            self._recv()

    def _usable(self) -> None:
        if self._done:
            raise ConflictError(f"{self._what} is closed")

    # ------------------------------------------------------------ ContentWriter

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._sent + len(self._buf)

    def write(self, data: bytes | memoryview) -> int:
        self._usable()
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        n = len(mv)
        if self._buf:
            take = min(CHUNK - len(self._buf), n)
            self._buf += mv[:take]
            mv = mv[take:]
            if len(self._buf) >= CHUNK:
                buf, self._buf = self._buf, bytearray()
                self._send_data(buf)
        while len(mv) >= CHUNK:
            self._send_data(mv[:CHUNK])
            mv = mv[CHUNK:]
        if mv:
            self._buf += mv
        return n

    def flush(self) -> None:
        """Send buffered bytes (they are acknowledged later)."""
        self._usable()
        if self._buf:
            buf, self._buf = self._buf, bytearray()
            self._send_data(buf)

    def truncate(self, size: int) -> None:
        """Only 0 (start over) or the current offset: containerd cannot cut elsewhere."""
        self._usable()
        if size == self.offset:
            return
        if size != 0:
            raise UnsupportedError(f"{self._what}: containerd ingests truncate only to 0")
        self._buf = bytearray()
        self._sent = 0
        # A WRITE at offset 0 over existing data makes containerd truncate the ingest.
        self._send(encode_write(0, b""), 0)
        self._drain()

    def digest(self) -> Digest:
        """containerd's digest of everything written so far (flushes and waits)."""
        self.flush()
        self._drain()
        return Digest.parse(self._digest)

    def commit(
        self, size: int, expected: Digest, labels: Mapping[str, str] | None = None
    ) -> ContentInfo:
        self._usable()
        buf, self._buf = self._buf, bytearray()
        req = self._pb.WriteContentRequest(
            action=self._pb.COMMIT,
            total=size,
            offset=self._sent,
            expected=str(expected),
            labels=dict(labels or {}),
            data=bytes(buf),
        )
        self._sent += len(buf)
        self._send(req.SerializeToString(), self._sent)
        try:
            self._drain()
            self._finish_stream()
        except CargoholdError as e:
            if _is_mismatch(e):
                self._discard()
                raise DigestMismatchError(f"{self._what}: {e.message}") from None
            raise
        if size and self._sent != size:
            raise DigestMismatchError(f"{self._what}: committed {self._sent} bytes, not {size}")
        if self._digest and self._digest != str(expected):
            raise DigestMismatchError(f"{self._what}: committed {self._digest}, not {expected}")
        try:
            return self._store.info(expected)
        except NotFoundError:  # collected already (no lease); report what was committed
            now = datetime.now(UTC)
            return ContentInfo(expected, size or self._sent, now, now, dict(labels or {}))

    def ingest_digest(self) -> Digest:
        """containerd's digest of the ingest's bytes as of the last answer (no flush)."""
        return Digest.parse(self._digest)

    def abandon(self) -> None:
        """Cancel the stream without flushing (containerd releases the ref)."""
        if not self._done:
            self._fail()

    def _discard(self) -> None:
        with suppress(NotFoundError):
            self._store.abort(self._ref)

    def close(self) -> None:
        """Flush, end the stream and wait until containerd has released the ingest."""
        if self._done:
            return
        try:
            self.flush()
            self._drain()
        except BaseException:
            self._fail()
            raise
        self._finish_stream()

    def __del__(self) -> None:
        # Forgotten without close: cancel the stream so containerd releases the ref.
        if not getattr(self, "_done", True):
            self._fail()

    def _close_failed(self) -> None:
        self._fail()


__all__ = [
    "CHUNK",
    "WINDOW",
    "ContainerdContentStore",
    "ContainerdContentWriter",
    "encode_write",
]
