"""Check that what image records reference is really there, byte for byte; optionally mend it.

:func:`verify` walks every image record (or those named), from its target through the
index's manifests present in the store, their configs and layers, and re-hashes every blob
it reaches (streaming, 1 MiB at a time, through ``content.reader``), each blob once even when
several images share it. Problems (:class:`Problem`, ``kind``):

* ``missing``   - a referenced blob is not in the store (an index's manifests that were never
  fetched are not problems: other platforms are usually not fetched);
* ``truncated`` - the blob file is shorter than its descriptor says;
* ``corrupt``   - the blob is longer than its descriptor, or its bytes hash to another digest;
* ``incomplete`` - one per image that has any of the above (or that
  :func:`~cargohold.images.content.image_contents` finds incomplete), naming its platforms;
* ``snapshot_missing`` - the config blob carries ``containerd.io/gc.ref.snapshot.<name>``
  (the image was unpacked) but the snapshotter has no committed snapshot of that chain ID;
* ``snapshot_unreferenced`` - the image is unpacked (the top chain ID of its config's
  diff_ids is a committed snapshot) but its config blob lacks that label, or the label
  names another chain: the next gc would delete the image's snapshots. Both snapshot checks
  run only when the store has a snapshotter (``store.snapshots``) or one is passed, and
  look at that snapshotter's label only.

``trusted``: digests whose bytes this process has just had verified on commit (``bake``
passes the blobs its fetch downloaded: every ingest is hashed against its expected digest
before it is committed -- by the embedded store, by containerd, or by cargohold's direct
writer before it links a blob into containerd's store); their size is checked but
they are not read again. Every other blob is re-hashed, ``jobs`` at a time (hashlib hashes
outside the GIL; on containerd the blob files are read directly when its root is on this
machine, see ``ContainerdContentStore.reader``).

Repair (``repair_with`` a :class:`~cargohold.pull.fetch.Fetcher`): corrupt and truncated blobs are
deleted, then every damaged image is fetched again by its record name (the record's
reference; records whose name is not a reference, e.g. CRI's ``sha256:<config>`` records,
are mended through another record of the same target) for the platforms it had (this
host's when they cannot be known any more), and checked again. Every label of a deleted
blob (``containerd.io/gc.ref.snapshot.*`` of a config, ``containerd.io/uncompressed`` of a
layer, ...) is put back on the blob fetched again; meanwhile a lease holds the snapshots
those labels reference (containerd's collector runs in between). An unreferenced snapshot
gets its label back. A problem whose image checks clean afterwards is returned with
``repaired=True``. Missing snapshots are not re-created (unpacking is not verify's
business): they stay unrepaired.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from cargohold.errors import CargoholdError, NotFoundError
from cargohold.images.content import check_blob, image_contents
from cargohold.images.walk import image_graph
from cargohold.interrupts import held, shutdown, wait_future
from cargohold.labels import GC_REF_SNAPSHOT, snapshot_gc_label
from cargohold.leasing import leased
from cargohold.oci import mediatypes
from cargohold.oci.chainid import chain_ids
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import parse_config
from cargohold.oci.platform import host_platform, parse_platform
from cargohold.oci.reference import Reference, lookup_by_name, parse_reference
from cargohold.store.interfaces import (
    ContentStore,
    Image,
    ImageStore,
    LeaseResource,
    Snapshotter,
    Store,
)
from cargohold.unpack.resolve import is_committed

__all__ = [
    "BLOB_KINDS",
    "REPAIRABLE_KINDS",
    "Problem",
    "count_problems",
    "select_images",
    "verify",
]

_CHUNK = 1 << 20
#: Problem kinds that mean content is damaged or absent.
BLOB_KINDS = frozenset({"missing", "truncated", "corrupt", "incomplete"})
#: An unpacked image whose config does not reference its snapshots (gc would remove them).
SNAPSHOT_UNREFERENCED = "snapshot_unreferenced"
#: Problem kinds ``--repair`` mends.
REPAIRABLE_KINDS = BLOB_KINDS | {SNAPSHOT_UNREFERENCED}


@dataclass(frozen=True)
class Problem:
    image: str
    kind: str
    message: str
    digest: str = ""
    repaired: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "kind": self.kind,
            "digest": self.digest or None,
            "message": self.message,
            "repaired": self.repaired,
        }


def select_images(images: ImageStore, refs: Sequence[str] | None) -> list[Image]:
    """Every record, or those named (as given or normalised); NotFoundError for a name
    that matches no record."""
    records = sorted(images.list(), key=lambda i: i.name)
    if not refs:
        return records
    by_name = {i.name: i for i in records}
    out: list[Image] = []
    for r in refs:
        img = lookup_by_name(by_name, r)
        if img is None:
            raise NotFoundError(f"no image record {r!r}")
        if img not in out:
            out.append(img)
    return out


def count_problems(problems: Iterable[Problem]) -> int:
    """How many things are wrong: each damaged blob once (however many images share it),
    each missing snapshot once, and an image's ``incomplete`` only when nothing else
    explains it (a corrupt blob is one problem, not two)."""
    things: set[tuple[str, str]] = set()
    explained = {p.image for p in problems if p.kind != "incomplete"}
    for p in problems:
        if p.kind != "incomplete":
            things.add((p.kind, p.digest or p.message))
        elif p.image not in explained:
            things.add((p.kind, p.image))
    return len(things)


def _read(content: ContentStore, desc: Descriptor) -> bytes:
    with content.reader(desc.digest) as r:
        return r.read(desc.size + 1)


class _Checker:
    def __init__(self, content: ContentStore, snapshots: Snapshotter | None, *,
                 trusted: Collection[str] = (), jobs: int = 1) -> None:
        self.content = content
        self.snapshots = snapshots
        self.trusted = frozenset(trusted)
        self.jobs = max(1, jobs)
        self.cache: dict[str, tuple[str, str] | None] = {}

    def _check(self, desc: Descriptor) -> tuple[str, str] | None:
        return check_blob(self.content, desc, rehash=str(desc.digest) not in self.trusted)

    def blob(self, desc: Descriptor) -> tuple[str, str] | None:
        key = str(desc.digest)
        if key not in self.cache:
            self.cache[key] = self._check(desc)
        return self.cache[key]

    def prefetch(self, descs: Iterable[Descriptor]) -> None:
        """Check the blobs not checked yet, ``jobs`` at a time (results cached)."""
        todo = list({str(d.digest): d for d in descs if str(d.digest) not in self.cache}
                    .values())
        if len(todo) < 2 or self.jobs < 2:
            return
        pool = ThreadPoolExecutor(min(self.jobs, len(todo)), thread_name_prefix="verify")
        try:  # Ctrl-C / SIGTERM: waits polled, submits held (cargohold.interrupts)
            futs = []
            for d in todo:
                with held():
                    futs.append(pool.submit(self._check, d))
            for d, fut in zip(todo, futs, strict=True):
                self.cache[str(d.digest)] = wait_future(fut)
        finally:
            shutdown(pool, lambda: None)  # no check outlives the store

    def image(self, img: Image) -> tuple[list[Problem], list[str]]:
        """Problems of one image and the platforms it holds."""
        problems: list[Problem] = []

        def note(desc: Descriptor) -> bool:
            bad = self.blob(desc)
            if bad is not None:
                problems.append(Problem(img.name, bad[0], bad[1], str(desc.digest)))
            return bad is None

        target = img.target

        def fetch(d: Descriptor) -> bytes | None:
            if d is not target:
                try:
                    self.content.info(d.digest)
                except NotFoundError:
                    return None  # a platform that was not fetched
            return _read(self.content, d) if note(d) else None

        def broken(d: Descriptor, e: CargoholdError) -> None:
            problems.append(Problem(img.name, "corrupt", f"{d.digest}: {e}", str(d.digest)))

        manifests = image_graph(target, fetch, nested="skip", on_error=broken).manifests
        self.prefetch(
            d for _, m in manifests for d in [m.config, *m.layers]
            if mediatypes.is_distributable(d.media_type)
        )
        for _, m in manifests:
            if note(m.config):
                self._snapshot(img, m.config, problems)
            for layer in m.layers:
                if not mediatypes.is_distributable(layer.media_type):
                    try:
                        self.content.info(layer.digest)
                    except NotFoundError:
                        continue  # foreign layers are not fetched
                note(layer)
        platforms: list[str] = []
        try:
            contents = image_contents(self.content, img.target)
            platforms = contents.platforms
            complete = contents.complete
            detail = contents.problems
        except CargoholdError as e:
            complete, detail = False, [str(e)]
        damaged = [p for p in problems if p.kind in BLOB_KINDS]  # (not snapshot problems)
        if damaged or not complete:
            on = ", ".join(platforms) or "no platform"
            why = "; ".join(detail) or f"damaged blobs: {len(damaged)}"
            problems.append(Problem(img.name, "incomplete",
                                    f"image {img.name} is incomplete ({on}): {why}",
                                    str(img.target.digest)))
        return problems, platforms

    def _snapshot(self, img: Image, config: Descriptor, problems: list[Problem]) -> None:
        """The config's snapshot reference (``snapshot_*`` in the module docstring)."""
        if self.snapshots is None:
            return
        try:
            labels = self.content.info(config.digest).labels
            top = _top_chain(self.content, config.digest)
        except CargoholdError:
            return  # a missing or unreadable config is reported as such
        key = snapshot_gc_label(self.snapshots.name)
        name = key.removeprefix(GC_REF_SNAPSHOT + ".")
        chain = labels.get(key)
        if top and is_committed(self.snapshots, top) and chain != top:
            what = f"names {chain}" if chain else "is missing"
            problems.append(Problem(
                img.name, SNAPSHOT_UNREFERENCED,
                f"config {config.digest}: its label {key} {what}, so gc would remove the "
                f"unpacked snapshot {top} ({name})",
                str(config.digest),
            ))
        elif chain and not is_committed(self.snapshots, chain):
            problems.append(Problem(
                img.name, "snapshot_missing",
                f"snapshot {chain} ({name}) of config {config.digest} is missing",
                chain,
            ))


def _snapshot_label(snapshots: Snapshotter) -> str:
    """The config label that keeps an image's snapshots in ``snapshots``."""
    return f"{GC_REF_SNAPSHOT}.{snapshots.name}"


def _top_chain(content: ContentStore, config: Digest) -> str:
    """The top chain ID of a config blob's diff_ids ("" for none)."""
    with content.reader(config) as r:
        diff_ids = parse_config(r.read()).diff_ids
    return str(chain_ids(diff_ids)[-1]) if diff_ids else ""


def _saved_labels(content: ContentStore, digests: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for d in digests:
        with contextlib.suppress(NotFoundError):
            out[d] = dict(content.info(Digest.parse(d)).labels)
    return out


def _restore_labels(content: ContentStore, saved: Mapping[str, Mapping[str, str]]) -> None:
    """Put a deleted blob's labels back on the blob fetched again (labels the fetch wrote
    itself stay as they are)."""
    for d, labels in saved.items():
        try:
            now = content.info(Digest.parse(d)).labels
        except NotFoundError:
            continue  # not fetched again: the repair failed and says so
        lost = {k: v for k, v in labels.items() if k not in now}
        if lost:
            content.update(Digest.parse(d), lost)


@contextlib.contextmanager
def _holding_snapshots(store: Store, saved: Mapping[str, Mapping[str, str]]) -> Iterator[None]:
    """A lease on the snapshots the saved labels reference, while their blobs are away
    (containerd's collector runs during a repair); none where no collector runs."""
    refs = {LeaseResource(f"snapshots/{k.removeprefix(GC_REF_SNAPSHOT + '.')}", v)
            for labels in saved.values() for k, v in labels.items()
            if k.startswith(GC_REF_SNAPSHOT + ".")}
    if not refs or not store.gc_in_background:
        yield
        return
    leases = store.leases
    # Expiring in an hour if this process dies meanwhile where nobody can tell.
    with leased(store, "verify-repair", attach=False, expire=timedelta(hours=1)) as lease_id:
        for r in sorted(refs, key=lambda r: (r.type, r.id)):
            leases.add_resource(lease_id, r)
        yield


def _relabel(content: ContentStore, snapshots: Snapshotter, images: Iterable[Image]) -> None:
    """Give each unpacked image's config its snapshot label back."""
    checker = _Checker(content, snapshots)
    key = snapshot_gc_label(snapshots.name)
    for img in images:
        for p in checker.image(img)[0]:
            if p.kind == SNAPSHOT_UNREFERENCED:
                cfg = Digest.parse(p.digest)
                content.update(cfg, {key: _top_chain(content, cfg)})


def _refetch_ref(img: Image, records: Iterable[Image]) -> Reference | None:
    """A reference to fetch ``img`` again by: its own name, else a sibling record's."""
    for cand in [img, *(r for r in records if r.target.digest == img.target.digest)]:
        if cand.name.startswith(("sha256:", "sha512:")):
            continue
        try:
            return parse_reference(cand.name)
        except CargoholdError:
            continue
    return None


def verify(
    store: Store,
    refs: Sequence[str] | None = None,
    *,
    repair_with: Any | None = None,
    snapshots: Snapshotter | None = None,
    trusted: Collection[str] = (),
    jobs: int = 4,
) -> list[Problem]:
    """Verify the images (all, or ``refs``); see the module docstring. ``repair_with``: a
    Fetcher on the same store. ``snapshots``: a snapshotter (default ``store.snapshots``).
    ``trusted``: digests just verified on commit (not re-hashed); ``jobs``: blobs hashed
    at once."""
    if snapshots is None:
        snapshots = store.snapshots
    content: ContentStore = store.content
    images = select_images(store.images, refs)
    checker = _Checker(content, snapshots, trusted=trusted, jobs=jobs)
    found: dict[str, tuple[Image, list[Problem], list[str]]] = {}
    for img in images:
        problems, platforms = checker.image(img)
        if problems:
            found[img.name] = (img, problems, platforms)
    out = [p for _, ps, _ in found.values() for p in ps]
    if repair_with is None or not out:
        return out

    damaged = {p.digest for p in out if p.kind in ("corrupt", "truncated") and p.digest}
    saved = _saved_labels(content, damaged)  # put back once fetched again
    with _holding_snapshots(store, saved):
        errors = _refetch(store, content, found, damaged, repair_with)
        _restore_labels(content, saved)
        if snapshots is not None:
            _relabel(content, snapshots, [img for img, _, _ in found.values()])
    # Check the damaged images again from scratch.
    checker = _Checker(content, snapshots, jobs=jobs)
    result: list[Problem] = []
    for name, (img, problems, _) in found.items():
        again, _ = checker.image(img)
        still = {(p.kind, p.digest) for p in again}
        for p in problems:
            if (p.kind, p.digest) in still:
                msg = p.message
                if name in errors:
                    msg += f" (repair failed: {errors[name]})"
                result.append(replace(p, message=msg))
            else:
                result.append(replace(p, repaired=True))
        for p in again:
            if not any((p.kind, p.digest) == (q.kind, q.digest) for q in problems):
                result.append(p)
    return result


def _refetch(
    store: Store,
    content: ContentStore,
    found: Mapping[str, tuple[Image, list[Problem], list[str]]],
    damaged: set[str],
    repair_with: Any,
) -> dict[str, str]:
    """Delete the damaged blobs and fetch the damaged images again; errors by image name."""
    for d in sorted(damaged):
        with contextlib.suppress(NotFoundError):
            content.delete(Digest.parse(d))
    if damaged and store.gc_in_background:
        # containerd: the damaged files must be gone before they are fetched again
        store.collect_garbage()
    all_records = store.images.list()
    fetched: set[str] = set()
    errors: dict[str, str] = {}
    for name, (img, problems, platforms) in found.items():
        if not any(p.kind in BLOB_KINDS for p in problems):
            continue
        key = str(img.target.digest)
        if key in fetched:
            continue
        ref = _refetch_ref(img, all_records)
        if ref is None:
            errors[name] = "no record of this target is a reference to fetch it by"
            continue
        plats: list[Platform] = []
        for text in platforms:
            try:
                plats.append(parse_platform(text))
            except CargoholdError:
                continue
        try:
            repair_with.fetch(ref, platforms=plats or [host_platform()])
            fetched.add(key)
        except CargoholdError as e:
            errors[name] = e.message
    return errors
