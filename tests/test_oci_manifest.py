"""cargohold.oci.manifest: parsing and validating manifests, indexes and configs;
children; manifest selection by platform."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from cargohold.errors import InvalidInputError, UnsupportedError
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
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


def dig(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def desc(media_type: str, seed: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": dig(seed), "size": size, **extra}


def manifest_obj(
    *, media_type: str | None = mt.OCI_MANIFEST, layers: int = 2, config_type: str = mt.OCI_CONFIG
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "config": desc(config_type, "config", 1234),
        "layers": [desc(mt.OCI_LAYER_GZIP, f"layer{i}", 100 + i) for i in range(layers)],
    }
    if media_type is not None:
        obj["mediaType"] = media_type
    return obj


def index_obj(
    entries: list[dict[str, Any]], media_type: str | None = mt.OCI_INDEX
) -> dict[str, Any]:
    obj: dict[str, Any] = {"schemaVersion": 2, "manifests": entries}
    if media_type is not None:
        obj["mediaType"] = media_type
    return obj


def plat(os: str, arch: str, variant: str = "") -> dict[str, Any]:
    return Platform(os, arch, variant).to_json()


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def config_obj(diff_ids: int = 2, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/usr/bin", "A=b"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "Labels": {"org.opencontainers.image.title": "app"},
        },
        "rootfs": {"type": "layers", "diff_ids": [dig(f"diff{i}") for i in range(diff_ids)]},
        "history": [],
    }
    obj.update(extra)
    return obj


# --------------------------------------------------------------------------- manifests


def test_parse_oci_manifest() -> None:
    m = parse_manifest_or_index(enc(manifest_obj()))
    assert isinstance(m, Manifest)
    assert m.schema_version == 2
    assert m.media_type == mt.OCI_MANIFEST
    assert m.config == Descriptor(mt.OCI_CONFIG, Digest.parse(dig("config")), 1234)
    assert [d.digest for d in m.layers] == [
        Digest.parse(dig("layer0")),
        Digest.parse(dig("layer1")),
    ]
    assert [d.size for d in m.layers] == [100, 101]
    assert m.annotations == {}
    assert m.subject is None
    assert m.artifact_type == ""


def test_parse_docker_manifest_with_content_type() -> None:
    obj = manifest_obj(media_type=mt.DOCKER_MANIFEST, config_type=mt.DOCKER_CONFIG)
    obj["layers"] = [desc(mt.DOCKER_LAYER_GZIP, "l")]
    m = parse_manifest_or_index(enc(obj), mt.DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.layers[0].media_type == mt.DOCKER_LAYER_GZIP


def test_media_type_from_content_type_when_body_has_none() -> None:
    m = parse_manifest_or_index(enc(manifest_obj(media_type=None)), mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST


def test_media_type_by_shape_when_nothing_says() -> None:
    m = parse_manifest_or_index(enc(manifest_obj(media_type=None)))
    assert isinstance(m, Manifest) and m.media_type == mt.OCI_MANIFEST
    i = parse_manifest_or_index(enc(index_obj([], media_type=None)), "application/json")
    assert isinstance(i, Index) and i.media_type == mt.OCI_INDEX


def test_body_media_type_wins_over_same_kind_content_type() -> None:
    # containerd checks the kind (manifest vs index), not the exact type.
    m = parse_manifest_or_index(enc(manifest_obj()), mt.DOCKER_MANIFEST)
    assert m.media_type == mt.OCI_MANIFEST


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/octet-stream", "text/plain", ""]
)
def test_generic_content_types_are_ignored(ctype: str) -> None:
    assert isinstance(parse_manifest_or_index(enc(manifest_obj()), ctype), Manifest)


def test_config_or_layer_type_given_is_an_error() -> None:
    with pytest.raises(InvalidInputError, match="not a manifest type"):
        parse_manifest_or_index(enc(manifest_obj()), mt.OCI_CONFIG)
    with pytest.raises(InvalidInputError, match="not a manifest type"):
        parse_manifest_or_index(enc(manifest_obj()), mt.OCI_LAYER_GZIP)


def test_conflicting_kinds_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="conflicting types") as exc:
        parse_manifest_or_index(enc(manifest_obj()), mt.OCI_INDEX)
    assert "says index" in str(exc.value) and "says manifest" in str(exc.value)
    body = index_obj([])
    body["mediaType"] = mt.OCI_MANIFEST
    with pytest.raises(InvalidInputError, match="conflicting types"):
        parse_manifest_or_index(enc(body))
    with pytest.raises(InvalidInputError, match="conflicting types"):
        parse_manifest_or_index(enc(index_obj([])), mt.DOCKER_MANIFEST)
    both = manifest_obj()
    both["manifests"] = []
    with pytest.raises(InvalidInputError, match="both 'manifests'"):
        parse_manifest_or_index(enc(both))


def test_shapeless_document_rejected() -> None:
    with pytest.raises(InvalidInputError, match="cannot tell a manifest from an index"):
        parse_manifest_or_index(b'{"schemaVersion": 2}')


def test_unknown_body_media_type_unsupported() -> None:
    obj = manifest_obj(media_type="application/vnd.example.thing+json")
    with pytest.raises(UnsupportedError, match="unsupported media type"):
        parse_manifest_or_index(enc(obj))


SCHEMA1 = {
    "schemaVersion": 1,
    "name": "library/hello",
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": dig("a")}],
    "history": [{"v1Compatibility": "{}"}],
}


def test_schema1_refused_by_body() -> None:
    with pytest.raises(UnsupportedError) as exc:
        parse_manifest_or_index(enc(SCHEMA1))
    msg = str(exc.value)
    assert "schema 1" in msg and "not supported" in msg


@pytest.mark.parametrize("ctype", sorted(mt.SCHEMA1))
def test_schema1_refused_by_media_type(ctype: str) -> None:
    with pytest.raises(UnsupportedError, match=r"schema 1 .*not supported"):
        parse_manifest_or_index(enc(SCHEMA1), ctype)
    body = dict(SCHEMA1, mediaType=ctype)
    with pytest.raises(UnsupportedError, match=r"schema 1 .*not supported"):
        parse_manifest_or_index(enc(body))


def test_schema_version_checks() -> None:
    obj = manifest_obj()
    del obj["schemaVersion"]
    with pytest.raises(InvalidInputError, match="'schemaVersion' is required"):
        parse_manifest_or_index(enc(obj))
    obj["schemaVersion"] = "2"
    with pytest.raises(InvalidInputError, match="must be an integer"):
        parse_manifest_or_index(enc(obj))
    obj["schemaVersion"] = True
    with pytest.raises(InvalidInputError, match="must be an integer"):
        parse_manifest_or_index(enc(obj))
    obj["schemaVersion"] = 3
    with pytest.raises(UnsupportedError, match="schemaVersion 3 is not supported"):
        parse_manifest_or_index(enc(obj))


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b'{"schemaVersion": 2,}', b"not json", b'{"a": NaN}', b"\xff\xfe{}"],
)
def test_malformed_json(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="malformed JSON"):
        parse_manifest_or_index(data)


@pytest.mark.parametrize("data", [b"[]", b'"x"', b"2", b"null"])
def test_json_must_be_an_object(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="expected a JSON object"):
        parse_manifest_or_index(data)


def test_size_limit() -> None:
    assert MAX_MANIFEST_SIZE == 4 * 1024 * 1024
    body = enc(manifest_obj())
    at_limit = body + b" " * (MAX_MANIFEST_SIZE - len(body))
    assert len(at_limit) == MAX_MANIFEST_SIZE
    assert isinstance(parse_manifest_or_index(at_limit), Manifest)
    with pytest.raises(InvalidInputError, match="larger than the 4194304 byte limit"):
        parse_manifest_or_index(at_limit + b" ")


def test_malformed_layer_digest_named() -> None:
    obj = manifest_obj()
    obj["layers"][1]["digest"] = "sha256:1234"
    with pytest.raises(InvalidInputError) as exc:
        parse_manifest_or_index(enc(obj))
    assert "layers[1]" in str(exc.value)
    assert "64 hex characters" in str(exc.value)


def test_negative_size() -> None:
    obj = manifest_obj()
    obj["config"]["size"] = -1
    with pytest.raises(InvalidInputError, match=r"config: 'size' must not be negative \(got -1\)"):
        parse_manifest_or_index(enc(obj))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("config"), "'config' is required"),
        (lambda o: o.__setitem__("config", "x"), "config: expected an object"),
        (lambda o: o.pop("layers"), "'layers' is required"),
        (lambda o: o.__setitem__("layers", {}), "'layers' is required"),
        (lambda o: o["layers"][0].pop("mediaType"), r"layers\[0\]: 'mediaType' is required"),
        (lambda o: o["layers"][0].pop("size"), r"layers\[0\]: 'size' is required"),
        (
            lambda o: o["layers"][0].__setitem__("size", 1.5),
            r"'size' is required and must be an integer",
        ),
        (lambda o: o.__setitem__("annotations", {"a": 1}), "'annotations' must map strings"),
        (lambda o: o.__setitem__("mediaType", 5), "'mediaType' must be a string"),
        (lambda o: o.__setitem__("artifactType", 5), "'artifactType' must be a string"),
    ],
)
def test_manifest_field_validation(mutate: Any, reason: str) -> None:
    obj = manifest_obj()
    mutate(obj)
    with pytest.raises(InvalidInputError, match=reason):
        parse_manifest_or_index(enc(obj))


def test_unknown_layer_type_in_image_manifest_refused() -> None:
    obj = manifest_obj()
    obj["layers"].append(desc("application/vnd.dev.cosign.simplesigning.v1+json", "sig"))
    with pytest.raises(UnsupportedError, match=r"layers\[2\].*not a container image layer type"):
        parse_manifest_or_index(enc(obj))
    # ... but fine when only the tree matters (children / gc).
    m = parse_manifest_or_index(enc(obj), images_only=False)
    assert isinstance(m, Manifest) and len(m.layers) == 3


def test_artifact_manifest_with_other_config_accepts_any_layers() -> None:
    obj = manifest_obj(config_type=mt.OCI_EMPTY)
    obj["artifactType"] = "application/vnd.example.sbom"
    obj["layers"] = [desc("application/spdx+json", "sbom")]
    obj["subject"] = desc(mt.OCI_MANIFEST, "subject", 500)
    m = parse_manifest_or_index(enc(obj))
    assert isinstance(m, Manifest)
    assert m.artifact_type == "application/vnd.example.sbom"
    assert m.subject is not None and m.subject.digest == Digest.parse(dig("subject"))


def test_attestation_manifest_accepted() -> None:
    obj = manifest_obj()
    obj["layers"] = [desc("application/vnd.in-toto+json", "intoto")]
    m = parse_manifest_or_index(enc(obj))
    assert isinstance(m, Manifest) and m.layers[0].media_type == "application/vnd.in-toto+json"


def test_all_layer_types_accepted() -> None:
    obj = manifest_obj()
    obj["layers"] = [desc(t, t) for t in sorted(mt.LAYERS)]
    m = parse_manifest_or_index(enc(obj))
    assert isinstance(m, Manifest)
    assert [d.media_type for d in m.layers] == sorted(mt.LAYERS)


def test_manifest_canonical_json_round_trip() -> None:
    obj = manifest_obj()
    obj["annotations"] = {"z": "1", "a": "2"}
    obj["layers"][0]["annotations"] = {"k": "v"}
    obj["layers"][0]["urls"] = ["https://example.com/x"]
    m = parse_manifest_or_index(enc(obj))
    data = m.to_json_bytes()
    assert data == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    again = parse_manifest_or_index(data)
    assert again == m
    assert isinstance(again, Manifest) and again.layers[0].annotations == {"k": "v"}
    assert again.to_json_bytes() == data


# --------------------------------------------------------------------------- indexes


def test_parse_index() -> None:
    entries = [
        desc(mt.OCI_MANIFEST, "amd", 500, platform=plat("linux", "amd64")),
        desc(mt.OCI_MANIFEST, "arm", 501, platform=plat("linux", "arm64", "v8")),
    ]
    i = parse_manifest_or_index(enc(index_obj(entries)), mt.OCI_INDEX)
    assert isinstance(i, Index)
    assert i.media_type == mt.OCI_INDEX
    assert [d.platform for d in i.manifests] == [
        Platform("linux", "amd64"), Platform("linux", "arm64", "v8"),
    ]  # fmt: skip
    assert [d.size for d in i.manifests] == [500, 501]


def test_docker_manifest_list() -> None:
    entries = [desc(mt.DOCKER_MANIFEST, "amd", 500, platform=plat("linux", "amd64"))]
    i = parse_manifest_or_index(enc(index_obj(entries, mt.DOCKER_MANIFEST_LIST)))
    assert isinstance(i, Index) and i.media_type == mt.DOCKER_MANIFEST_LIST


def test_index_validation() -> None:
    obj = index_obj([desc(mt.OCI_MANIFEST, "a", platform={"os": "linux"})])
    with pytest.raises(
        InvalidInputError, match=r"manifests\[0\]\.platform: 'os' and 'architecture'"
    ):
        parse_manifest_or_index(enc(obj))
    obj = index_obj([desc(mt.OCI_MANIFEST, "a", size=-5)])
    with pytest.raises(InvalidInputError, match=r"manifests\[0\]: 'size' must not be negative"):
        parse_manifest_or_index(enc(obj))
    obj = index_obj([])
    obj["manifests"] = {}
    with pytest.raises(InvalidInputError, match="'manifests' must be a list"):
        parse_manifest_or_index(enc(obj))


def test_index_keeps_unknown_entry_types() -> None:
    entries = [
        desc(mt.OCI_MANIFEST, "amd", platform=plat("linux", "amd64")),
        desc("application/vnd.example.unknown", "x"),
    ]
    i = parse_manifest_or_index(enc(index_obj(entries)))
    assert isinstance(i, Index)
    assert [d.media_type for d in i.manifests] == [
        mt.OCI_MANIFEST,
        "application/vnd.example.unknown",
    ]


def test_index_canonical_json_round_trip() -> None:
    entries = [desc(mt.OCI_MANIFEST, "amd", 500, platform=plat("linux", "arm", "v7"))]
    obj = index_obj(entries)
    obj["annotations"] = {"org.opencontainers.image.ref.name": "1.0"}
    i = parse_manifest_or_index(enc(obj))
    data = i.to_json_bytes()
    assert data == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert parse_manifest_or_index(data) == i


# --------------------------------------------------------------------------- configs


def test_parse_config() -> None:
    cfg = parse_config(enc(config_obj()))
    assert isinstance(cfg, ImageConfig)
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "arm64", "v8")
    assert cfg.entrypoint == ["/bin/app"]
    assert cfg.cmd == ["--serve"]
    assert cfg.env == ["PATH=/usr/bin", "A=b"]
    assert cfg.working_dir == "/srv"
    assert cfg.user == "1000:1000"
    assert cfg.labels == {"org.opencontainers.image.title": "app"}
    assert cfg.diff_ids == [Digest.parse(dig("diff0")), Digest.parse(dig("diff1"))]
    assert cfg.raw["history"] == []
    assert cfg.platform == Platform("linux", "arm64", "v8")


def test_parse_config_with_null_sections() -> None:
    obj = config_obj(diff_ids=0)
    obj["config"] = None
    obj["rootfs"]["diff_ids"] = None
    cfg = parse_config(enc(obj))
    assert cfg.entrypoint == [] and cfg.cmd == [] and cfg.labels == {} and cfg.diff_ids == []
    obj["config"] = {"Entrypoint": None, "Labels": None, "WorkingDir": None}
    cfg = parse_config(enc(obj))
    assert cfg.entrypoint == [] and cfg.labels == {} and cfg.working_dir == ""


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("architecture"), "'architecture' is required"),
        (lambda o: o.__setitem__("os", 3), "'os' is required"),
        (lambda o: o.__setitem__("variant", 8), "'variant' must be a string"),
        (lambda o: o.pop("rootfs"), "'rootfs' is required"),
        (lambda o: o["rootfs"].__setitem__("type", "layers+base"), "rootfs.type must be 'layers'"),
        (lambda o: o["rootfs"].__setitem__("diff_ids", "x"), "rootfs.diff_ids must be a list"),
        (lambda o: o["rootfs"]["diff_ids"].append("sha256:zz"), r"diff_ids\[2\].*invalid digest"),
        (lambda o: o["rootfs"]["diff_ids"].append(7), r"diff_ids\[2\] must be a string"),
        (lambda o: o.__setitem__("config", []), "'config' must be an object"),
        (lambda o: o["config"].__setitem__("Cmd", "sh"), "'Cmd' must be a list of strings"),
        (lambda o: o["config"].__setitem__("Env", ["A", 1]), "'Env' must be a list of strings"),
        (lambda o: o["config"].__setitem__("Labels", {"a": 1}), "'Labels' must map strings"),
        (lambda o: o["config"].__setitem__("User", 0), "'User' must be a string"),
    ],
)
def test_config_validation(mutate: Any, reason: str) -> None:
    obj = config_obj()
    mutate(obj)
    with pytest.raises(InvalidInputError, match=reason):
        parse_config(enc(obj))


def test_config_malformed_json() -> None:
    with pytest.raises(InvalidInputError, match="image config: malformed JSON"):
        parse_config(b"{nope")
    with pytest.raises(InvalidInputError, match="image config: expected a JSON object"):
        parse_config(b"[1]")


def test_check_config_counts() -> None:
    m = parse_manifest_or_index(enc(manifest_obj(layers=3)))
    assert isinstance(m, Manifest)
    check_config(m, parse_config(enc(config_obj(diff_ids=3))))  # agrees: no error
    with pytest.raises(InvalidInputError) as exc:
        check_config(m, parse_config(enc(config_obj(diff_ids=2))))
    assert "2 diff_ids" in str(exc.value)
    assert "3 layers" in str(exc.value)
    assert dig("config") in str(exc.value)


# --------------------------------------------------------------------------- children


def test_children_of_index_manifest_and_blob() -> None:
    entries = [desc(mt.OCI_MANIFEST, "a", 1), desc(mt.OCI_MANIFEST, "b", 2)]
    idx = enc(index_obj(entries))
    idx_desc = Descriptor(mt.OCI_INDEX, Digest.from_bytes(idx), len(idx))
    assert [str(d.digest) for d in children(idx_desc, idx)] == [dig("a"), dig("b")]

    obj = manifest_obj(layers=2)
    obj["layers"].append(desc("application/vnd.example.sig", "sig"))  # not an image: still a child
    man = enc(obj)
    man_desc = Descriptor(mt.OCI_MANIFEST, Digest.from_bytes(man), len(man))
    assert [str(d.digest) for d in children(man_desc, man)] == [
        dig("config"), dig("layer0"), dig("layer1"), dig("sig"),
    ]  # fmt: skip

    layer = Descriptor(mt.OCI_LAYER_GZIP, Digest.from_bytes(b"x"), 1)
    assert children(layer, b"x") == []
    cfg = Descriptor(mt.OCI_CONFIG, Digest.from_bytes(b"{}"), 2)
    assert children(cfg, b"{}") == []


def test_children_validates_content() -> None:
    bad = b'{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "nope", "size": 1}]}'
    d = Descriptor(mt.OCI_INDEX, Digest.from_bytes(bad), len(bad))
    with pytest.raises(InvalidInputError, match="invalid digest"):
        children(d, bad)


# --------------------------------------------------------------------------- selection


def _index(entries: list[dict[str, Any]]) -> Index:
    i = parse_manifest_or_index(enc(index_obj(entries)))
    assert isinstance(i, Index)
    return i


ATTEST = {
    "vnd.docker.reference.type": "attestation-manifest",
    "vnd.docker.reference.digest": dig("amd"),
}
BUILDX_LIKE = [
    desc(mt.OCI_MANIFEST, "amd", platform=plat("linux", "amd64")),
    desc(mt.OCI_MANIFEST, "arm64", platform=plat("linux", "arm64", "v8")),
    desc(mt.OCI_MANIFEST, "armv7", platform=plat("linux", "arm", "v7")),
    desc(mt.OCI_MANIFEST, "armv6", platform=plat("linux", "arm", "v6")),
    desc(mt.OCI_MANIFEST, "att", platform=plat("unknown", "unknown"), annotations=ATTEST),
    desc(mt.OCI_MANIFEST, "noplat"),
    desc(mt.OCI_INDEX, "nested"),
    desc("application/vnd.example.unknown", "unknown", platform=plat("linux", "amd64")),
]


NAMES = ("amd", "arm64", "armv7", "armv6", "att", "noplat", "nested", "unknown")


def _picked(index: Index, platforms: list[Platform], all_platforms: bool = False) -> list[str]:
    by_digest = {dig(name): name for name in NAMES}
    return [by_digest[str(d.digest)] for d in select_manifests(index, platforms, all_platforms)]


def test_select_manifests_by_platform() -> None:
    idx = _index(BUILDX_LIKE)
    assert _picked(idx, [Platform("linux", "amd64")]) == ["amd"]
    assert _picked(idx, [Platform("linux", "arm64")]) == ["arm64"]
    assert _picked(idx, [Platform("linux", "arm", "v7")]) == ["armv7"]
    assert _picked(idx, [Platform("linux", "arm", "v6")]) == ["armv6"]
    assert _picked(idx, [Platform("linux", "arm", "v5")]) == []
    assert _picked(idx, [Platform("linux", "arm64"), Platform("linux", "amd64")]) == [
        "arm64",
        "amd",
    ]
    assert _picked(idx, [Platform("linux", "s390x")]) == []
    assert _picked(idx, []) == []


def test_select_manifests_falls_back_to_compatible() -> None:
    idx = _index([e for e in BUILDX_LIKE if e["digest"] != dig("arm64")])
    # No arm64 image: an arm64 host takes arm/v7 (containerd's Only order), not v6.
    assert _picked(idx, [Platform("linux", "arm64")]) == ["armv7"]


def test_select_manifests_never_picks_attestations_or_unknown_types() -> None:
    idx = _index(BUILDX_LIKE)
    assert _picked(idx, [Platform("unknown", "unknown")]) == []
    assert _picked(idx, [], all_platforms=True) == ["amd", "arm64", "armv7", "armv6", "noplat"]


def test_select_manifests_first_of_duplicates() -> None:
    entries = [
        desc(mt.OCI_MANIFEST, "amd", platform=plat("linux", "amd64")),
        desc(mt.OCI_MANIFEST, "arm64", platform=plat("linux", "x86_64")),
    ]
    idx = _index(entries)
    assert [str(d.digest) for d in select_manifests(idx, [Platform("linux", "amd64")])] == [
        dig("amd")
    ]


def test_is_attestation() -> None:
    idx = _index(BUILDX_LIKE)
    assert [is_attestation(d) for d in idx.manifests] == [
        False, False, False, False, True, False, False, False,
    ]  # fmt: skip
    only_platform = Descriptor(
        mt.OCI_MANIFEST, Digest.from_bytes(b"a"), 1, platform=Platform("unknown", "unknown")
    )
    assert is_attestation(only_platform)
