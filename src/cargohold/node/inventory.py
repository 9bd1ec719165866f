"""What a node's store holds, per image: its tier, its labels, its bytes and its users.

An *image* here is every record that names the same target (CRI writes three records for one
pull: ``repo:tag``, ``repo@digest`` and ``sha256:<config>``); removing one of them frees
nothing, so status, evict and metrics reason about the group.

* **tier**: ``unpacked`` when the top layer chain of one of its platforms' configs is a
  committed snapshot; ``partial`` when chains of its own (no other image has them) are
  committed but no top one (an unpack or a demotion cut short), or some of its content is
  missing; ``fetched`` when the content is complete and nothing of its own is unpacked (a
  base layer it shares with an unpacked image does not count); ``absent`` for a name asked
  for that no record has.
* **users**: the active snapshots and views whose parent is one of its chains (a container's
  root file system: ``ctr run`` and CRI key it by the container ID; the embedded store by
  ``containers/<name>``; an unpack in progress by ``extract-*``), and the snapshots an unpack
  in progress will commit as one of its chains (``containerd.io/snapshot.ref``: overlay
  layers are prepared without a parent). An image with users is in
  use: evict never touches it.
* **bytes**: content (blob files) and snapshots (the snapshotter's usage of each committed
  chain), exclusive to the image or shared with another; totals count everything once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import CargoholdError
from cargohold.images.content import image_contents, present_configs
from cargohold.labels import LABEL_SNAPSHOT_REF
from cargohold.leasing import EXTRACT_PREFIX
from cargohold.node.labels import image_critical, image_pinned, image_priority
from cargohold.oci.chainid import layer_chains
from cargohold.oci.reference import lookup_by_name
from cargohold.store.interfaces import KIND_COMMITTED, Image, SnapshotInfo, Snapshotter, Store

__all__ = ["TIERS", "ImageState", "Inventory", "take_inventory"]

TIERS = ("unpacked", "partial", "fetched", "absent")

#: The prefix of the embedded store's container snapshots (``containers/<name>``).
_CONTAINER_PREFIX = "containers/"


@dataclass
class ImageState:
    """One image (the records sharing a target) as the node sees it."""

    names: list[str]
    digest: str
    tier: str
    critical: bool = False
    pinned: bool = False
    priority: float = 1.0
    platforms: list[str] = field(default_factory=list)
    #: Chain IDs per platform config, bottom first (present or not).
    stacks: list[list[str]] = field(default_factory=list)
    #: The committed chains among them (bottom first, each once).
    chains: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    content_bytes: int = 0
    content_exclusive: int = 0
    snapshot_bytes: int = 0
    snapshot_exclusive: int = 0
    #: Keys of the active snapshots / views on its chains (containers, unpacks in progress).
    users: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The name to show: a tag if there is one, else the first record's name."""
        for n in self.names:
            if "@" not in n and not n.startswith("sha256:"):
                return n
        return self.names[0] if self.names else self.digest

    @property
    def content_shared(self) -> int:
        return self.content_bytes - self.content_exclusive

    @property
    def snapshot_shared(self) -> int:
        return self.snapshot_bytes - self.snapshot_exclusive

    @property
    def containers(self) -> list[str]:
        """The users that are containers (not unpacks in progress)."""
        out = []
        for key in self.users:
            if key.startswith(EXTRACT_PREFIX):
                continue
            out.append(key.removeprefix(_CONTAINER_PREFIX))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "names": list(self.names),
            "digest": self.digest,
            "tier": self.tier,
            "critical": self.critical,
            "pinned": self.pinned,
            "priority": self.priority,
            "platforms": list(self.platforms),
            "chains": len(self.chains),
            "content_bytes": self.content_bytes,
            "content_exclusive_bytes": self.content_exclusive,
            "content_shared_bytes": self.content_shared,
            "snapshot_bytes": self.snapshot_bytes,
            "snapshot_exclusive_bytes": self.snapshot_exclusive,
            "snapshot_shared_bytes": self.snapshot_shared,
            "containers": self.containers,
            "users": list(self.users),
            "problems": list(self.problems),
        }


@dataclass
class Inventory:
    images: list[ImageState]
    #: Every committed blob, once / every snapshot's usage (committed, active, views), once.
    content_bytes: int
    snapshot_bytes: int
    #: Usage of each committed chain, and which images have it.
    chain_sizes: dict[str, int]
    chain_users: dict[str, list[str]]
    #: Chains in use: the parents of active snapshots and views (and their ancestors), and
    #: the chains below a layer an unpack in progress will commit.
    busy_chains: set[str]

    def tiers(self) -> dict[str, int]:
        out = dict.fromkeys(TIERS, 0)
        for img in self.images:
            out[img.tier] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "images": [i.to_json() for i in self.images],
            "totals": {
                "images": len(self.images),
                "tiers": self.tiers(),
                "content_bytes": self.content_bytes,
                "snapshot_bytes": self.snapshot_bytes,
                "total_bytes": self.content_bytes + self.snapshot_bytes,
            },
        }


def _group(records: Iterable[Image]) -> list[list[Image]]:
    by_target: dict[str, list[Image]] = {}
    for r in sorted(records, key=lambda i: i.name):
        by_target.setdefault(str(r.target.digest), []).append(r)
    return list(by_target.values())


def _labels(group: Sequence[Image]) -> dict[str, str]:
    """The union of the group's labels (the first record that sets one wins)."""
    out: dict[str, str] = {}
    for r in group:
        for k, v in r.labels.items():
            out.setdefault(k, v)
    return out


def _usage(snapshots: Snapshotter, key: str) -> int:
    try:
        return int(snapshots.usage(key).size)
    except CargoholdError:  # removed meanwhile
        return 0


@dataclass
class _SnapshotFacts:
    #: Usage of each committed snapshot, and its parent.
    sizes: dict[str, int] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)
    #: parent chain -> keys of the active snapshots and views on it.
    users: dict[str, list[str]] = field(default_factory=dict)
    #: chain an unpack in progress will commit -> its active snapshot keys (the label
    #: containerd's unpacker and cargohold's put on them; overlay layers are prepared with no
    #: parent, so the label is the only tie to the image).
    pending: dict[str, list[str]] = field(default_factory=dict)
    active_bytes: int = 0


def _snapshot_facts(snapshots: Snapshotter | None) -> _SnapshotFacts:
    out = _SnapshotFacts()
    if snapshots is None:
        return out
    infos: list[SnapshotInfo] = list(snapshots.walk())
    for info in infos:
        if info.kind == KIND_COMMITTED:
            out.parents[info.name] = info.parent
            out.sizes[info.name] = _usage(snapshots, info.name)
            continue
        out.active_bytes += _usage(snapshots, info.name)
        if info.parent:
            out.users.setdefault(info.parent, []).append(info.name)
        target = info.labels.get(LABEL_SNAPSHOT_REF)
        if target:
            out.pending.setdefault(target, []).append(info.name)
    return out


def _ancestors(chain: str, parents: dict[str, str]) -> list[str]:
    out = []
    seen: set[str] = set()
    while chain and chain not in seen:
        seen.add(chain)
        out.append(chain)
        chain = parents.get(chain, "")
    return out


def take_inventory(store: Store, snapshots: Snapshotter | None = None) -> Inventory:
    """Every image of ``store`` (records grouped by target) with its tier, labels, bytes and
    users; ``snapshots``: the snapshotter to look at (None: nothing is unpacked)."""
    content = store.content
    files = {str(info.digest): info.size for info in content.walk()}
    facts = _snapshot_facts(snapshots)
    sizes, active = facts.sizes, facts.users
    busy: set[str] = set()
    for parent in active:
        busy.update(_ancestors(parent, facts.parents))

    images: list[ImageState] = []
    blob_users: dict[str, int] = {}
    chain_users: dict[str, list[str]] = {}
    for group in _group(store.images.list()):
        labels = _labels(group)
        target = group[0].target
        st = ImageState(
            names=[r.name for r in group],
            digest=str(target.digest),
            tier="fetched",
            critical=image_critical(labels),
            pinned=image_pinned(labels),
            priority=image_priority(labels),
        )
        try:
            contents = image_contents(content, target)
        except CargoholdError as e:
            st.tier = "partial"
            st.problems.append(str(e))
            images.append(st)
            continue
        st.platforms = list(contents.platforms)
        st.problems = list(contents.problems)
        st.blobs = [str(d.digest) for d, present in contents.blobs
                    if present and str(d.digest) in files]
        for m, cfg in present_configs(content, contents):
            st.stacks.append([str(c) for c, _ in layer_chains(cfg, m)])
        for stack in st.stacks:
            for c in stack:
                if c in sizes and c not in st.chains:
                    st.chains.append(c)
        for key_parent, keys in active.items():
            if key_parent in st.chains:
                st.users.extend(k for k in keys if k not in st.users)
        for stack in st.stacks:  # an unpack in progress needs every chain below its layer
            for i, c in enumerate(stack):
                if c in facts.pending:
                    st.users.extend(k for k in facts.pending[c] if k not in st.users)
                    busy.update(stack[:i + 1])
        for b in st.blobs:
            blob_users[b] = blob_users.get(b, 0) + 1
        for c in st.chains:
            chain_users.setdefault(c, []).append(st.digest)
        images.append(st)

    for st in images:
        own = [c for c in st.chains if len(chain_users[c]) == 1]
        st.tier = _tier(st, own)
        st.content_bytes = sum(files[b] for b in st.blobs)
        st.content_exclusive = sum(files[b] for b in st.blobs if blob_users[b] == 1)
        st.snapshot_bytes = sum(sizes[c] for c in st.chains)
        st.snapshot_exclusive = sum(sizes[c] for c in st.chains if len(chain_users[c]) == 1)
    return Inventory(
        images=sorted(images, key=lambda i: i.name),
        content_bytes=sum(files.values()),
        snapshot_bytes=sum(sizes.values()) + facts.active_bytes,
        chain_sizes=sizes,
        chain_users=chain_users,
        busy_chains=busy,
    )


def _tier(st: ImageState, own_chains: Sequence[str]) -> str:
    """unpacked (a top chain committed); partial (content missing, or chains of its own
    committed below a missing top: a demotion or unpack cut short); else fetched (chains it
    shares with other images do not make it partial)."""
    if any(stack and stack[-1] in st.chains for stack in st.stacks):
        return "unpacked"
    if own_chains or st.problems or not st.stacks:
        return "partial"
    return "fetched"


def select(inv: Inventory, refs: Sequence[str]) -> list[ImageState]:
    """The images named by ``refs`` (as given or normalised); a name no record has is an
    ``absent`` row."""
    by_name: dict[str, ImageState] = {}
    for img in inv.images:
        for n in img.names:
            by_name[n] = img
    out: list[ImageState] = []
    for r in refs:
        img = lookup_by_name(by_name, r) or ImageState(names=[r], digest="", tier="absent")
        if img not in out:
            out.append(img)
    return out
