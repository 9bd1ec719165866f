"""The kubelet's view of images: CRI ``runtime.v1.ImageService`` on containerd's socket.

Where the API definition comes from. Debian (bookworm) ships neither k8s.io/cri-api's
``api.proto`` (no ``golang-k8s-cri-api-dev``; ``golang-github-containerd-containerd-dev``
has containerd's own protos only) nor cri-tools (``crictl``). The containerd binary that
serves CRI carries it, though: Debian builds containerd with the CRI plugin and its vendored
k8s.io/cri-api, whose gogo-generated Go code registers each ``.proto`` as a gzipped
``FileDescriptorProto`` in the binary's data (``proto.RegisterFile("api.proto", ...)``).
:func:`load` scans the binary for gzip streams (Go's header: no name, no mtime), keeps the
one that parses as the ``runtime.v1`` file with an ``ImageService``, drops its Go-only
gogoproto options and import, and builds the message classes in a private descriptor pool;
:class:`ImageService` makes the calls with grpc's generic unary stubs. So the API is exactly
the one of the containerd under test, nothing is copied into the repository and nothing is
generated on disk (the scan takes well under a second, so there is no cache either).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PACKAGE = "runtime.v1"
SERVICE = "ImageService"
#: The only import of cri-api's api.proto; it carries Go code generation options only.
GOGO_PROTO = "github.com/gogo/protobuf/gogoproto/gogo.proto"
#: What Go's compress/gzip writes first when no name and no mtime are set.
_GO_GZIP_HEADER = re.compile(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00")
_MAX_COMPRESSED = 1 << 20
_MAX_DESCRIPTOR = 8 << 20


class CriApiUnavailable(Exception):
    """The binary carries no ``runtime.v1`` descriptor (containerd built without CRI?)."""


def _descriptors(binary: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    data = binary.read_bytes()
    found = []
    for m in _GO_GZIP_HEADER.finditer(data):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(data[m.start() : m.start() + _MAX_COMPRESSED], _MAX_DESCRIPTOR)
        except zlib.error:
            continue
        if not d.eof:
            continue
        try:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except DecodeError:
            continue
        if fd.package == PACKAGE and any(s.name == SERVICE for s in fd.service):
            found.append(fd)
    return found


def _strip_options(msg: descriptor_pb2.DescriptorProto) -> None:
    map_entry = msg.options.map_entry
    msg.ClearField("options")
    if map_entry:
        msg.options.map_entry = True
    for f in msg.field:
        f.ClearField("options")
    for e in msg.enum_type:
        e.ClearField("options")
        for v in e.value:
            v.ClearField("options")
    for nested in msg.nested_type:
        _strip_options(nested)


def _clean(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto.FromString(fd.SerializeToString())
    others = [d for d in fd.dependency if d != GOGO_PROTO]
    if others:
        raise CriApiUnavailable(f"cri-api's api.proto imports {others}; expected only gogo.proto")
    del fd.dependency[:]
    del fd.weak_dependency[:]
    del fd.public_dependency[:]
    fd.ClearField("options")
    for msg in fd.message_type:
        _strip_options(msg)
    for e in fd.enum_type:
        e.ClearField("options")
        for v in e.value:
            v.ClearField("options")
    for s in fd.service:
        s.ClearField("options")
        for meth in s.method:
            meth.ClearField("options")
    return fd


@dataclass(frozen=True)
class CriApi:
    binary: Path
    pool: descriptor_pool.DescriptorPool
    file: Any  # google.protobuf.descriptor.FileDescriptor

    def message(self, name: str) -> Any:
        """The message class ``runtime.v1.<name>``."""
        desc = self.pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        return message_factory.GetMessageClass(desc)


@cache
def load(binary: str) -> CriApi:
    """The CRI ``runtime.v1`` API as compiled into ``binary`` (a containerd executable)."""
    path = Path(binary)
    found = _descriptors(path)
    if not found:
        raise CriApiUnavailable(
            f"{path} carries no {PACKAGE} API descriptor (is containerd built with its CRI "
            "plugin?)"
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_clean(found[0]))
    return CriApi(path, pool, pool.FindFileByName(found[0].name))


class ImageService:
    """``runtime.v1.ImageService`` over a containerd socket (what kubelet talks to)."""

    def __init__(self, api: CriApi, address: str, *, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        target = address if address.startswith("unix:") else "unix://" + address
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", "localhost")]
        )
        self._service = api.file.services_by_name[SERVICE]

    def call(self, method: str, request: Any) -> Any:
        m = self._service.methods_by_name[method]
        out = message_factory.GetMessageClass(m.output_type)
        stub = self.channel.unary_unary(
            f"/{PACKAGE}.{SERVICE}/{method}",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=out.FromString,
        )
        return stub(request, timeout=self.timeout)

    def spec(self, image: str) -> Any:
        return self.api.message("ImageSpec")(image=image)

    def list_images(self) -> list[Any]:
        return list(self.call("ListImages", self.api.message("ListImagesRequest")()).images)

    def image_status(self, image: str) -> Any | None:
        """The image kubelet would find for ``image`` (tag, digest ref or ID); None if none."""
        req = self.api.message("ImageStatusRequest")(image=self.spec(image))
        resp = self.call("ImageStatus", req)
        return resp.image if resp.HasField("image") else None

    def pull_image(self, image: str) -> str:
        """``PullImage`` as kubelet calls it when a pod needs ``image``; the image ID."""
        req = self.api.message("PullImageRequest")(image=self.spec(image))
        return str(self.call("PullImage", req).image_ref)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ImageService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
