"""The pure OCI model: digests, descriptors, media types, references, platforms,
manifests, indexes, image configs and chain IDs. Nothing here does file or network I/O
(``host_platform`` only reads the machine name).
"""

from cargohold.oci import mediatypes
from cargohold.oci.chainid import chain_id, chain_ids
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest, Verifier
from cargohold.oci.manifest import (
    MAX_MANIFEST_SIZE,
    ImageConfig,
    Index,
    Manifest,
    check_config,
    children,
    is_attestation,
    parse_config,
    parse_manifest_or_index,
    select_manifests,
)
from cargohold.oci.platform import (
    host_platform,
    matches,
    parse_platform,
    parse_platforms,
    rank,
)
from cargohold.oci.platform import normalize as normalize_platform
from cargohold.oci.platform import select as select_platforms
from cargohold.oci.reference import Reference, parse_reference

__all__ = [
    "MAX_MANIFEST_SIZE",
    "Descriptor",
    "Digest",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "Verifier",
    "chain_id",
    "chain_ids",
    "check_config",
    "children",
    "host_platform",
    "is_attestation",
    "matches",
    "mediatypes",
    "normalize_platform",
    "parse_config",
    "parse_manifest_or_index",
    "parse_platform",
    "parse_platforms",
    "parse_reference",
    "rank",
    "select_manifests",
    "select_platforms",
]
