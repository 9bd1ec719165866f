"""Chain IDs of layer stacks (OCI image spec, "Layer ChainID"). Pure: no I/O.

``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0|...|Ln) = sha256(ChainID(L0|...|Ln-1) + " "
+ DiffID(Ln))``, hashing the text form of both digests. containerd names unpacked
snapshots by chain ID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cargohold.errors import InvalidInputError
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import ImageConfig, Manifest

__all__ = ["chain_id", "chain_ids"]


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The chain ID of every prefix of ``diff_ids``: one per layer, bottom first."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
            continue
        text = f"{out[-1]} {diff_id}".encode()
        out.append(Digest("sha256", hashlib.sha256(text).hexdigest()))
    return out


def chain_id(diff_ids: Sequence[Digest]) -> Digest:
    """The chain ID of the whole stack; InvalidInputError for an empty one."""
    if not diff_ids:
        raise InvalidInputError("the chain ID of an empty layer stack is undefined")
    return chain_ids(diff_ids)[-1]


def layer_chains(config: ImageConfig, manifest: Manifest) -> list[tuple[Digest, Descriptor]]:
    """``(chain ID, layer descriptor)`` of every layer, bottom first (as many as both the
    config's diff_ids and the manifest's layers have)."""
    return list(zip(chain_ids(config.diff_ids), manifest.layers, strict=False))
