"""LeaseManager conformance, and what leases and labels protect from gc.

Only the Protocols of cargohold.store.interfaces; the gc tests need the backend's ``gc``
hook and are skipped without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from cargohold.errors import ConflictError, NotFoundError
from cargohold.labels import GC_REF_CONTENT
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import (
    Image,
    LeaseManager,
    LeaseResource,
    active_lease,
)
from tests.conformance.conftest import StoreUnderTest

Unique = Callable[[str], str]
GC_EXPIRE = "containerd.io/gc.expire"


def put(store: StoreUnderTest, data: bytes, labels: dict[str, str] | None = None) -> Digest:
    d = Digest.from_bytes(data)
    with store.content.writer(f"put-{d.hex}", total=len(data), expected=d) as w:
        w.write(data)
        w.commit(len(data), d, labels)
    return d


def present(store: StoreUnderTest, d: Digest) -> bool:
    try:
        store.content.info(d)
    except NotFoundError:
        return False
    return True


def needs_gc(store: StoreUnderTest) -> Callable[[], None]:
    if store.gc is None:
        pytest.skip(f"backend {store.backend} cannot be asked to collect garbage")
    return store.gc


def test_backend_implements_the_protocol(store: StoreUnderTest) -> None:
    assert isinstance(store.leases, LeaseManager)


def test_create_list_delete(store: StoreUnderTest, unique: Unique) -> None:
    generated = store.leases.create(labels={"purpose": "test"})
    assert generated.id
    named = store.leases.create(lease_id=unique("lease"))
    ids = {lease.id for lease in store.leases.list()}
    assert {generated.id, named.id} <= ids
    got = next(lease for lease in store.leases.list() if lease.id == generated.id)
    assert dict(got.labels) == {"purpose": "test"}
    with pytest.raises(ConflictError):
        store.leases.create(lease_id=named.id)
    store.leases.delete(generated.id)
    store.leases.delete(named.id)
    assert not {generated.id, named.id} & {lease.id for lease in store.leases.list()}
    with pytest.raises(NotFoundError):
        store.leases.delete(named.id)


def test_resources(store: StoreUnderTest, unique: Unique) -> None:
    lease = store.leases.create()
    d = Digest.from_bytes(os.urandom(16))
    content = LeaseResource("content", str(d))
    ingest = LeaseResource("ingest", unique("ref"))
    store.leases.add_resource(lease.id, content)
    store.leases.add_resource(lease.id, content)  # idempotent
    store.leases.add_resource(lease.id, ingest)
    assert sorted(store.leases.list_resources(lease.id), key=str) == sorted(
        [content, ingest], key=str
    )
    store.leases.delete_resource(lease.id, content)
    assert store.leases.list_resources(lease.id) == [ingest]
    store.leases.delete(lease.id)
    with pytest.raises(NotFoundError):
        store.leases.list_resources(lease.id)
    with pytest.raises(NotFoundError):
        store.leases.add_resource(lease.id, content)


# ---------------------------------------------------------------- gc


def test_gc_keeps_what_images_reach_through_labels(store: StoreUnderTest, unique: Unique) -> None:
    gc = needs_gc(store)
    config = put(store, os.urandom(300))
    layer = put(store, os.urandom(5000))
    manifest_doc = json.dumps({"config": str(config), "layers": [str(layer)]}).encode()
    manifest = put(
        store,
        manifest_doc,
        {f"{GC_REF_CONTENT}.config": str(config), f"{GC_REF_CONTENT}.l.0": str(layer)},
    )
    index = put(store, json.dumps({"m": str(manifest)}).encode(),
                {f"{GC_REF_CONTENT}.m.0": str(manifest)})
    orphan = put(store, os.urandom(700))
    name = f"example.test/{unique('gc')}:1"
    store.images.create(
        Image(name=name, target=Descriptor("application/vnd.oci.image.index.v1+json", index, 1))
    )
    gc()
    for d in (index, manifest, config, layer):
        assert present(store, d), d
    assert not present(store, orphan)

    store.images.delete(name)
    gc()
    for d in (index, manifest, config, layer):
        assert not present(store, d), d


def test_lease_protects_content_and_ingests(store: StoreUnderTest, unique: Unique) -> None:
    gc = needs_gc(store)
    lease = store.leases.create()
    ref = unique("ingest")
    token = active_lease.set(lease.id)
    try:
        kept = put(store, os.urandom(1000))
        with store.content.writer(ref, total=10) as w:
            w.write(b"12345")
    finally:
        active_lease.reset(token)
    gc()
    assert present(store, kept)
    assert store.content.status(ref).offset == 5

    store.leases.delete(lease.id)
    gc()
    assert not present(store, kept)
    with pytest.raises(NotFoundError):
        store.content.status(ref)


def test_expired_lease_protects_nothing(store: StoreUnderTest, unique: Unique) -> None:
    gc = needs_gc(store)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    expired = store.leases.create(labels={GC_EXPIRE: past})
    live = store.leases.create(labels={GC_EXPIRE: future})
    ref = unique("expired-ingest")

    token = active_lease.set(expired.id)
    try:
        gone = put(store, os.urandom(1000))
        with store.content.writer(ref) as w:
            w.write(b"x")
    finally:
        active_lease.reset(token)
    token = active_lease.set(live.id)
    try:
        kept = put(store, os.urandom(1000))
    finally:
        active_lease.reset(token)

    gc()
    assert not present(store, gone)
    assert present(store, kept)
    with pytest.raises(NotFoundError):
        store.content.status(ref)
    assert expired.id not in {lease.id for lease in store.leases.list()}
    store.leases.delete(live.id)
