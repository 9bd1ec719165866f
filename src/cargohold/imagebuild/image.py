"""Assemble OCI / Docker schema2 images and indexes from layer specs, as blob files.

Blobs are written content-addressed to ``workdir/blobs/sha256/<hex>`` (equal layers
dedupe); JSON documents are canonical (sorted keys, no spaces, UTF-8), so the same
inputs always give the same digests. Each layer is produced in one streaming pass:
tar writer -> sha256 (the diff_id) -> compressor -> sha256 (the blob digest) -> file;
the uncompressed tar is never stored or held in memory.

Deliberately broken images for fault tests come from the small ``tamper_*``
functions at the end, each returning a new :class:`BuiltImage`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cargohold.errors import InvalidInputError, NotFoundError
from cargohold.imagebuild.compress import (
    EMPTY_GZIP_LAYER,
    Compression,
    CompressWriter,
    GzipEngine,
    open_decompressed,
    sniff_compression,
)
from cargohold.imagebuild.entries import Entry
from cargohold.imagebuild.tarwriter import TarFormat, Writable, write_tar
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest

Media = Literal["oci", "docker"]
MEDIAS: tuple[str, ...] = ("oci", "docker")
EPOCH = "1970-01-01T00:00:00Z"

_LAYER_TYPES: dict[tuple[str, str], str] = {
    ("oci", "none"): mt.OCI_LAYER,
    ("oci", "gzip"): mt.OCI_LAYER_GZIP,
    ("oci", "zstd"): mt.OCI_LAYER_ZSTD,
    ("docker", "none"): mt.DOCKER_LAYER,
    ("docker", "gzip"): mt.DOCKER_LAYER_GZIP,
    ("docker", "zstd"): mt.OCI_LAYER_ZSTD,  # what docker itself writes for zstd layers
}


def layer_media_type(media: Media, compression: Compression) -> str:
    try:
        return _LAYER_TYPES[(media, compression)]
    except KeyError:
        raise InvalidInputError(f"no layer media type for {media}/{compression}") from None


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for configs, manifests and indexes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_media(media: str) -> None:
    if media not in MEDIAS:
        raise InvalidInputError(f"unknown media {media!r} (expected 'oci' or 'docker')")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class LayerSpec:
    """A layer to build from entries.

    ``entries`` may be a callable returning a fresh iterable, so that a spec built
    from a generator (e.g. :func:`entries_from_directory`) can be built more than once.
    ``media`` None follows the image; ``media_type`` overrides the layer type outright
    (e.g. a non-distributable type). ``frame_size`` splits the compressed stream into
    frames / gzip members of that many tar bytes.
    """

    entries: Iterable[Entry] | Callable[[], Iterable[Entry]]
    compression: Compression = "gzip"
    media: Media | None = None
    tar_format: TarFormat = "pax"
    level: int | None = None
    frame_size: int | None = None
    media_type: str | None = None
    created_by: str = ""
    gzip_engine: GzipEngine = "isal"

    def iter_entries(self) -> Iterable[Entry]:
        e = self.entries
        return e() if callable(e) else e


@dataclass(frozen=True)
class RawLayer:
    """A pre-made layer blob. ``compression`` None sniffs it from the magic bytes;
    ``diff_id`` None computes it by decompressing (not verified when given)."""

    path: Path
    compression: Compression | None = None
    media_type: str | None = None
    diff_id: Digest | None = None
    created_by: str = ""


Layer = LayerSpec | RawLayer | Path


@dataclass(frozen=True)
class ImageSpec:
    """Everything :func:`build_image` needs, as one value (what samples return)."""

    layers: Sequence[Layer]
    name: str = ""
    media: Media = "oci"
    platform: Platform = field(default_factory=lambda: Platform("linux", "amd64"))
    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    env: Mapping[str, str] | Sequence[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] | None = None
    created: str = EPOCH
    annotations: Mapping[str, str] | None = None

    def build(self, workdir: Path) -> BuiltImage:
        return build_image(
            self.layers,
            workdir=workdir,
            media=self.media,
            platform=self.platform,
            entrypoint=self.entrypoint,
            cmd=self.cmd,
            env=self.env,
            working_dir=self.working_dir,
            user=self.user,
            labels=self.labels,
            created=self.created,
            annotations=self.annotations,
            name=self.name,
        )


# --------------------------------------------------------------------------- blob files


def blob_path(workdir: Path, digest: Digest | str) -> Path:
    d = Digest.parse(digest) if isinstance(digest, str) else digest
    return Path(workdir) / "blobs" / d.algorithm / d.hex


class _HashCount:
    """Writable that hashes and counts what passes through to ``out``."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def digest(self) -> Digest:
        return Digest("sha256", self.hash.hexdigest())


class _Batch:
    """Coalesces small writes (tar headers, small files) into ~1 MiB pieces."""

    LIMIT = 1 << 20

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.buf = bytearray()

    def write(self, data: bytes, /) -> int:
        n = len(data)
        if n >= self.LIMIT // 4:
            self.flush()
            self.out.write(data)
        else:
            self.buf += data
            if len(self.buf) >= self.LIMIT:
                self.flush()
        return n

    def flush(self) -> None:
        if self.buf:
            self.out.write(bytes(self.buf))
            self.buf.clear()


def _store(workdir: Path, write: Callable[[Writable], None]) -> tuple[Digest, int]:
    """Run ``write`` into a temp file in workdir, then move it to its digest's path."""
    tmpdir = Path(workdir) / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmpname = tempfile.mkstemp(dir=tmpdir, prefix="blob-")
    try:
        with os.fdopen(fd, "wb") as f:
            hc = _HashCount(f)
            write(hc)
        dest = blob_path(workdir, hc.digest())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmpname, dest)
    except BaseException:
        Path(tmpname).unlink(missing_ok=True)
        raise
    return hc.digest(), hc.size


def put_blob(workdir: Path, data: bytes) -> tuple[Digest, int]:
    """Store ``data`` as a blob of ``workdir``; returns (digest, size)."""
    digest = Digest.from_bytes(data)
    dest = blob_path(workdir, digest)
    if not dest.exists():
        _store(workdir, lambda w: w.write(data))
    return digest, len(data)


def _build_layer(spec: LayerSpec, workdir: Path) -> tuple[Digest, int, Digest]:
    """Write one layer blob; returns (blob digest, blob size, diff_id)."""
    tar_hash: list[Digest] = []

    def write(out: Writable) -> None:
        comp = CompressWriter(
            out,
            spec.compression,
            level=spec.level,
            frame_size=spec.frame_size,
            gzip_engine=spec.gzip_engine,
        )
        tee = _HashCount(comp)
        batch = _Batch(tee)
        write_tar(spec.iter_entries(), batch, format=spec.tar_format)
        batch.flush()
        comp.close()
        tar_hash.append(tee.digest())

    digest, size = _store(workdir, write)
    return digest, size, tar_hash[0]


def _import_layer(raw: RawLayer, workdir: Path) -> tuple[Digest, int, Digest, Compression]:
    src = Path(raw.path)
    with open(src, "rb") as f:
        head = f.read(8)
    compression = raw.compression or sniff_compression(head)

    def write(out: Writable) -> None:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)

    digest, size = _store(workdir, write)
    diff_id = raw.diff_id
    if diff_id is None:
        diff = hashlib.sha256()
        with open_decompressed(src, compression) as tar:
            while chunk := tar.read(1 << 20):
                diff.update(chunk)
        diff_id = Digest("sha256", diff.hexdigest())
    return digest, size, diff_id, compression


# --------------------------------------------------------------------------- built images


_PUSH_RANK = {"layer": 0, "blob": 0, "config": 1, "manifest": 2, "index": 3}


def _push_rank(media_type: str) -> int:
    if media_type in mt.SCHEMA1:
        return 2
    return _PUSH_RANK[mt.kind(media_type)]


@dataclass(frozen=True)
class BuiltImage:
    """A built image (``root`` is a manifest) or index (``root`` is an index).

    ``layer_descriptors``, ``config_descriptor`` and ``diff_ids`` are what the
    manifest and config say (tampered images may lie); ``manifests`` are the children
    of an index. Blobs are files under ``workdir``; children may live elsewhere.
    """

    workdir: Path
    root: Descriptor
    platform: Platform | None = None
    config_descriptor: Descriptor | None = None
    layer_descriptors: tuple[Descriptor, ...] = ()
    diff_ids: tuple[Digest, ...] = ()
    manifests: tuple[BuiltImage, ...] = ()
    omitted: frozenset[Digest] = frozenset()
    name: str = ""

    @property
    def digest(self) -> Digest:
        return self.root.digest

    @property
    def media_type(self) -> str:
        return self.root.media_type

    @property
    def is_index(self) -> bool:
        return mt.is_index(self.root.media_type)

    def path(self, digest: Digest | str) -> Path:
        """Where the blob is (own workdir first, then the children's); may not exist."""
        own = blob_path(self.workdir, digest)
        if own.exists():
            return own
        for child in self.manifests:
            p = child.path(digest)
            if p.exists():
                return p
        return own

    def has(self, digest: Digest | str) -> bool:
        return self.path(digest).exists()

    def open(self, digest: Digest | str) -> BinaryIO:
        p = self.path(digest)
        if not p.exists():
            raise NotFoundError(f"blob {digest} is not in {self.workdir}")
        return open(p, "rb")

    def read(self, digest: Digest | str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def json(self, digest: Digest | str | None = None) -> Any:
        """A JSON blob parsed (default: the root manifest or index)."""
        return json.loads(self.read(self.root.digest if digest is None else digest))

    def config_json(self) -> Any:
        if self.config_descriptor is None:
            raise NotFoundError("this image has no config (an index or schema1 manifest)")
        return self.json(self.config_descriptor.digest)

    def _referenced(self) -> Iterator[Descriptor]:
        for child in self.manifests:
            yield from child._referenced()
        yield from self.layer_descriptors
        if self.config_descriptor is not None:
            yield self.config_descriptor
        yield self.root

    def blobs_in_push_order(self) -> list[Descriptor]:
        """Every blob to push, each after all blobs it references: layers, configs,
        manifests, then indexes. Descriptors carry the blob's real size; blobs that
        do not exist here or were omitted (see :func:`tamper_omit_blob`) are left out."""
        seen: set[Digest] = set()
        out: list[Descriptor] = []
        omitted = self._all_omitted()
        for d in self._referenced():
            if d.digest in seen or d.digest in omitted:
                continue
            p = self.path(d.digest)
            if not p.exists():
                continue
            seen.add(d.digest)
            out.append(Descriptor(d.media_type, d.digest, p.stat().st_size))
        out.sort(key=lambda d: _push_rank(d.media_type))
        return out

    def _all_omitted(self) -> frozenset[Digest]:
        acc = set(self.omitted)
        for child in self.manifests:
            acc |= child._all_omitted()
        return frozenset(acc)

    def total_size(self) -> int:
        """Bytes of all blobs to push."""
        return sum(d.size for d in self.blobs_in_push_order())

    def image_for(self, platform: Platform) -> BuiltImage:
        """The child built for ``platform`` (an index), or self (a manifest)."""
        if not self.is_index:
            return self
        for child in self.manifests:
            if child.platform == platform:
                return child
        raise NotFoundError(f"no image for {platform} in this index")


# --------------------------------------------------------------------------- building


def _env_list(env: Mapping[str, str] | Sequence[str] | None) -> list[str] | None:
    if env is None:
        return None
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    return list(env)


def build_image(
    layers: Sequence[Layer],
    *,
    workdir: Path,
    media: Media = "oci",
    platform: Platform | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Mapping[str, str] | Sequence[str] | None = None,
    working_dir: str = "",
    user: str = "",
    labels: Mapping[str, str] | None = None,
    created: str = EPOCH,
    annotations: Mapping[str, str] | None = None,
    name: str = "",
) -> BuiltImage:
    """Build layers, config and manifest (OCI image manifest or Docker schema2) into
    ``workdir/blobs``. Layers are LayerSpecs, RawLayers or paths of pre-made blobs."""
    _check_media(media)
    plat = platform if platform is not None else Platform("linux", "amd64")
    workdir = Path(workdir)
    layer_descs: list[Descriptor] = []
    diff_ids: list[Digest] = []
    history: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Path):
            layer = RawLayer(layer)
        if isinstance(layer, LayerSpec):
            if layer.media is not None:
                _check_media(layer.media)
            digest, size, diff_id = _build_layer(layer, workdir)
            media_type = layer.media_type or layer_media_type(
                layer.media or media, layer.compression
            )
            created_by = layer.created_by or f"cargohold imagebuild layer {i}"
        else:
            digest, size, diff_id, compression = _import_layer(layer, workdir)
            media_type = layer.media_type or layer_media_type(media, compression)
            created_by = layer.created_by or f"cargohold imagebuild layer {i}"
        layer_descs.append(Descriptor(media_type, digest, size))
        diff_ids.append(diff_id)
        history.append({"created": created, "created_by": created_by})

    run: dict[str, Any] = {}
    env_list = _env_list(env)
    if env_list is not None:
        run["Env"] = env_list
    if entrypoint is not None:
        run["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        run["Cmd"] = list(cmd)
    if working_dir:
        run["WorkingDir"] = working_dir
    if user:
        run["User"] = user
    if labels:
        run["Labels"] = dict(labels)
    config: dict[str, Any] = plat.to_json()
    config.update(
        {
            "created": created,
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
            "history": history,
        }
    )
    cfg_type = mt.OCI_CONFIG if media == "oci" else mt.DOCKER_CONFIG
    cfg_digest, cfg_size = put_blob(workdir, canonical_json(config))
    cfg_desc = Descriptor(cfg_type, cfg_digest, cfg_size)

    man_type = mt.OCI_MANIFEST if media == "oci" else mt.DOCKER_MANIFEST
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": man_type,
        "config": cfg_desc.to_json(),
        "layers": [d.to_json() for d in layer_descs],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    man_digest, man_size = put_blob(workdir, canonical_json(manifest))
    return BuiltImage(
        workdir=workdir,
        root=Descriptor(man_type, man_digest, man_size),
        platform=plat,
        config_descriptor=cfg_desc,
        layer_descriptors=tuple(layer_descs),
        diff_ids=tuple(diff_ids),
        name=name,
    )


def build_index(
    images: Sequence[BuiltImage],
    *,
    workdir: Path,
    media: Media = "oci",
    annotations: Mapping[str, str] | None = None,
    name: str = "",
) -> BuiltImage:
    """An OCI image index or Docker manifest list over ``images``, one entry each, with
    each image's platform (indexes nested as entries have none)."""
    _check_media(media)
    if not images:
        raise InvalidInputError("an index needs at least one image")
    entries: list[Descriptor] = []
    for img in images:
        plat = None if img.is_index else img.platform
        entries.append(
            Descriptor(img.root.media_type, img.root.digest, img.root.size, platform=plat)
        )
    idx_type = mt.OCI_INDEX if media == "oci" else mt.DOCKER_MANIFEST_LIST
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": idx_type,
        "manifests": [d.to_json() for d in entries],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    workdir = Path(workdir)
    digest, size = put_blob(workdir, canonical_json(index))
    return BuiltImage(
        workdir=workdir,
        root=Descriptor(idx_type, digest, size),
        manifests=tuple(images),
        name=name,
    )


# --------------------------------------------------------------------------- broken images


def _reparse(obj: Any, key: str) -> Descriptor | None:
    try:
        return Descriptor.from_json(obj.get(key)) if isinstance(obj, dict) else None
    except InvalidInputError:
        return None


def tamper_manifest(
    img: BuiltImage,
    mutate: Callable[[dict[str, Any]], Any],
    *,
    media_type: str | None = None,
) -> BuiltImage:
    """Rewrite the root manifest/index JSON with ``mutate`` (edits in place, or returns
    a replacement object or raw ``bytes``); the root descriptor gets ``media_type`` if
    given. Layer/config descriptors are re-read from the result where they parse."""
    doc = copy.deepcopy(img.json())
    result = mutate(doc)
    body = (
        result if isinstance(result, bytes) else canonical_json(doc if result is None else result)
    )
    digest, size = put_blob(img.workdir, body)
    new_root = Descriptor(
        media_type or img.root.media_type, digest, size, platform=img.root.platform
    )
    obj = doc if result is None else result
    layers = img.layer_descriptors
    config = img.config_descriptor
    if isinstance(obj, dict) and isinstance(obj.get("layers"), list):
        parsed = [_reparse({"d": d}, "d") for d in obj["layers"]]
        layers = tuple(d for d in parsed if d is not None)
    if isinstance(obj, dict) and "config" in obj:
        config = _reparse(obj, "config") or config
    return replace(img, root=new_root, layer_descriptors=layers, config_descriptor=config)


def tamper_layer_size(img: BuiltImage, index: int = 0, delta: int = 1) -> BuiltImage:
    """The manifest claims layer ``index`` is ``delta`` bytes bigger than it is."""

    def mutate(doc: dict[str, Any]) -> None:
        doc["layers"][index]["size"] += delta

    return tamper_manifest(img, mutate)


def tamper_layer_digest(
    img: BuiltImage,
    index: int = 0,
    *,
    content: bytes | None = None,
    digest: Digest | None = None,
) -> BuiltImage:
    """Point layer ``index`` of the manifest at other bytes.

    With ``content`` (default: the well-known empty gzip layer) that blob is stored and
    pushed, so it downloads fine but its diff_id differs from the config's. With
    ``digest`` only, the descriptor names a blob this image does not have (not pushed).
    """
    if digest is None:
        data = EMPTY_GZIP_LAYER if content is None else content
        digest, size = put_blob(img.workdir, data)
    else:
        size = img.layer_descriptors[index].size

    def mutate(doc: dict[str, Any]) -> None:
        doc["layers"][index]["digest"] = str(digest)
        doc["layers"][index]["size"] = size

    return tamper_manifest(img, mutate)


def tamper_config(img: BuiltImage, mutate: Callable[[dict[str, Any]], Any]) -> BuiltImage:
    """Rewrite the config JSON with ``mutate`` and the manifest to reference the result."""
    cfg = copy.deepcopy(img.config_json())
    result = mutate(cfg)
    obj = cfg if result is None else result
    body = result if isinstance(result, bytes) else canonical_json(obj)
    digest, size = put_blob(img.workdir, body)
    assert img.config_descriptor is not None
    new_cfg = Descriptor(img.config_descriptor.media_type, digest, size)

    def set_config(doc: dict[str, Any]) -> None:
        doc["config"] = new_cfg.to_json()

    out = tamper_manifest(img, set_config)
    diff_ids = img.diff_ids
    if isinstance(obj, dict):
        with contextlib.suppress(KeyError, TypeError, InvalidInputError):
            diff_ids = tuple(Digest.parse(d) for d in obj["rootfs"]["diff_ids"])
    return replace(out, config_descriptor=new_cfg, diff_ids=diff_ids)


def tamper_diff_ids(
    img: BuiltImage,
    *,
    drop: int = 0,
    add: int = 0,
    replace_at: Mapping[int, Digest] | None = None,
) -> BuiltImage:
    """Config diff_ids that disagree with the layers: ``drop`` removes the last ones,
    ``add`` appends made-up ones, ``replace_at`` swaps single entries."""

    def mutate(cfg: dict[str, Any]) -> None:
        ids: list[str] = cfg["rootfs"]["diff_ids"]
        for i, d in (replace_at or {}).items():
            ids[i] = str(d)
        if drop:
            del ids[len(ids) - drop :]
        for i in range(add):
            ids.append(str(Digest.from_bytes(b"cargohold-fake-diff-id-%d" % i)))

    return tamper_config(img, mutate)


def tamper_omit_blob(img: BuiltImage, digest: Digest | str) -> BuiltImage:
    """The same image, but ``digest`` is left out of :meth:`BuiltImage.blobs_in_push_order`
    (so the registry will not have a blob the manifest references)."""
    d = Digest.parse(digest) if isinstance(digest, str) else digest
    return replace(img, omitted=img.omitted | {d})


def schema1_manifest(
    workdir: Path,
    *,
    name: str = "library/sample",
    tag: str = "latest",
    signed: bool = False,
    architecture: str = "amd64",
) -> BuiltImage:
    """A Docker schema1 manifest body (one empty gzip layer), to be refused by readers.

    ``signed`` labels it ``...v1+prettyjws`` with a (bogus) signatures block.
    """
    workdir = Path(workdir)
    layer_digest, layer_size = put_blob(workdir, EMPTY_GZIP_LAYER)
    v1 = {
        "id": hashlib.sha256(name.encode()).hexdigest(),
        "architecture": architecture,
        "os": "linux",
        "created": EPOCH,
    }
    doc: dict[str, Any] = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": str(layer_digest)}],
        "history": [{"v1Compatibility": canonical_json(v1).decode()}],
    }
    if signed:
        doc["signatures"] = [
            {"header": {"alg": "ES256"}, "signature": "bm90LWEtc2lnbmF0dXJl", "protected": "e30"}
        ]
    media_type = mt.DOCKER_SCHEMA1_SIGNED if signed else mt.DOCKER_SCHEMA1
    digest, size = put_blob(workdir, json.dumps(doc, indent=3).encode())
    return BuiltImage(
        workdir=workdir,
        root=Descriptor(media_type, digest, size),
        layer_descriptors=(Descriptor(mt.DOCKER_LAYER_GZIP, layer_digest, layer_size),),
        name=name,
    )
