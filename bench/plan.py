"""Bench: the disk-budget planner against three simple rules, on a synthetic node image.

Run from the repository root::

    .venv/bin/python -m bench.plan            # or: .venv/bin/python bench/plan.py

The catalog (deterministic, seed ``SEED``) imitates what a Kubernetes node image caches:
a few versions of each kube-system component, CSI drivers, CNI, monitoring and logging
agents, ingress and mesh proxies, and a handful of 1-5 GB GPU / ML images. Most images
are under 50 MB compressed; they sit on a few distro bases (distroless, alpine, debian,
ubuntu, ubi; a CUDA runtime for the GPU images) whose layers many images share. Image
priorities are Zipf-like (a few images start on every node, most rarely) and unrelated
to the list order, which is grouped by component as in a VHD's component list.

For three budgets -- the compressed total plus 10 % (tight), 40 % (medium) and 80 %
(loose) of the unpacked total -- it prints the expected total first-start penalty
(``sum(priority x seconds)``, :mod:`cargohold.bake.plan`'s objective) of the planner, of the
planner with ``allow_skip=False`` (every image at least fetched), and of

* fetch all: every non-critical image fetched, nothing unpacked ahead;
* pull in order: pull in list order while the budget allows, fetch the rest;
* size rule: pull images under 200 MiB compressed (in list order, while they fit),
  fetch the rest.

The last line is the planner / size-rule ratio at the tightest budget.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass

from cargohold.bake.plan import (
    DEFAULT_MODEL,
    Plan,
    PlanImage,
    baseline_fetch_all,
    baseline_pull_in_order,
    baseline_size_rule,
    plan,
)
from cargohold.units import format_size

SEED = 20251219
MB = 10**6


def _digest(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Layer:
    digest: str
    compressed: int
    unpacked: int


@dataclass(frozen=True)
class _Base:
    """A stack of layers shared by every image built on it."""

    name: str
    layers: tuple[_Layer, ...]


def _layer(rng: random.Random, name: str, compressed: int) -> _Layer:
    ratio = rng.uniform(1.8, 3.4)  # gzip on binaries, text and libraries
    return _Layer(_digest("layer", name), compressed, int(compressed * ratio))


def _bases(rng: random.Random) -> dict[str, _Base]:
    def stack(name: str, *sizes_mb: float, on: _Base | None = None) -> _Base:
        below = on.layers if on else ()
        own = tuple(_layer(rng, f"{name}/{k}", int(s * MB)) for k, s in enumerate(sizes_mb))
        return _Base(name, below + own)

    static = stack("distroless-static", 0.8)
    base = stack("distroless-base", 7.5, on=static)
    alpine = stack("alpine", 3.4)
    debian = stack("debian-slim", 29)
    ubuntu = stack("ubuntu", 29.5)
    ubi = stack("ubi-minimal", 38)
    python = stack("python", 12, 18, on=debian)
    java = stack("temurin-jre", 18, 52, on=ubuntu)
    cuda = stack("cuda-runtime", 60, 480, 900, on=ubuntu)
    return {b.name: b for b in (static, base, alpine, debian, ubuntu, ubi, python, java, cuda)}


# (family, base, (min MB, max MB) of its own layers, versions, own layer count range)
_FAMILIES: list[tuple[str, str, tuple[float, float], int, tuple[int, int]]] = [
    ("registry.k8s.io/pause", "", (0.3, 0.3), 2, (1, 1)),
    ("registry.k8s.io/coredns/coredns", "distroless-static", (13, 16), 3, (1, 2)),
    ("registry.k8s.io/kube-proxy", "distroless-base", (22, 28), 4, (2, 3)),
    ("mcr.microsoft.com/containernetworking/azure-cns", "distroless-base", (30, 45), 3, (2, 3)),
    ("mcr.microsoft.com/containernetworking/azure-cni", "distroless-static", (25, 35), 3, (1, 2)),
    ("quay.io/cilium/cilium", "ubuntu", (120, 160), 2, (3, 5)),
    ("quay.io/cilium/operator-generic", "distroless-static", (28, 35), 2, (1, 2)),
    (
        "registry.k8s.io/sig-storage/csi-node-driver-registrar",
        "distroless-static",
        (8, 11),
        3,
        (1, 1),
    ),
    ("registry.k8s.io/sig-storage/livenessprobe", "distroless-static", (7, 10), 3, (1, 1)),
    ("registry.k8s.io/sig-storage/csi-provisioner", "distroless-static", (24, 30), 2, (1, 1)),
    ("registry.k8s.io/sig-storage/csi-attacher", "distroless-static", (22, 27), 2, (1, 1)),
    ("registry.k8s.io/sig-storage/csi-resizer", "distroless-static", (22, 27), 2, (1, 1)),
    ("registry.k8s.io/sig-storage/csi-snapshotter", "distroless-static", (22, 27), 2, (1, 1)),
    ("mcr.microsoft.com/oss/kubernetes-csi/azuredisk-csi", "debian-slim", (30, 45), 4, (2, 3)),
    ("mcr.microsoft.com/oss/kubernetes-csi/azurefile-csi", "debian-slim", (40, 55), 4, (2, 3)),
    ("mcr.microsoft.com/oss/kubernetes-csi/blob-csi", "debian-slim", (35, 60), 3, (2, 3)),
    (
        "mcr.microsoft.com/oss/kubernetes-csi/secrets-store/driver",
        "distroless-static",
        (20, 30),
        3,
        (1, 2),
    ),
    (
        "mcr.microsoft.com/oss/azure/secrets-store/provider-azure",
        "distroless-static",
        (15, 22),
        2,
        (1, 1),
    ),
    ("mcr.microsoft.com/oss/kubernetes/ip-masq-agent", "distroless-static", (8, 12), 2, (1, 1)),
    (
        "mcr.microsoft.com/oss/kubernetes/kube-state-metrics",
        "distroless-static",
        (14, 18),
        2,
        (1, 1),
    ),
    ("mcr.microsoft.com/oss/kubernetes/metrics-server", "distroless-static", (18, 24), 3, (1, 1)),
    (
        "mcr.microsoft.com/oss/kubernetes/autoscaler/cluster-proportional-autoscaler",
        "distroless-static",
        (10, 14),
        2,
        (1, 1),
    ),
    (
        "mcr.microsoft.com/oss/kubernetes/apiserver-network-proxy/agent",
        "distroless-static",
        (9, 12),
        3,
        (1, 1),
    ),
    ("mcr.microsoft.com/azuremonitor/containerinsights/ciprod", "ubuntu", (250, 380), 3, (4, 6)),
    (
        "mcr.microsoft.com/azuremonitor/containerinsights/ciprod-win-cache",
        "ubuntu",
        (120, 180),
        1,
        (3, 4),
    ),
    ("mcr.microsoft.com/oss/fluent/fluent-bit", "debian-slim", (18, 26), 3, (2, 3)),
    ("docker.io/grafana/promtail", "debian-slim", (40, 60), 2, (2, 3)),
    ("quay.io/prometheus/node-exporter", "alpine", (10, 13), 3, (1, 2)),
    ("quay.io/prometheus/prometheus", "alpine", (85, 110), 2, (2, 3)),
    (
        "quay.io/prometheus-operator/prometheus-config-reloader",
        "distroless-static",
        (5, 7),
        2,
        (1, 1),
    ),
    ("otel/opentelemetry-collector-contrib", "distroless-static", (70, 95), 2, (1, 2)),
    ("docker.io/datadog/agent", "ubuntu", (280, 420), 2, (4, 6)),
    (
        "mcr.microsoft.com/oss/open-policy-agent/gatekeeper",
        "distroless-static",
        (30, 40),
        3,
        (1, 1),
    ),
    ("mcr.microsoft.com/azure-policy/policy-kubernetes-addon-prod", "alpine", (25, 35), 2, (2, 3)),
    ("mcr.microsoft.com/oss/kubernetes/ingress-nginx/controller", "alpine", (95, 120), 3, (3, 5)),
    ("docker.io/envoyproxy/envoy", "ubuntu", (55, 70), 2, (2, 3)),
    ("docker.io/istio/proxyv2", "ubuntu", (75, 95), 3, (2, 4)),
    ("docker.io/istio/pilot", "distroless-base", (25, 35), 2, (1, 2)),
    ("cr.l5d.io/linkerd/proxy", "distroless-static", (15, 20), 2, (1, 1)),
    ("mcr.microsoft.com/oss/calico/node", "ubi-minimal", (90, 110), 2, (3, 4)),
    ("mcr.microsoft.com/oss/calico/typha", "ubi-minimal", (25, 32), 2, (1, 2)),
    (
        "mcr.microsoft.com/oss/kubernetes/windows-gmsa-webhook",
        "distroless-static",
        (12, 16),
        1,
        (1, 1),
    ),
    ("mcr.microsoft.com/aks/ip-masq-agent-v2", "distroless-static", (9, 12), 2, (1, 1)),
    ("mcr.microsoft.com/oss/kubernetes/kube-rbac-proxy", "distroless-static", (12, 16), 2, (1, 1)),
    ("docker.io/bitnami/kubectl", "debian-slim", (45, 60), 2, (2, 3)),
    ("mcr.microsoft.com/oss/busybox", "", (2, 2.3), 1, (1, 1)),
    ("ghcr.io/kedacore/keda", "distroless-static", (30, 40), 2, (1, 1)),
    (
        "mcr.microsoft.com/oss/kubernetes/kubernetes-dashboard",
        "distroless-static",
        (60, 70),
        1,
        (1, 1),
    ),
    ("quay.io/jetstack/cert-manager-controller", "distroless-static", (15, 20), 2, (1, 1)),
    ("docker.io/library/python-tools", "python", (20, 60), 3, (2, 4)),
    ("mcr.microsoft.com/oss/kafka-exporter", "temurin-jre", (20, 40), 2, (1, 2)),
    (
        "mcr.microsoft.com/oss/kubernetes/azure-cloud-node-manager",
        "distroless-base",
        (20, 28),
        4,
        (1, 2),
    ),
    (
        "registry.k8s.io/node-problem-detector/node-problem-detector",
        "debian-slim",
        (35, 45),
        3,
        (2, 3),
    ),
    ("mcr.microsoft.com/containernetworking/retina-agent", "distroless-base", (40, 55), 3, (2, 3)),
    ("registry.k8s.io/autoscaling/vpa-recommender", "distroless-static", (15, 20), 2, (1, 1)),
    ("registry.k8s.io/autoscaling/vpa-updater", "distroless-static", (15, 20), 2, (1, 1)),
    ("mcr.microsoft.com/oss/kubernetes/external-dns", "distroless-static", (25, 32), 2, (1, 1)),
    ("docker.io/rancher/local-path-provisioner", "alpine", (15, 20), 2, (1, 2)),
    ("mcr.microsoft.com/oss/kubernetes/kube-vip", "distroless-static", (12, 16), 2, (1, 1)),
    ("nvcr.io/nvidia/k8s-device-plugin", "ubuntu", (45, 60), 2, (2, 3)),
    ("nvcr.io/nvidia/k8s/dcgm-exporter", "cuda-runtime", (180, 260), 2, (2, 4)),
    ("mcr.microsoft.com/aks/aks-gpu-cuda", "cuda-runtime", (140, 200), 2, (2, 3)),
    ("nvcr.io/nvidia/gpu-operator", "ubi-minimal", (90, 120), 1, (2, 3)),
    ("nvcr.io/nvidia/tritonserver", "cuda-runtime", (2600, 3400), 1, (5, 8)),
    ("nvcr.io/nvidia/pytorch", "cuda-runtime", (3200, 4200), 1, (6, 9)),
    ("mcr.microsoft.com/aks/ml/inference-runtime", "cuda-runtime", (700, 1100), 2, (3, 5)),
]

#: Images every node starts at boot: always pulled.
_CRITICAL = {
    "registry.k8s.io/pause",
    "registry.k8s.io/coredns/coredns",
    "registry.k8s.io/kube-proxy",
    "mcr.microsoft.com/containernetworking/azure-cns",
}


def catalog(seed: int = SEED) -> list[PlanImage]:
    """The synthetic node-image catalog (>= 150 images), deterministic for ``seed``."""
    rng = random.Random(seed)
    bases = _bases(rng)
    images: list[tuple[str, bool, list[_Layer]]] = []
    for family, base_name, (lo, hi), versions, (nmin, nmax) in _FAMILIES:
        base = bases[base_name].layers if base_name else ()
        for v in range(versions):
            name = f"{family}:v1.{20 + v}.{rng.randint(0, 9)}"
            total = rng.uniform(lo, hi) * MB
            count = rng.randint(nmin, nmax)
            cuts = sorted(rng.random() for _ in range(count))
            shares = [b - a for a, b in zip([0.0, *cuts[:-1]], cuts, strict=True)] or [1.0]
            scale = sum(shares)
            own = [
                _layer(rng, f"{name}/{k}", max(1024, int(total * s / scale)))
                for k, s in enumerate(shares)
            ]
            # the newest version of a critical component is critical; older ones are auto
            images.append((name, family in _CRITICAL and v == versions - 1, [*base, *own]))

    n = len(images)
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    out: list[PlanImage] = []
    for (name, critical, layers), rank in zip(images, ranks, strict=True):
        priority = round(50.0 / rank**1.1, 4)  # Zipf-like: 50, 23, 15, ... 0.2
        blobs = [
            (_digest("index", name), 1_600),
            (_digest("manifest", name), rng.randint(500, 2_500)),
            (_digest("config", name), rng.randint(1_500, 12_000)),
            *((layer.digest, layer.compressed) for layer in layers),
        ]
        chains: list[tuple[str, int]] = []
        parent = ""
        for layer in layers:
            parent = _digest("chain", parent, layer.digest)
            chains.append((parent, layer.unpacked))
        out.append(PlanImage(name, critical, priority, "auto", blobs, chains))
    return out


def totals(images: list[PlanImage]) -> tuple[int, int]:
    """(compressed bytes of every distinct blob, unpacked bytes of every distinct chain)."""
    blobs: dict[str, int] = {}
    chains: dict[str, int] = {}
    for img in images:
        blobs.update(img.blobs)
        chains.update(img.chains)
    return sum(blobs.values()), sum(chains.values())


def main() -> int:
    started = time.monotonic()
    images = catalog()
    compressed, unpacked = totals(images)
    small = sum(1 for img in images if sum(s for _, s in img.blobs) < 50 * MB)
    big = sum(1 for img in images if sum(s for _, s in img.blobs) >= 1000 * MB)
    print(
        f"catalog: {len(images)} images ({small} under 50 MB, {big} of 1 GB or more, "
        f"{sum(img.critical for img in images)} critical); compressed "
        f"{format_size(compressed)}, unpacked {format_size(unpacked)}; "
        f"unpack at {DEFAULT_MODEL.unpack_throughput / MB:.0f} MB/s, "
        f"+{DEFAULT_MODEL.per_image_overhead} s per fetched image"
    )
    print()
    print(
        "| budget | planner | planner, no skip | fetch all | pull in order "
        "| size rule (200 MiB) | planner / size rule | planner pull / fetch / skip |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ratios: list[float] = []
    worst = 0.0
    for label, frac in (("tight", 0.10), ("medium", 0.40), ("loose", 0.80)):
        budget = compressed + int(frac * unpacked)
        best = plan(images, budget)
        no_skip = plan(images, budget, allow_skip=False)
        base: list[Plan] = [
            baseline_fetch_all(images, budget),
            baseline_pull_in_order(images, budget),
            baseline_size_rule(images, budget),
        ]
        for p in (best, no_skip, *base):
            assert p.feasible and p.total_bytes <= budget, p.algorithm
        assert not no_skip.names("skip")
        worst = max(
            worst, *(p.total_penalty - b.total_penalty for b in base for p in (best, no_skip))
        )
        ratio = best.total_penalty / base[2].total_penalty if base[2].total_penalty else 0.0
        ratios.append(ratio)
        counts = " / ".join(str(len(best.names(d))) for d in ("pull", "fetch", "skip"))
        cells = " | ".join(f"{p.total_penalty:,.1f} s" for p in (best, no_skip, *base))
        print(
            f"| {label}: {format_size(budget)} (+{frac:.0%} of unpacked) | {cells} "
            f"| {ratio:.2f} | {counts} |"
        )
    print()
    print(f"planner never worse than a baseline: {worst <= 1e-9}")
    print(f"elapsed: {time.monotonic() - started:.2f} s")
    print(f"planner / size rule at the tightest budget: {ratios[0]:.3f}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
