"""ImageStore conformance: only the Protocols of cargohold.store.interfaces."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from cargohold.errors import ConflictError, NotFoundError
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.store.interfaces import Image, ImageStore
from tests.conformance.conftest import StoreUnderTest

Unique = Callable[[str], str]
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def desc(
    media_type: str = INDEX,
    annotations: dict[str, str] | None = None,
    platform: Platform | None = None,
) -> Descriptor:
    digest = Digest.from_bytes(os.urandom(64))
    return Descriptor(media_type, digest, 1234, dict(annotations or {}), platform)


def test_backend_implements_the_protocol(store: StoreUnderTest) -> None:
    assert isinstance(store.images, ImageStore)


def test_create_get_list_delete(store: StoreUnderTest, unique: Unique) -> None:
    name = f"registry.example/{unique('app')}:1.0"
    target = desc(annotations={"org.opencontainers.image.ref.name": "1.0"})
    made = store.images.create(Image(name=name, target=target, labels={"team": "a"}))
    assert made.name == name
    assert made.created_at is not None and made.updated_at is not None

    got = store.images.get(name)
    assert got.target == target
    assert dict(got.target.annotations) == {"org.opencontainers.image.ref.name": "1.0"}
    assert dict(got.labels) == {"team": "a"}
    assert got.created_at is not None
    assert name in {i.name for i in store.images.list()}

    store.images.delete(name)
    with pytest.raises(NotFoundError):
        store.images.get(name)
    assert name not in {i.name for i in store.images.list()}


def test_target_fields_round_trip(store: StoreUnderTest, unique: Unique) -> None:
    name = f"example.test/{unique('plat')}:x"
    target = desc(MANIFEST, platform=Platform("linux", "arm64", "v8"))
    store.images.create(Image(name=name, target=target))
    got = store.images.get(name).target
    assert (got.media_type, got.digest, got.size) == (MANIFEST, target.digest, 1234)
    assert got.platform == Platform("linux", "arm64", "v8")
    store.images.delete(name)


def test_create_existing_name_conflicts(store: StoreUnderTest, unique: Unique) -> None:
    name = f"example.test/{unique('dup')}:1"
    store.images.create(Image(name=name, target=desc()))
    with pytest.raises(ConflictError):
        store.images.create(Image(name=name, target=desc()))
    store.images.delete(name)


def test_update_replaces_target_and_labels(store: StoreUnderTest, unique: Unique) -> None:
    name = f"example.test/{unique('upd')}:1"
    first = store.images.create(Image(name=name, target=desc(), labels={"a": "1"}))
    new_target = desc()
    updated = store.images.update(Image(name=name, target=new_target, labels={"b": "2"}))
    assert updated.target == new_target
    got = store.images.get(name)
    assert got.target == new_target
    assert dict(got.labels) == {"b": "2"}
    assert got.created_at == first.created_at
    assert got.updated_at is not None and first.updated_at is not None
    assert got.updated_at >= first.updated_at
    store.images.delete(name)


def test_update_and_delete_missing_are_not_found(store: StoreUnderTest, unique: Unique) -> None:
    name = f"example.test/{unique('missing')}:1"
    with pytest.raises(NotFoundError):
        store.images.update(Image(name=name, target=desc()))
    with pytest.raises(NotFoundError):
        store.images.delete(name)
    with pytest.raises(NotFoundError):
        store.images.get(name)
