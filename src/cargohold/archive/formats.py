"""What images an archive holds: OCI image layouts and docker-archives, read from its files.

* OCI image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``): ``skopeo copy
  oci:`` / ``oci-archive:``, ``ctr images export``, ``crane pull --format oci``, ``cargohold
  export``, and Docker 25+'s ``docker save`` (which adds a ``manifest.json``).
* docker-archive, the legacy ``docker save`` format (``manifest.json`` listing each image's
  config file, ``RepoTags`` and layer tars; ``repositories``): there is no manifest in the
  archive, so one is built, as containerd's importer does: Docker schema 2 with the layers'
  media types from their magic bytes (plain ``...diff.tar``, gzip ``...diff.tar.gzip``; zstd
  layers make it an OCI manifest) and, for an uncompressed layer, its digest equal to the
  config's diff ID (checked when the layer is committed, like any digest).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cargohold.archive.files import CHUNK, ArchiveFiles, StreamFiles, read_small
from cargohold.errors import (
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
)
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import Manifest, parse_config, parse_manifest_or_index

ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class ArchiveImage:
    """One image of an archive: its root (index or manifest) and the names it carries."""

    root: Descriptor
    #: Full references (``io.containerd.image.name``, a full ``ref.name``, ``RepoTags``).
    names: list[str] = field(default_factory=list)
    #: Bare tags (``org.opencontainers.image.ref.name`` as skopeo's ``oci:DIR:tag`` writes).
    tags: list[str] = field(default_factory=list)


@dataclass
class Archive:
    """An opened archive: its files, its images, and where each blob is among the files."""

    files: ArchiveFiles
    kind: str  # "oci" | "docker"
    images: list[ArchiveImage]
    #: digest -> file name, for blobs not at ``blobs/<alg>/<hex>`` (legacy docker files).
    paths: dict[str, str] = field(default_factory=dict)
    #: Manifests built for a legacy docker-archive (they are in no file).
    built: dict[str, bytes] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.files.where

    def blob_file(self, digest: Digest) -> str | None:
        """The file of blob ``digest`` in this archive, None if it has none."""
        name = self.paths.get(str(digest))
        if name is not None:
            return name
        name = f"blobs/{digest.algorithm}/{digest.hex}"
        return name if self.files.exists(name) else None

    def has_blob(self, digest: Digest) -> bool:
        return str(digest) in self.built or self.blob_file(digest) is not None


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{where}: not valid JSON ({e})") from None


def read_archive(files: ArchiveFiles) -> Archive:
    """The images of an archive (OCI layout, Docker 25+ or legacy docker-archive)."""
    if files.exists("index.json"):
        return _read_oci(files)
    if files.exists("manifest.json"):
        return _read_docker(files)
    raise InvalidInputError(
        f"{files.where}: not an OCI image layout or docker-archive (no index.json and no "
        "manifest.json)",
        hint="pass an OCI layout, a docker-archive or a directory of them",
    )


# --------------------------------------------------------------------------- OCI


def _read_oci(files: ArchiveFiles) -> Archive:
    where = f"{files.where}: index.json"
    doc = _json(read_small(files, "index.json"), where)
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise InvalidInputError(f"{where}: expected an object with a 'manifests' list")
    archive = Archive(files, "oci", [])
    for i, obj in enumerate(doc["manifests"]):
        desc = Descriptor.from_json(obj, f"{where}: manifests[{i}]")
        mediatypes.refuse_unsupported_manifest(desc.media_type, f"{where}: manifests[{i}]")
        img = ArchiveImage(desc)
        full = desc.annotations.get(ANNOTATION_CONTAINERD_NAME)
        if full:
            img.names.append(full)
        ref_name = desc.annotations.get(ANNOTATION_REF_NAME)
        if ref_name:
            if any(c in ref_name for c in "/:@"):
                img.names.append(ref_name)
            else:
                img.tags.append(ref_name)
        archive.images.append(img)
    if files.exists("manifest.json"):
        _docker25_names(archive)
    return archive


def _docker25_names(archive: Archive) -> None:
    """Docker 25+: images whose index entry has no full name take manifest.json's RepoTags
    (matched by config digest)."""
    entries = _docker_entries(archive.files)
    tags_by_config: dict[str, list[str]] = {}
    for e in entries:
        cfg = e["Config"].rsplit("/", 1)[-1].removesuffix(".json")
        tags_by_config.setdefault(f"sha256:{cfg}", []).extend(e["RepoTags"])
    for img in archive.images:
        if img.names or not mediatypes.is_manifest(img.root.media_type):
            continue
        name = archive.blob_file(img.root.digest)
        if name is None:
            continue
        m = parse_manifest_or_index(read_small(archive.files, name), img.root.media_type)
        if isinstance(m, Manifest):
            img.names.extend(tags_by_config.get(str(m.config.digest), []))


# --------------------------------------------------------------------------- docker


def _docker_entries(files: ArchiveFiles) -> list[dict[str, Any]]:
    where = f"{files.where}: manifest.json"
    doc = _json(read_small(files, "manifest.json"), where)
    if not isinstance(doc, list):
        raise InvalidInputError(f"{where}: expected a list")
    out: list[dict[str, Any]] = []
    for i, e in enumerate(doc):
        w = f"{where}[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str):
            raise InvalidInputError(f"{w}: 'Config' is required")
        layers = e.get("Layers") or []
        tags = e.get("RepoTags") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidInputError(f"{w}: 'Layers' must be a list of file names")
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            raise InvalidInputError(f"{w}: 'RepoTags' must be a list of names")
        out.append({"Config": e["Config"], "Layers": layers, "RepoTags": tags})
    return out


def _read_docker(files: ArchiveFiles) -> Archive:
    archive = Archive(files, "docker", [])
    for i, e in enumerate(_docker_entries(files)):
        where = f"{files.where}: manifest.json[{i}]"
        root = _build_manifest(archive, e, where)
        archive.images.append(ArchiveImage(root, names=list(e["RepoTags"])))
    return archive


def _build_manifest(archive: Archive, entry: dict[str, Any], where: str) -> Descriptor:
    files = archive.files
    cfg_name = entry["Config"]
    if not files.exists(cfg_name):
        raise NotFoundError(f"{where}: config {cfg_name} is not in the archive")
    cfg_bytes = read_small(files, cfg_name)
    cfg_digest = Digest.from_bytes(cfg_bytes)
    config = parse_config(cfg_bytes)
    if len(config.diff_ids) != len(entry["Layers"]):
        raise InvalidInputError(
            f"{where}: {len(entry['Layers'])} layers, but the config has "
            f"{len(config.diff_ids)} diff IDs"
        )
    archive.paths[str(cfg_digest)] = cfg_name
    layers: list[Descriptor] = []
    kinds: list[str] = []
    for name, diff_id in zip(entry["Layers"], config.diff_ids, strict=True):
        if not files.exists(name):
            raise NotFoundError(f"{where}: layer {name} is not in the archive")
        size = files.size(name)
        kind, digest = _layer_digest(files, name)
        if kind == "none":
            if digest is not None and digest != diff_id:
                raise DigestMismatchError(
                    f"{where}: layer {name} has digest {digest}, its diff ID is {diff_id}"
                )
            digest = diff_id
        assert digest is not None
        archive.paths[str(digest)] = name
        kinds.append(kind)
        layers.append(Descriptor("", digest, size))
    oci = "zstd" in kinds
    layer_types = (
        {"none": mediatypes.OCI_LAYER, "gzip": mediatypes.OCI_LAYER_GZIP,
         "zstd": mediatypes.OCI_LAYER_ZSTD}
        if oci else
        {"none": mediatypes.DOCKER_LAYER, "gzip": mediatypes.DOCKER_LAYER_GZIP}
    )
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST if oci else mediatypes.DOCKER_MANIFEST,
        "config": {
            "mediaType": mediatypes.OCI_CONFIG if oci else mediatypes.DOCKER_CONFIG,
            "digest": str(cfg_digest),
            "size": len(cfg_bytes),
        },
        "layers": [
            {"mediaType": layer_types[k], "digest": str(d.digest), "size": d.size}
            for k, d in zip(kinds, layers, strict=True)
        ],
    }
    data = json.dumps(doc, indent=3).encode()
    digest = Digest.from_bytes(data)
    archive.built[str(digest)] = data
    return Descriptor(str(doc["mediaType"]), digest, len(data))


def _layer_digest(files: ArchiveFiles, name: str) -> tuple[str, Digest | None]:
    """A legacy layer file's compression, and its digest when it had to be (or was) hashed."""
    staged = files.staged_digest(name) if isinstance(files, StreamFiles) else None
    with files.open(name) as f:
        head = f.read(4)
        kind = "gzip" if head.startswith(b"\x1f\x8b") else (
            "zstd" if head.startswith(b"\x28\xb5\x2f\xfd") else "none")
        if staged is not None or kind == "none":
            return kind, staged
        h = hashlib.sha256(head)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return kind, Digest("sha256", h.hexdigest())
