"""Media types of OCI and Docker images, and what each one is. Pure: no I/O."""

from __future__ import annotations

from cargohold.errors import UnsupportedError

# OCI
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Docker schema 2
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # seen in the wild

# Docker schema 1: recognised so it can be refused clearly.
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})

#: Layer media type -> compression ("gzip", "zstd" or "none").
LAYERS: dict[str, str] = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: "none",
    OCI_LAYER_ND_GZIP: "gzip",
    OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
    DOCKER_LAYER: "none",
}
NON_DISTRIBUTABLE = frozenset(
    {OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN_GZIP}
)

#: Every manifest-like type a registry may answer with (the Accept header).
MANIFEST_ACCEPT: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)


def is_index(media_type: str) -> bool:
    return media_type in INDEXES


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFESTS


def is_config(media_type: str) -> bool:
    return media_type in CONFIGS


def is_layer(media_type: str) -> bool:
    return media_type in LAYERS


def is_distributable(media_type: str) -> bool:
    return media_type not in NON_DISTRIBUTABLE


def layer_compression(media_type: str) -> str:
    """'gzip', 'zstd' or 'none' for a layer type; UnsupportedError otherwise."""
    try:
        return LAYERS[media_type]
    except KeyError:
        raise UnsupportedError(f"unsupported layer media type {media_type!r}") from None


def kind(media_type: str) -> str:
    """A short word for progress output: index, manifest, config, layer or blob."""
    if is_index(media_type):
        return "index"
    if is_manifest(media_type):
        return "manifest"
    if is_config(media_type):
        return "config"
    if is_layer(media_type):
        return "layer"
    return "blob"


def refuse_unsupported_manifest(media_type: str, what: str = "manifest") -> None:
    """Raise a clear UnsupportedError for schema1 and unknown manifest types."""
    if media_type in SCHEMA1:
        raise UnsupportedError(
            f"{what} is Docker image manifest schema 1 ({media_type}), which is deprecated "
            "and not supported"
        )
    if media_type not in INDEXES and media_type not in MANIFESTS:
        raise UnsupportedError(f"{what} has unsupported media type {media_type!r}")
