"""Unpacking layers into snapshots: decompress, apply (the differ), and the glue around them.

* :mod:`.decompress` -- ``open_decompressed(blob, media_type)``: the uncompressed tar stream.
* :mod:`.apply` -- ``apply_layer(tar, target, mode=..., diff_id=...)``: the tar onto a dir,
  built from :mod:`.tarstream` (the hashed tar reader), :mod:`.layerwriter` (the entries
  written), :mod:`.confined` (paths kept inside the target) and :mod:`.copyup` (whiteouts
  and lower-layer directory metadata).
* :mod:`.applier` -- ``EmbeddedApplier``: the ``Applier`` protocol over snapshot mounts.

This module adds the small piece every caller needs: :func:`unpack_layer` (prepare, apply,
commit; remove on failure). Committed layer snapshots are named by chain ID
(:func:`cargohold.oci.chainid.chain_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import BinaryIO

from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import Applier, Snapshotter


def unpack_layer(
    snapshotter: Snapshotter,
    applier: Applier,
    desc: Descriptor,
    *,
    reader: BinaryIO,
    diff_id: Digest,
    name: str,
    parent: str = "",
    key: str | None = None,
    labels: Mapping[str, str] | None = None,
    standalone: bool = False,
) -> Descriptor:
    """Prepare a snapshot, apply ``desc`` onto it and commit it as ``name``.

    ``standalone``: prepare without a parent and give it ``parent`` only at commit (the
    parallel path; needs ``snapshotter.standalone_layers``).  On any failure the partial
    snapshot is removed and the error re-raised.  Returns the uncompressed layer's
    descriptor.
    """
    key = key or f"extract-{name}"
    mounts = snapshotter.prepare(key, "" if standalone else parent)
    try:
        out = applier.apply(desc, mounts, reader=reader, diff_id=diff_id)
        snapshotter.commit(name, key, labels=labels, parent=parent if standalone else None)
    except BaseException:
        with suppress(Exception):  # the original error matters more
            snapshotter.remove(key)
        raise
    return out


__all__ = ["unpack_layer"]
