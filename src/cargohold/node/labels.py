"""The labels a bake writes on image records and the node-side commands read back."""

from __future__ import annotations

import math
from collections.abc import Mapping

#: The spec's ``priority`` (a float >= 0) and ``critical`` (``true``), written by ``bake``.
LABEL_PRIORITY = "io.cargohold.priority"
LABEL_CRITICAL = "io.cargohold.critical"
#: CRI's pin: kubelet's image GC leaves an image with this label alone (containerd >= 1.7.3,
#: kubelet >= 1.28).
LABEL_CRI_PINNED = "io.cri-containerd.pinned"
PINNED = "pinned"

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
