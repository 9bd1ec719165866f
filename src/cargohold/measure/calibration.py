"""The store's measured unpack speed, kept in ``<root>/calibration.json`` for the planner.

``cargohold calibrate`` (a synthetic image, no network) and ``cargohold bench REF`` (a real
image) measure how fast this store unpacks and save a :class:`Calibration`; the latest
measurement wins. :func:`cost_model` turns it into the planner's
:class:`~cargohold.bake.plan.CostModel` (its other parameters keep their defaults), or gives
:data:`~cargohold.bake.plan.DEFAULT_MODEL` when nothing was measured.

The file is one JSON object with the fields of :class:`Calibration`; unknown keys are
ignored (later versions may add some). It is replaced atomically (temp file in the same
directory, fsync, rename, fsync of the directory), so a reader sees the old or the new
calibration, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.bake.plan import DEFAULT_MODEL, CostModel
from cargohold.errors import InvalidInputError

__all__ = [
    "CALIBRATION_FILE",
    "SOURCES",
    "STORES",
    "Calibration",
    "calibration_path",
    "cost_model",
    "cost_model_for",
    "load_calibration",
    "now_iso",
    "save_calibration",
]

CALIBRATION_FILE = "calibration.json"
SOURCES = ("calibrate", "bench")
STORES = ("embedded", "containerd")


def now_iso() -> str:
    """The current time as ISO 8601 UTC, seconds precision (``2024-05-01T12:00:00Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Calibration:
    """One measurement of the store's unpack speed (validated on construction:
    InvalidInputError for values the planner could not use)."""

    #: Unpacked bytes per second (> 0).
    unpack_throughput: float
    #: Seconds a first create pays besides the unpack itself (>= 0).
    per_image_overhead: float
    #: "calibrate" or "bench".
    source: str
    #: "embedded" or "containerd".
    store: str
    #: ISO 8601 UTC.
    measured_at: str
    #: Unpacked bytes the throughput was measured over.
    sample_bytes: int

    def __post_init__(self) -> None:
        for name in ("unpack_throughput", "per_image_overhead"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInputError(f"calibration: {name} must be a number (got {v!r})")
            object.__setattr__(self, name, float(v))
        if not math.isfinite(self.unpack_throughput) or self.unpack_throughput <= 0:
            raise InvalidInputError(
                f"calibration: unpack_throughput must be > 0 (got {self.unpack_throughput})"
            )
        if not math.isfinite(self.per_image_overhead) or self.per_image_overhead < 0:
            raise InvalidInputError(
                f"calibration: per_image_overhead must be >= 0 (got {self.per_image_overhead})"
            )
        if self.source not in SOURCES:
            raise InvalidInputError(
                f"calibration: source must be one of {', '.join(SOURCES)} (got {self.source!r})"
            )
        if self.store not in STORES:
            raise InvalidInputError(
                f"calibration: store must be one of {', '.join(STORES)} (got {self.store!r})"
            )
        if not isinstance(self.measured_at, str):
            raise InvalidInputError(
                f"calibration: measured_at must be a string (got {self.measured_at!r})"
            )
        try:
            when = datetime.fromisoformat(self.measured_at)
        except ValueError:
            raise InvalidInputError(
                f"calibration: measured_at is not an ISO 8601 time: {self.measured_at!r}"
            ) from None
        if when.tzinfo is None:
            raise InvalidInputError(
                f"calibration: measured_at needs a time zone (UTC): {self.measured_at!r}"
            )
        if (isinstance(self.sample_bytes, bool) or not isinstance(self.sample_bytes, int)
                or self.sample_bytes < 0):
            raise InvalidInputError(
                f"calibration: sample_bytes must be a whole number >= 0 (got {self.sample_bytes!r})"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> Calibration:
        """From the file's object (InvalidInputError if a field is missing or wrong)."""
        if not isinstance(doc, dict):
            raise InvalidInputError("calibration: expected a JSON object")
        names = ("unpack_throughput", "per_image_overhead", "source", "store", "measured_at",
                 "sample_bytes")
        missing = [n for n in names if n not in doc]
        if missing:
            raise InvalidInputError(f"calibration: missing {', '.join(missing)}")
        return cls(**{n: doc[n] for n in names})

    def cost_model(self) -> CostModel:
        """The planner's default cost model with this measured throughput and overhead."""
        return replace(
            DEFAULT_MODEL,
            unpack_throughput=self.unpack_throughput,
            per_image_overhead=self.per_image_overhead,
        )


def calibration_path(root: Path) -> Path:
    """``<root>/calibration.json``."""
    return Path(root) / CALIBRATION_FILE


def load_calibration(root: Path) -> Calibration | None:
    """The saved calibration of the store at ``root``; None if there is none.
    InvalidInputError naming the file if it cannot be read or is not a valid calibration."""
    path = calibration_path(root)
    hint = "rerun `cargohold calibrate` (or `cargohold bench REF`), or delete the file"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InvalidInputError(f"{path}: cannot read the calibration: {e.strerror or e}",
                                hint=hint) from None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{path}: corrupt calibration (not JSON: {e})",
                                hint=hint) from None
    try:
        return Calibration.from_json(doc)
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: corrupt {e.message}", hint=hint) from None


def save_calibration(root: Path, cal: Calibration) -> None:
    """Write ``<root>/calibration.json`` atomically (creating ``root`` if needed): a temp
    file in ``root``, fsync, rename over the old file, fsync of ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = calibration_path(root)
    tmp = root / f".{CALIBRATION_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    data = (json.dumps(cal.to_json(), sort_keys=True, indent=2) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def cost_model(root: Path) -> tuple[CostModel, Calibration | None]:
    """The planner's cost model for the store at ``root``: the measured unpack throughput and
    per-image overhead of its calibration (other parameters: defaults), else
    :data:`~cargohold.bake.plan.DEFAULT_MODEL`; and the calibration used (None if none).
    InvalidInputError if the calibration file is corrupt."""
    cal = load_calibration(root)
    if cal is None:
        return DEFAULT_MODEL, None
    return cal.cost_model(), cal


def cost_model_for(root: Path) -> tuple[CostModel, str]:
    """The planner's cost model and a note saying where it comes from: the last `calibrate` /
    `bench` on this root, else the defaults (also when the calibration is damaged)."""
    try:
        model, cal = cost_model(root)
    except InvalidInputError as e:  # a damaged calibration must not stop a build
        return DEFAULT_MODEL, f"default unpack throughput ({e.message}; run `cargohold calibrate`)"
    if cal is None:
        return model, "default unpack throughput (run `cargohold calibrate` to measure it)"
    return model, (f"unpack throughput {model.unpack_throughput / 1e6:.0f} MB/s "
                   f"(measured by {cal.source} on {cal.measured_at})")
