"""Image manifests, indexes (manifest lists) and image configs: parsing, validation,
canonical encoding and platform selection. Pure: no I/O.

* :func:`parse_manifest_or_index` -- an OCI / Docker schema 2 manifest or index, from
  at most :data:`MAX_MANIFEST_SIZE` bytes. Docker schema 1 is refused with
  UnsupportedError; malformed content raises InvalidInputError naming the problem.
* :func:`parse_config` / :func:`check_config` -- the image config and its agreement
  with the manifest (one diff_id per layer).
* :func:`children` -- containerd's ``images.Children``.
* :func:`select_manifests` -- which manifests of an index to fetch for some platforms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cargohold.errors import InvalidContentError, InvalidInputError, UnsupportedError
from cargohold.oci import mediatypes as mt
from cargohold.oci.descriptor import Descriptor, Platform
from cargohold.oci.digest import Digest
from cargohold.oci.platform import select

#: The largest manifest or index accepted (containerd's limit for manifests it reads).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

#: The annotation BuildKit puts on an index entry that is not an image but an attestation.
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"
#: Layer types of known non-image artifacts accepted in manifests with an image config
#: (BuildKit's attestation manifests carry in-toto statements as "layers").
IN_TOTO = "application/vnd.in-toto+json"
ARTIFACT_LAYER_TYPES = frozenset({IN_TOTO})


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no white space, UTF-8: the encoding cargohold writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class Manifest:
    """An image manifest (OCI ``image.manifest.v1`` or Docker schema 2)."""

    schema_version: int
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def children(self) -> list[Descriptor]:
        """The config, then the layers (containerd's order)."""
        return [self.config, *self.layers]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [d.to_json() for d in self.layers],
        }
        return _with_optional(out, self.annotations, self.subject, self.artifact_type)

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact): parses back to an equal Manifest."""
        return canonical_json(self.to_json())


@dataclass(slots=True)
class Index:
    """An OCI image index or Docker manifest list."""

    schema_version: int
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def children(self) -> list[Descriptor]:
        return list(self.manifests)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "manifests": [d.to_json() for d in self.manifests],
        }
        return _with_optional(out, self.annotations, self.subject, self.artifact_type)

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact): parses back to an equal Index."""
        return canonical_json(self.to_json())


def _with_optional(
    out: dict[str, Any],
    annotations: dict[str, str],
    subject: Descriptor | None,
    artifact_type: str,
) -> dict[str, Any]:
    """``out`` plus the optional fields a manifest and an index share, where set."""
    if annotations:
        out["annotations"] = dict(annotations)
    if subject is not None:
        out["subject"] = subject.to_json()
    if artifact_type:
        out["artifactType"] = artifact_type
    return out


@dataclass(slots=True)
class ImageConfig:
    """What cargohold needs of an image config; ``raw`` is the whole parsed object."""

    architecture: str
    os: str
    variant: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    diff_ids: list[Digest] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    os_version: str = ""

    @property
    def platform(self) -> Platform:
        """The platform the config declares (not normalised)."""
        return Platform(self.os, self.architecture, self.variant, self.os_version)


# --------------------------------------------------------------------------- helpers


def _fail(where: str, reason: str) -> NoReturn:
    raise InvalidContentError(f"{where}: {reason}")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(data: bytes | bytearray | memoryview, where: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail(where, f"expected bytes, got {type(data).__name__}")
    try:
        obj = json.loads(bytes(data), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        _fail(where, f"malformed JSON ({e})")
    if not isinstance(obj, dict):
        _fail(where, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _annotations(obj: dict[str, Any], where: str) -> dict[str, str]:
    ann = obj.get("annotations")
    if ann is None:
        return {}
    if not isinstance(ann, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in ann.items()
    ):
        _fail(where, "'annotations' must map strings to strings")
    return dict(ann)


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _fail(where, f"{key!r} must be a string")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(where, f"{key!r} must be a list of strings")
    return list(value)


def _schema1(what: str, detail: str) -> UnsupportedError:
    return UnsupportedError(
        f"{what} is a Docker image manifest schema 1 ({detail}); schema 1 is deprecated "
        "and not supported"
    )


def _kind_of_type(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    if mt.is_index(media_type):
        return "index"
    if mt.is_manifest(media_type):
        return "manifest"
    return None


# --------------------------------------------------------------------------- parsing


def _schema_and_type(obj: dict[str, Any], where: str) -> tuple[str | None, int]:
    """The body's ``mediaType`` (None when absent) and its ``schemaVersion`` (2: schema 1
    and other versions are refused)."""
    body_type = obj.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        _fail(where, "'mediaType' must be a string")
    schema = obj.get("schemaVersion")
    if body_type in mt.SCHEMA1:
        raise _schema1(where, str(body_type))
    if (isinstance(schema, int) and not isinstance(schema, bool) and schema == 1) or (
        "fsLayers" in obj
    ):
        raise _schema1(where, "schemaVersion 1")
    if schema is None:
        _fail(where, "'schemaVersion' is required")
    if not isinstance(schema, int) or isinstance(schema, bool):
        _fail(where, f"'schemaVersion' must be an integer, got {schema!r}")
    if schema != 2:
        raise UnsupportedError(f"{where}: schemaVersion {schema} is not supported (only 2)")
    if body_type and _kind_of_type(body_type) is None:
        raise UnsupportedError(f"{where}: unsupported media type {body_type!r}")
    return body_type, schema


def _agreed_kind(obj: dict[str, Any], body_type: str | None, media_type: str | None,
                 given_kind: str | None, where: str) -> str:
    """``manifest`` or ``index``, on which the body's mediaType, the given media type and
    the fields present all agree (each where it says anything)."""
    has_index_fields = "manifests" in obj
    has_manifest_fields = "config" in obj or "layers" in obj
    if has_index_fields and has_manifest_fields:
        _fail(where, "has both 'manifests' (an index) and 'config'/'layers' (a manifest)")
    shape_kind = "index" if has_index_fields else "manifest" if has_manifest_fields else None
    claims = [
        (source, kind)
        for source, kind in (
            (f"its mediaType {body_type}", _kind_of_type(body_type)),
            (f"the given media type {media_type}", given_kind),
            ("its fields", shape_kind),
        )
        if kind is not None
    ]
    if not claims:
        _fail(where, "cannot tell a manifest from an index: no mediaType, 'manifests' or 'config'")
    kinds = {kind for _, kind in claims}
    if len(kinds) > 1:
        said = "; ".join(f"{source} says {kind}" for source, kind in claims)
        _fail(where, f"conflicting types: {said}")
    return claims[0][1]


def parse_manifest_or_index(
    data: bytes | bytearray | memoryview,
    media_type: str | None = None,
    *,
    images_only: bool = True,
) -> Manifest | Index:
    """Parse and validate a manifest or an index.

    ``media_type`` is what the descriptor or the registry's Content-Type said; its kind
    (manifest or index) must agree with the body's ``mediaType`` and with the fields
    present, as containerd checks. A Content-Type that is not a manifest type at all
    (``application/json``, ``application/octet-stream``) is ignored; a config or layer
    type is an error. The result's ``media_type`` is the body's ``mediaType``, else the
    given one, else the OCI type of the kind the fields show.

    With ``images_only`` (the default), a manifest whose config is an image config must
    have only image layer types (or known attestation types such as in-toto): anything
    else (a signature, say) is not a container image and raises UnsupportedError.
    """
    where = "manifest"
    size = len(data)
    if size > MAX_MANIFEST_SIZE:
        _fail(where, f"{size} bytes is larger than the {MAX_MANIFEST_SIZE} byte limit")
    if media_type is not None and media_type in mt.SCHEMA1:
        raise _schema1(where, media_type)
    given_kind = _kind_of_type(media_type)
    if media_type and given_kind is None and (mt.is_config(media_type) or mt.is_layer(media_type)):
        _fail(where, f"{media_type!r} is a {mt.kind(media_type)} type, not a manifest type")

    obj = _load_object(data, where)

    body_type, schema = _schema_and_type(obj, where)
    kind = _agreed_kind(obj, body_type, media_type, given_kind, where)
    if body_type:
        resolved = body_type
    elif media_type and given_kind == kind:
        resolved = media_type
    else:
        resolved = mt.OCI_INDEX if kind == "index" else mt.OCI_MANIFEST

    annotations = _annotations(obj, where)
    subject_obj = obj.get("subject")
    subject = (
        Descriptor.from_json(subject_obj, f"{where} subject") if subject_obj is not None else None
    )
    artifact_type = _optional_str(obj, "artifactType", where)

    if kind == "index":
        where = "index"
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            _fail(where, "'manifests' must be a list")
        manifests = [
            Descriptor.from_json(e, f"{where} manifests[{i}]") for i, e in enumerate(entries)
        ]
        return Index(schema, resolved, manifests, annotations, subject, artifact_type)

    if "config" not in obj:
        _fail(where, "'config' is required")
    config = Descriptor.from_json(obj["config"], f"{where} config")
    layers_obj = obj.get("layers")
    if not isinstance(layers_obj, list):
        _fail(where, "'layers' is required and must be a list")
    layers = [Descriptor.from_json(e, f"{where} layers[{i}]") for i, e in enumerate(layers_obj)]
    if images_only and mt.is_config(config.media_type):
        for i, layer in enumerate(layers):
            if not mt.is_layer(layer.media_type) and layer.media_type not in ARTIFACT_LAYER_TYPES:
                raise UnsupportedError(
                    f"{where} layers[{i}]: media type {layer.media_type!r} is not a "
                    "container image layer type"
                )
    return Manifest(schema, resolved, config, layers, annotations, subject, artifact_type)


def parse_config(data: bytes | bytearray | memoryview) -> ImageConfig:
    """Parse and validate an image config (OCI or Docker): ``os`` and ``architecture``
    strings, ``rootfs.type == "layers"`` and valid ``rootfs.diff_ids``."""
    where = "image config"
    obj = _load_object(data, where)
    arch = obj.get("architecture")
    os_name = obj.get("os")
    if not isinstance(arch, str) or not arch:
        _fail(where, "'architecture' is required and must be a string")
    if not isinstance(os_name, str) or not os_name:
        _fail(where, "'os' is required and must be a string")
    variant = _optional_str(obj, "variant", where)
    os_version = _optional_str(obj, "os.version", where)

    run = obj.get("config")
    if run is None:
        run = {}
    if not isinstance(run, dict):
        _fail(where, "'config' must be an object")
    rwhere = f"{where} config"
    labels = run.get("Labels")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        _fail(rwhere, "'Labels' must map strings to strings")

    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict):
        _fail(where, "'rootfs' is required and must be an object")
    if rootfs.get("type") != "layers":
        _fail(where, f"rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    raw_ids = rootfs.get("diff_ids")
    if raw_ids is None:
        raw_ids = []
    if not isinstance(raw_ids, list):
        _fail(where, "rootfs.diff_ids must be a list")
    diff_ids: list[Digest] = []
    for i, d in enumerate(raw_ids):
        if not isinstance(d, str):
            _fail(where, f"rootfs.diff_ids[{i}] must be a string")
        try:
            diff_ids.append(Digest.parse(d))
        except InvalidInputError as e:
            _fail(f"{where} rootfs.diff_ids[{i}]", str(e))

    return ImageConfig(
        architecture=arch,
        os=os_name,
        variant=variant,
        entrypoint=_str_list(run, "Entrypoint", rwhere),
        cmd=_str_list(run, "Cmd", rwhere),
        env=_str_list(run, "Env", rwhere),
        working_dir=_optional_str(run, "WorkingDir", rwhere),
        user=_optional_str(run, "User", rwhere),
        labels=dict(labels),
        diff_ids=diff_ids,
        raw=obj,
        os_version=os_version,
    )


def check_config(manifest: Manifest, config: ImageConfig) -> None:
    """The config must list exactly one diff_id per layer of the manifest."""
    n_ids, n_layers = len(config.diff_ids), len(manifest.layers)
    if n_ids != n_layers:
        raise InvalidContentError(
            f"image config {manifest.config.digest} lists {n_ids} diff_ids but its manifest "
            f"has {n_layers} layers"
        )


def children(desc: Descriptor, data: bytes | bytearray | memoryview) -> list[Descriptor]:
    """containerd's images.Children: an index's manifests, a manifest's config and
    layers (in that order); nothing for any other type. Non-image manifests (artifacts,
    signatures) are accepted here: their children are content all the same."""
    if not (mt.is_index(desc.media_type) or mt.is_manifest(desc.media_type)):
        return []
    return parse_manifest_or_index(data, desc.media_type, images_only=False).children()


# --------------------------------------------------------------------------- selection


def is_attestation(desc: Descriptor) -> bool:
    """A BuildKit attestation entry of an index (annotated so, or ``unknown/unknown``)."""
    if desc.annotations.get(ANNOTATION_REFERENCE_TYPE) == ATTESTATION_MANIFEST:
        return True
    p = desc.platform
    return p is not None and p.os == "unknown" and p.architecture == "unknown"


def select_manifests(
    index: Index, platforms: Sequence[Platform], all_platforms: bool = False
) -> list[Descriptor]:
    """The entries of ``index`` to fetch.

    Only image manifest entries are candidates: nested indexes and unknown media types
    are skipped (the OCI spec says unknown types MUST be ignored), and so are BuildKit
    attestation manifests (``unknown/unknown``), which are not runnable images.

    * ``all_platforms``: every candidate, in index order, including entries without a
      platform.
    * otherwise: for each wanted platform (in order) its best match by
      :func:`cargohold.oci.platform.rank` (containerd's ``platforms.Only``; the first of
      equally good entries wins), each entry once. Entries without a platform are not
      chosen: containerd would try them last and then read their config to learn the
      platform, which needs I/O; here they are left out.
    """
    candidates = [
        d for d in index.manifests if mt.is_manifest(d.media_type) and not is_attestation(d)
    ]
    if all_platforms:
        return candidates
    chosen = select(platforms, [d.platform for d in candidates])
    return [candidates[i] for i in chosen]
