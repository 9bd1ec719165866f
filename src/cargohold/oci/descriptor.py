"""The OCI content descriptor. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import InvalidContentError, InvalidInputError
from cargohold.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class Platform:
    """os/architecture[/variant] plus the optional OCI fields."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "platform") -> Platform:
        if not isinstance(obj, dict):
            raise InvalidContentError(f"{where}: expected an object")
        os_ = obj.get("os")
        arch = obj.get("architecture")
        if not isinstance(os_, str) or not os_ or not isinstance(arch, str) or not arch:
            raise InvalidContentError(f"{where}: 'os' and 'architecture' are required strings")
        variant = obj.get("variant", "") or ""
        osv = obj.get("os.version", "") or ""
        feats = obj.get("os.features", []) or []
        if not isinstance(variant, str) or not isinstance(osv, str) or not isinstance(feats, list):
            raise InvalidContentError(f"{where}: malformed variant / os.version / os.features")
        return cls(os_, arch, variant, osv, tuple(str(f) for f in feats))


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra_json())
        return out

    def extra_json(self) -> dict[str, Any]:
        """The set fields of :meth:`to_json` beyond media type, digest, size and annotations
        (what containerd 1.6 keeps of an image target): platform, urls, artifactType."""
        out: dict[str, Any] = {}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "descriptor") -> Descriptor:
        """Validate and build a descriptor: required fields, valid digest, size >= 0."""
        if not isinstance(obj, dict):
            raise InvalidContentError(f"{where}: expected an object")
        mt = obj.get("mediaType")
        if not isinstance(mt, str) or not mt:
            raise InvalidContentError(f"{where}: 'mediaType' is required")
        dg = obj.get("digest")
        if not isinstance(dg, str):
            raise InvalidContentError(f"{where}: 'digest' is required")
        try:
            digest = Digest.parse(dg)
        except InvalidInputError as e:
            raise InvalidContentError(f"{where}: {e}") from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidContentError(f"{where}: 'size' is required and must be an integer")
        if size < 0:
            raise InvalidContentError(f"{where}: 'size' must not be negative (got {size})")
        ann = obj.get("annotations") or {}
        if not isinstance(ann, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in ann.items()
        ):
            raise InvalidContentError(f"{where}: 'annotations' must map strings to strings")
        plat = obj.get("platform")
        platform = Platform.from_json(plat, f"{where}.platform") if plat is not None else None
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidContentError(f"{where}: 'urls' must be a list of strings")
        at = obj.get("artifactType", "") or ""
        return cls(mt, digest, size, dict(ann), platform, tuple(urls), str(at))
