"""Reading back the labels a bake writes on image records (names in ``cargohold.labels``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from cargohold.labels import LABEL_CRI_PINNED, LABEL_CRITICAL, LABEL_PRIORITY, PINNED

#: The priority of an image whose record carries none (the spec's default).
DEFAULT_PRIORITY = 1.0


def image_priority(labels: Mapping[str, str]) -> float:
    try:
        p = float(labels.get(LABEL_PRIORITY, DEFAULT_PRIORITY))
    except ValueError:
        return DEFAULT_PRIORITY
    return p if math.isfinite(p) and p >= 0 else DEFAULT_PRIORITY


def image_critical(labels: Mapping[str, str]) -> bool:
    return labels.get(LABEL_CRITICAL, "").lower() == "true"


def image_pinned(labels: Mapping[str, str]) -> bool:
    return labels.get(LABEL_CRI_PINNED) == PINNED
