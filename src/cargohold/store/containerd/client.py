"""A connection to containerd's gRPC API: channel, namespace and lease headers, error mapping.

Every call carries ``containerd-namespace`` and, while :data:`active_lease` is set in the
calling context, ``containerd-lease`` -- containerd attaches new content, ingests and
snapshots to that lease, which keeps them from its garbage collector. gRPC failures come
out as cargohold errors (:func:`map_rpc_error`), never as ``grpc.RpcError``.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc  # type: ignore[import-untyped]

from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    ConflictError,
    IngestLockedError,
    InterruptedError_,
    InvalidInputError,
    NotFoundError,
    OutOfSpaceError,
    UnavailableError,
    UnsupportedError,
)
from cargohold.filekind import file_kind
from cargohold.interrupts import call_held, held, wait_future
from cargohold.store.containerd import api as api_mod
from cargohold.store.interfaces import active_lease

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

#: Largest message either side accepts (containerd's own default is 16 MiB).
MAX_MESSAGE = 64 << 20

#: The exception type gRPC raises (for modules that drive streams themselves).
RpcError: type[Exception] = grpc.RpcError


@dataclass(frozen=True)
class ServerVersion:
    version: str
    revision: str


def grpc_target(address: str) -> str:
    """``/run/containerd/containerd.sock`` -> ``unix:///run/containerd/containerd.sock``."""
    if address.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return address
    return "unix://" + os.path.abspath(address)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_timestamp(ts: Any) -> datetime | None:
    """A google.protobuf.Timestamp as an aware UTC datetime; None when unset (zero)."""
    seconds = int(ts.seconds)
    nanos = int(ts.nanos)
    if seconds == 0 and nanos == 0:
        return None
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def unreachable_cause(address: str) -> tuple[str, str] | None:
    """Why the unix socket ``address`` cannot be connected to, in words, and a hint: the
    path is missing, is not a socket, nobody listens on it, or it may not be opened.
    None when it is no unix socket path or a connection succeeds now."""
    if address.startswith(("unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return None
    path = address.removeprefix("unix://") if address.startswith("unix://") else (
        address.removeprefix("unix:"))
    start = (f"start containerd (systemctl start containerd), or fix --address "
             f"(CARGOHOLD_ADDRESS) if its socket is not {path}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such socket (the path does not exist)", start
    except OSError as e:
        return f"cannot look at the socket: {e.strerror or e}", start
    if not stat.S_ISSOCK(st.st_mode):
        fix = (f"fix --address (CARGOHOLD_ADDRESS): {path} is no socket; containerd's is "
               f"usually {DEFAULT_ADDRESS}")
        return f"not a socket ({file_kind(st.st_mode)})", fix
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            return ("connection refused: nothing listens on the socket (containerd stopped "
                    "or crashed and left it behind)"), start
        except PermissionError:
            return "permission denied on the socket", f"run as root ({path} usually needs it)"
        except OSError as e:
            return f"cannot connect: {e.strerror or e}", start
    return None


def map_rpc_error(err: Exception, *, what: str = "", address: str = "") -> CargoholdError:
    """Translate a ``grpc.RpcError`` from containerd into the cargohold error tree."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    # (a call's code and details take its condition: see ContainerdClient.call)
    code = call_held(code_fn) if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = str(call_held(details_fn) if callable(details_fn) else err) or str(code)
    msg = f"{what}: {details}" if what else details
    sock = address or "the containerd socket"
    if "no space left on device" in details:
        return OutOfSpaceError(msg)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(msg)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(msg)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
        return ConflictError(msg)
    if code == grpc.StatusCode.UNAVAILABLE:
        if " locked" in details:
            # containerd's content store: "ref <ref> locked for ...: unavailable".
            return IngestLockedError(msg)
        cause = unreachable_cause(address) if address else None
        if cause is not None:
            return UnavailableError(
                f"containerd at {address} is unavailable" + (f" ({what})" if what else "")
                + f": {cause[0]}",
                hint=cause[1],
            )
        return UnavailableError(
            f"containerd at {sock} is unavailable: {details}" + (f" ({what})" if what else ""),
            hint=f"is containerd running and listening on {sock}? (systemctl status "
            "containerd; --address / CARGOHOLD_ADDRESS select the socket; it usually needs root)",
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(msg, hint=f"containerd at {sock} did not answer in time")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidInputError(msg)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return UnsupportedError(
            msg, hint="this containerd lacks the API or plugin (cargohold needs containerd >= 1.6)"
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        # Not a bug (exit 1): a daemon we may not use, as when its socket refuses us.
        return UnavailableError(msg, hint=f"no permission to use {sock}; run as root")
    if code == grpc.StatusCode.CANCELLED:
        return InterruptedError_(msg)
    return CargoholdError(f"{msg} (containerd: {code.name})")


class ContainerdClient:
    """One gRPC channel to containerd plus the service stubs, in one namespace.

    Thread-safe (the channel is); the lease header is taken from the calling context.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        timeout: float | None = 300.0,
    ) -> None:
        if not namespace:
            raise InvalidInputError("containerd namespace must not be empty")
        self.address = address
        self.namespace = namespace
        #: Deadline of unary calls in seconds (streams have none).
        self.timeout = timeout
        self.api: api_mod.Api = api_mod.load()
        self.channel: Any = grpc.insecure_channel(
            grpc_target(address),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                # the authority of a unix target is its path; containerd does not care
                ("grpc.default_authority", "localhost"),
            ],
        )
        a = self.api
        self.content_stub: Any = a.content_grpc.ContentStub(self.channel)
        self.images_stub: Any = a.images_grpc.ImagesStub(self.channel)
        self.leases_stub: Any = a.leases_grpc.LeasesStub(self.channel)
        self.snapshots_stub: Any = a.snapshots_grpc.SnapshotsStub(self.channel)
        self.diff_stub: Any = a.diff_grpc.DiffStub(self.channel)
        self.namespaces_stub: Any = a.namespaces_grpc.NamespacesStub(self.channel)
        self.version_stub: Any = a.version_grpc.VersionStub(self.channel)
        self.introspection_stub: Any = a.introspection_grpc.IntrospectionStub(self.channel)
        self._closed = False

    # ------------------------------------------------------------ plumbing

    def metadata(self) -> list[tuple[str, str]]:
        """Headers for a call made now: namespace, and the active lease if any."""
        md = [(NAMESPACE_HEADER, self.namespace)]
        lease = active_lease.get()
        if lease:
            md.append((LEASE_HEADER, lease))
        return md

    def error(self, err: Exception, what: str = "") -> CargoholdError:
        return map_rpc_error(err, what=what, address=self.address)

    def call(self, method: Callable[..., Any], request: Any, *, what: str = "") -> Any:
        """A unary call with headers and deadline; errors mapped. In the main thread it is
        started as a future and polled (:func:`cargohold.interrupts.wait_future`; Ctrl-C /
        SIGTERM cancel it and are raised once it ended): a blocking call takes gRPC's
        conditions with signals deliverable, and an interrupt landing inside one leaves it
        held for good -- every other thread's call on the channel then hangs."""
        md = self.metadata()
        try:
            future = getattr(method, "future", None)
            if future is not None and threading.current_thread() is threading.main_thread():
                with held():  # starts the call (and gRPC's thread): no wait
                    fut = future(request, metadata=md, timeout=self.timeout)
                try:
                    return wait_future(fut, fut.cancel)
                finally:
                    with held():
                        del fut  # its __del__ takes its condition too
            return method(request, metadata=md, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self.error(e, what) from None

    def stream(self, method: Callable[..., Any], request: Any, *, what: str = "") -> Iterator[Any]:
        """A server-streaming call; headers are taken now, responses iterated lazily.

        Closing the returned generator early cancels the call. Started with signals held
        (it takes gRPC's conditions, without waiting), as its cancel is.
        """
        try:
            with held():
                responses = method(request, metadata=self.metadata())
        except grpc.RpcError as e:
            raise self.error(e, what) from None
        return self._iterate(responses, what)

    def _iterate(self, responses: Any, what: str) -> Iterator[Any]:
        try:
            yield from responses
        except grpc.RpcError as e:
            raise self.error(e, what) from None
        finally:
            call_held(responses.cancel)

    # ------------------------------------------------------------ services

    def version(self) -> ServerVersion:
        """containerd's version; the cheapest way to check the socket answers."""
        resp = self.call(self.version_stub.Version, self.api.empty_pb2.Empty(), what="version")
        return ServerVersion(str(resp.version), str(resp.revision))

    def plugin_exports(self, plugin_type: str, plugin_id: str) -> dict[str, str]:
        """What a plugin exports through introspection (e.g. ``root``: its directory); empty
        when it is not loaded or the call fails."""
        try:
            resp = self.call(self.introspection_stub.Plugins,
                             self.api.introspection.PluginsRequest(filters=[]), what="plugins")
        except CargoholdError:
            return {}
        for p in resp.plugins:
            if (str(p.type), str(p.id)) == (plugin_type, plugin_id):
                return {str(k): str(v) for k, v in p.exports.items()}
        return {}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.channel.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
