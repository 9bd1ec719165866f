"""The saved plan of a bake (``<root>/bakes/<key>.json``): what a later bake of the same spec
reuses while it still applies (see :mod:`cargohold.bake.baker`).

Typed here (:class:`SavedBake`); JSON only in the file. A file that is damaged, of another
version or not a saved bake at all reads as None: it only costs a fresh plan.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.bake.catalog import CatalogPlan
from cargohold.bake.spec import CacheSpec

__all__ = [
    "STATE_DIR",
    "STATE_VERSION",
    "PlanKey",
    "SavedBake",
    "load_state",
    "now",
    "spec_digest",
    "spec_path",
    "state_path",
]

STATE_DIR = "bakes"
STATE_VERSION = 1


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def spec_digest(spec: CacheSpec) -> str:
    """sha256 of the spec file's bytes as :func:`~cargohold.bake.spec.load_spec` read them (what
    a reused plan is keyed by); of the spec's path for a spec parsed from text."""
    return spec.digest or "sha256:" + hashlib.sha256(spec.path.encode()).hexdigest()


def spec_path(spec: CacheSpec) -> str:
    """The spec's file as an absolute path (a spec parsed from text: its name as given)."""
    return os.path.abspath(spec.path) if spec.digest else spec.path


def state_path(root: Path, spec: CacheSpec, store: str, namespace: str) -> Path:
    key = hashlib.sha256(
        f"{spec_digest(spec)}\0{store}\0{namespace}".encode()
    ).hexdigest()[:20]
    return Path(root) / STATE_DIR / f"{key}.json"


@dataclass(frozen=True)
class PlanKey:
    """What, besides the spec and the digests, a saved plan was made for (``options``)."""

    budget: int | None
    snapshotter: str
    cri_records: bool

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "snapshotter": self.snapshotter,
                "cri_records": self.cri_records}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PlanKey:
        budget = doc["budget"]
        return cls(None if budget is None else int(budget), str(doc["snapshotter"]),
                   bool(doc["cri_records"]))


@dataclass(frozen=True)
class SavedBake:
    """A bake's saved plan and how far the bake got (``status``: ``baking``, ``complete`` or
    ``failed``), with the digest and platforms every image was planned with."""

    status: str
    spec: str
    spec_digest: str
    store: str
    namespace: str
    options: PlanKey
    digests: Mapping[str, str]
    platforms: Mapping[str, tuple[str, ...]]
    plan: CatalogPlan
    updated_at: str = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "status": self.status,
            "updated_at": self.updated_at,
            "spec": self.spec,
            "spec_digest": self.spec_digest,
            "store": self.store,
            "namespace": self.namespace,
            "options": self.options.to_json(),
            "digests": dict(self.digests),
            "platforms": {k: list(v) for k, v in self.platforms.items()},
            "plan": self.plan.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SavedBake:
        """The state :meth:`to_json` wrote (KeyError, TypeError, ValueError otherwise)."""
        if doc["version"] != STATE_VERSION:
            raise ValueError(f"saved bake version {doc['version']!r}")
        return cls(
            status=str(doc["status"]),
            updated_at=str(doc["updated_at"]),
            spec=str(doc["spec"]),
            spec_digest=str(doc["spec_digest"]),
            store=str(doc["store"]),
            namespace=str(doc["namespace"]),
            options=PlanKey.from_json(doc["options"]),
            digests={str(k): str(v) for k, v in doc["digests"].items()},
            platforms={str(k): tuple(str(p) for p in v) for k, v in doc["platforms"].items()},
            plan=CatalogPlan.from_json(doc["plan"]),
        )


def load_state(path: Path) -> SavedBake | None:
    """The saved bake at ``path``; None when there is none or it cannot be read (damaged,
    another version): that only costs a fresh plan."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return SavedBake.from_json(doc)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
