"""``export``: images of a store written as an OCI image layout (a directory or a tar stream).

Each image is one entry of ``index.json``: its recorded root (exact digest, index or
manifest), named with ``io.containerd.image.name`` (the record's name) and
``org.opencontainers.image.ref.name`` (its tag, else the name), as ``ctr images export``
writes. Of an index only the selected platforms' manifests, configs and layers are written
(the index blob itself is kept whole, so the digest stays exact). A blob shared by several
images is written once. Blobs are copied from the content store in 1 MiB reads; a tar is
written as a stream (``.tar``, ``.tar.gz``, ``.tar.zst``) to ``PATH.partial`` and renamed
when complete, a directory gets each blob by rename and ``index.json`` last.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cargohold.archive.files import CHUNK
from cargohold.archive.formats import ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME
from cargohold.errors import InvalidInputError, NotFoundError, OutOfSpaceError
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.manifest import (
    Index,
    Manifest,
    parse_manifest_or_index,
    select_manifests,
)
from cargohold.oci.reference import parse_reference
from cargohold.store.interfaces import ContentStore

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass
class ExportPlan:
    entries: list[Descriptor] = field(default_factory=list)
    blobs: dict[str, Descriptor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(d.size for d in self.blobs.values())

    def index_json(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [d.to_json() for d in self.entries],
        }
        return json.dumps(doc, indent=2).encode()


def _read(content: ContentStore, desc: Descriptor, name: str) -> bytes:
    try:
        with content.reader(desc.digest) as r:
            data = r.read(desc.size + 1)
    except NotFoundError:
        raise NotFoundError(
            f"{name}: blob {desc.digest} is not in the store",
            hint="fetch the image first (or pass --fetch)",
        ) from None
    return data


def _need(content: ContentStore, desc: Descriptor, name: str) -> None:
    try:
        info = content.info(desc.digest)
    except NotFoundError:
        raise NotFoundError(
            f"{name}: {mediatypes.kind(desc.media_type)} {desc.digest} is not in the store",
            hint="fetch the image first (or pass --fetch)",
        ) from None
    if info.size != desc.size:
        raise NotFoundError(f"{name}: blob {desc.digest} in the store has the wrong size")


def ref_name(name: str) -> str:
    """``org.opencontainers.image.ref.name`` of a record: its tag, as ctr writes."""
    try:
        ref = parse_reference(name)
    except InvalidInputError:
        return name
    return ref.tag if ref.tag is not None and ref.digest is None else name


def plan_export(
    content: ContentStore,
    images: Sequence[tuple[str, Descriptor]],
    *,
    platforms: Sequence[Platform],
    all_platforms: bool = False,
) -> ExportPlan:
    """What to write for the named image records (NotFoundError if something is missing)."""
    plan = ExportPlan()
    for name, root in images:
        mediatypes.refuse_unsupported_manifest(root.media_type, f"{name} ({root.digest})")
        _need(content, root, name)
        parsed = parse_manifest_or_index(_read(content, root, name), root.media_type)
        plan.blobs.setdefault(str(root.digest), root)
        manifests: list[tuple[Descriptor, Manifest]] = []
        if isinstance(parsed, Index):
            chosen = select_manifests(parsed, platforms, all_platforms)
            if not chosen:
                wanted = ", ".join(str(p) for p in platforms) or "any"
                raise NotFoundError(f"{name}: no manifest for platform {wanted}")
            for d in chosen:
                _need(content, d, name)
                m = parse_manifest_or_index(_read(content, d, name), d.media_type)
                if not isinstance(m, Manifest):
                    raise InvalidInputError(f"{name}: nested index {d.digest}")
                manifests.append((d, m))
        else:
            manifests.append((root, parsed))
        for d, m in manifests:
            plan.blobs.setdefault(str(d.digest), d)
            for c in m.children():
                if not mediatypes.is_distributable(c.media_type):
                    continue
                _need(content, c, name)
                plan.blobs.setdefault(str(c.digest), c)
        plan.entries.append(Descriptor(
            root.media_type, root.digest, root.size,
            annotations={ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: ref_name(name)},
        ))
    return plan


def output_kind(path: Path) -> str:
    n = path.name
    if n.endswith((".tar.gz", ".tgz")):
        return "gzip"
    if n.endswith((".tar.zst", ".tzst")):
        return "zstd"
    if n.endswith(".tar"):
        return "tar"
    return "dir"


def write_layout(path: Path, content: ContentStore, plan: ExportPlan) -> None:
    """Write ``plan`` to ``path`` (a directory, or a tar stream by its suffix)."""
    try:
        if output_kind(path) == "dir":
            _write_dir(path, content, plan)
        else:
            _write_tar(path, content, plan)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpaceError(f"{path}: no space left writing the export") from None
        raise InvalidInputError(f"{path}: cannot write: {e.strerror or e}") from None


def _write_dir(path: Path, content: ContentStore, plan: ExportPlan) -> None:
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    for d in plan.blobs.values():
        target = path / "blobs" / d.digest.algorithm / d.digest.hex
        if target.is_file() and target.stat().st_size == d.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{d.digest.hex}.partial")
        with open(tmp, "wb") as out, content.reader(d.digest) as r:
            _copy(r, out, d.size)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    _atomic(path / "oci-layout", OCI_LAYOUT)
    _atomic(path / "index.json", plan.index_json())


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _copy(r: IO[bytes], out: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        chunk = r.read(min(CHUNK, left))
        if not chunk:
            raise NotFoundError("a blob in the store is shorter than recorded; run verify")
        out.write(chunk)
        left -= len(chunk)


@contextmanager
def _compressed(raw: IO[bytes], kind: str) -> Iterator[IO[bytes]]:
    if kind == "gzip":
        from isal import igzip

        with igzip.IGzipFile(fileobj=raw, mode="wb", compresslevel=1) as g:  # type: ignore[no-untyped-call]
            yield g  # type: ignore[misc]
    elif kind == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as z:
            yield z
    else:
        yield raw


def _info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.mode = 0o755 if directory else 0o644
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mtime = 0
    return ti


def _write_tar(path: Path, content: ContentStore, plan: ExportPlan) -> None:
    tmp = path.with_name(f"{path.name}.partial")
    try:
        with open(tmp, "wb") as raw:
            with _compressed(raw, output_kind(path)) as stream, \
                    tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                tf.addfile(_info("oci-layout", len(OCI_LAYOUT)), io.BytesIO(OCI_LAYOUT))
                index = plan.index_json()
                tf.addfile(_info("index.json", len(index)), io.BytesIO(index))
                tf.addfile(_info("blobs", 0, directory=True))
                for alg in sorted({d.digest.algorithm for d in plan.blobs.values()}):
                    tf.addfile(_info(f"blobs/{alg}", 0, directory=True))
                for d in plan.blobs.values():
                    with content.reader(d.digest) as r:
                        tf.addfile(_info(f"blobs/{d.digest.algorithm}/{d.digest.hex}", d.size),
                                   _Exact(r, d.size))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Exact:
    """Exactly ``size`` bytes of a blob for tarfile (a short blob is an error, not padding)."""

    def __init__(self, r: IO[bytes], size: int) -> None:
        self._r = r
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._r.read(n)
        if len(data) < n:
            raise NotFoundError("a blob in the store is shorter than recorded; run verify")
        self._left -= len(data)
        return data


def export_summary(plan: ExportPlan) -> dict[str, Any]:
    return {"images": [d.annotations[ANNOTATION_CONTAINERD_NAME] for d in plan.entries],
            "blobs": len(plan.blobs), "bytes": plan.size}
