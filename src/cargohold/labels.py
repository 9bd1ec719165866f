"""Every label and private option name cargohold writes or reads, in one place.

Three vocabularies meet on a node's records: containerd's (its garbage collector's roots and
edges, the unpacker's bookkeeping), CRI's (what kubelet reads on an image record) and
cargohold's own (``io.cargohold.*`` on records, ``cargohold.*`` on its leases, ``x-cargohold.*``
mount options between the snapshotter and the applier). The strings are wire formats shared
with containerd and kubelet: change none of them. This module imports nothing, so every layer
(store, unpack, pull, node, cli) may use it.
"""

from __future__ import annotations

# ---------------------------------------------------------------- containerd's gc

#: Content (or a snapshot) labelled with this is a root on its own.
LABEL_GC_ROOT = "containerd.io/gc.root"
#: A lease label: RFC 3339 time after which the lease no longer protects anything.
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
#: A lease label: the lease protects only what is attached directly, not what it references.
LABEL_GC_FLAT = "containerd.io/gc.flat"
#: Content label prefixes the collector follows (``<prefix>[.<anything>] = <digest>``,
#: ``<prefix>.<snapshotter>[/<anything>] = <key>``); the embedded gc follows the same.
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"

# ---------------------------------------------------------------- containerd's unpacker

#: On a layer blob: its diff ID (the digest of the uncompressed tar).
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
#: ``<prefix>.<registry host>`` on a blob = the repository it was fetched from.
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
#: On an active extract snapshot: the chain ID it will be committed as.
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"


def snapshot_gc_label(snapshotter: str) -> str:
    """The config blob label that keeps an image's top snapshot (and its parents)."""
    return f"{GC_REF_SNAPSHOT}.{snapshotter}"


# ---------------------------------------------------------------- CRI (kubelet)

#: On the records CRI writes on pull (``repo@digest``, ``sha256:<config>``), value MANAGED.
LABEL_CRI_MANAGED = "io.cri-containerd.image"
MANAGED = "managed"
#: CRI's pin: kubelet's image GC leaves an image with this label alone (containerd >= 1.7.3,
#: kubelet >= 1.28), value PINNED.
LABEL_CRI_PINNED = "io.cri-containerd.pinned"
PINNED = "pinned"

# ---------------------------------------------------------------- cargohold's records

#: The spec's ``priority`` (a float >= 0) and ``critical`` (``true``), written by ``bake``.
LABEL_PRIORITY = "io.cargohold.priority"
LABEL_CRITICAL = "io.cargohold.critical"
#: Image label holding the target descriptor fields containerd 1.6 has no place for.
LABEL_TARGET_EXTRA = "io.cargohold.target"
#: On a container's snapshot: the container's name.
LABEL_CONTAINER = "io.cargohold.container"
#: On a scratch namespace (calibrate, bench): what it was made for.
LABEL_SCRATCH = "io.cargohold.scratch"

# ---------------------------------------------------------------- cargohold's leases

#: What a lease is for (``fetch``, ``unpack``, ``import``, ``verify-repair``, ...).
LABEL_PURPOSE = "cargohold.purpose"
#: The process owning a lease (see ``cargohold.leasing``).
LABEL_OWNER_PID = "cargohold.owner/pid"
LABEL_OWNER_START = "cargohold.owner/start"
LABEL_OWNER_BOOT = "cargohold.owner/boot"
LABEL_OWNER_HOST = "cargohold.owner/host"
LABEL_OWNER_PIDNS = "cargohold.owner/pidns"

# ---------------------------------------------------------------- snapshotter -> applier

#: Mount option on the bind mount of an overlay-backend layer without parent: apply
#: whiteouts as overlayfs whiteouts (the directory will be an overlay layer), not by deleting.
WHITEOUT_OVERLAY_OPTION = "x-cargohold.whiteout=overlay"
#: Mount option prefix, ``<prefix><path>``: where the applier records the directories a layer
#: created implicitly (NUL-separated paths), for the snapshotter to give them their parents'
#: metadata at commit.
IMPLICIT_DIRS_OPTION = "x-cargohold.implicit-dirs="
