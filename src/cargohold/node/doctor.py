"""`cargohold doctor`: checks of a node's settings, each ok / warn / fail with one line of
advice. The parsers and judgements here are pure; the CLI gathers the facts."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cargohold.labels import LABEL_CRI_PINNED

__all__ = [
    "Check",
    "ContainerdFacts",
    "KubeletFacts",
    "check_containerd_config",
    "check_kubelet_config",
    "check_pin_support",
    "read_containerd_config",
    "read_kubelet_config",
]

OK, WARN, FAIL = "ok", "warn", "fail"

#: kubelet's defaults (KubeletConfiguration v1beta1).
KUBELET_HIGH_DEFAULT = 85
KUBELET_LOW_DEFAULT = 80
#: The first containerd that honours io.cri-containerd.pinned.
PIN_MIN_VERSION = (1, 7, 3)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    advice: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message,
                "advice": self.advice}


class ConfigError(Exception):
    """A config file that cannot be read or parsed: the message names the file and line."""


@dataclass(frozen=True)
class ContainerdFacts:
    path: str
    snapshotter: str
    discard_unpacked_layers: bool
    config_path: str


@dataclass(frozen=True)
class KubeletFacts:
    path: str
    high: int
    low: int
    max_age: str


def _read_text(path: Path) -> str | None:
    """The file's text; None if it does not exist; ConfigError if unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None


def _dig(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def read_containerd_config(path: Path) -> ContainerdFacts | None:
    """CRI's image settings from containerd's config.toml (version 2: the
    ``io.containerd.grpc.v1.cri`` plugin; version 3: ``io.containerd.cri.v1.images``).
    None if the file does not exist; ConfigError if it does not parse."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    plugins = doc.get("plugins") if isinstance(doc.get("plugins"), dict) else {}
    v2 = _dig(plugins, "io.containerd.grpc.v1.cri") or {}
    v3 = _dig(plugins, "io.containerd.cri.v1.images") or {}
    snap = _dig(v3, "snapshotter") or _dig(v2, "containerd", "snapshotter") or "overlayfs"
    discard = _dig(v3, "discard_unpacked_layers")
    if discard is None:
        discard = _dig(v2, "containerd", "discard_unpacked_layers")
    cfg_path = _dig(v3, "registry", "config_path") or _dig(v2, "registry", "config_path") or ""
    return ContainerdFacts(str(path), str(snap), bool(discard), str(cfg_path))


def read_kubelet_config(path: Path) -> KubeletFacts | None:
    """Image GC settings from kubelet's config.yaml; None if missing; ConfigError if it does
    not parse (naming the line) or holds wrong types."""
    import yaml

    text = _read_text(path)
    if text is None:
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a KubeletConfiguration mapping")

    def pct(key: str, default: int) -> int:
        v = doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
            raise ConfigError(f"{path}: {key} must be a whole number from 0 to 100 (got {v!r})")
        return v

    age = doc.get("imageMaximumGCAge", "0s")
    return KubeletFacts(str(path), pct("imageGCHighThresholdPercent", KUBELET_HIGH_DEFAULT),
                        pct("imageGCLowThresholdPercent", KUBELET_LOW_DEFAULT), str(age))


def parse_version(text: str) -> tuple[int, ...]:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        return ()
    return tuple(int(g or 0) for g in m.groups())


def check_pin_support(version: str) -> Check:
    v = parse_version(version)
    if v and v >= PIN_MIN_VERSION:
        return Check("pin-support", OK, f"containerd {version} honours {LABEL_CRI_PINNED}")
    return Check("pin-support", WARN,
                 f"containerd {version or '?'} ignores {LABEL_CRI_PINNED} "
                 "(it needs >= 1.7.3, and kubelet >= 1.28)",
                 "kubelet's image GC may delete critical images: keep disk use below "
                 "imageGCHighThresholdPercent with `cargohold evict`, or upgrade containerd")


def check_containerd_config(facts: ContainerdFacts | None, path: Path,
                            snapshotter: str) -> list[Check]:
    if facts is None:
        return [Check("containerd-config", WARN, f"{path}: not found",
                      "pass --containerd-config if containerd reads another file")]
    out = []
    if facts.snapshotter != snapshotter:
        out.append(Check("cri-snapshotter", FAIL,
                         f"CRI uses snapshotter {facts.snapshotter!r}, cargohold unpacks into "
                         f"{snapshotter!r}",
                         "set cargohold's snapshotter setting to CRI's, or kubelet unpacks "
                         "every image again"))
    else:
        out.append(Check("cri-snapshotter", OK, f"CRI and cargohold use {snapshotter!r}"))
    if facts.discard_unpacked_layers:
        out.append(Check("discard-unpacked-layers", FAIL,
                         "discard_unpacked_layers = true: containerd deletes compressed layers "
                         "once unpacked",
                         "set it to false: a demoted image cannot be unpacked again without its "
                         "compressed content, and `verify` cannot check it"))
    else:
        out.append(Check("discard-unpacked-layers", OK, "compressed layers are kept"))
    if facts.config_path:
        out.append(Check("registry-config-path", OK,
                         f"mirrors from hosts.toml under {facts.config_path}"))
    else:
        out.append(Check("registry-config-path", WARN,
                         "registry config_path is not set: containerd ignores hosts.toml mirrors",
                         'set config_path = "/etc/containerd/certs.d" in the CRI registry '
                         "section (cargohold reads the same directory)"))
    return out


def check_kubelet_config(facts: KubeletFacts | None, path: Path,
                         keep_free_pct: float | None) -> list[Check]:
    if facts is None:
        return [Check("kubelet-config", WARN, f"{path}: not found",
                      "pass --kubelet-config if kubelet reads another file")]
    out = []
    trigger = 100 - facts.high
    what = (f"kubelet's image GC starts at {facts.high} % used ({trigger} % free) and "
            f"deletes down to {facts.low} %")
    if keep_free_pct is None:
        out.append(Check("evict-floor", WARN, what + "; no evict floor given",
                         f"run `cargohold evict --keep-free {trigger + 5}%` from the timer"))
    elif keep_free_pct > trigger:
        out.append(Check("evict-floor", OK,
                         what + f"; evict keeps {keep_free_pct:g} % free, so it demotes first"))
    else:
        out.append(Check("evict-floor", FAIL,
                         what + f"; evict keeps only {keep_free_pct:g} % free",
                         f"raise evict's --keep-free above {trigger} % (e.g. {trigger + 5}%) so "
                         "demotion happens before kubelet deletes images"))
    if facts.max_age not in ("", "0", "0s", "0m", "0h", "None"):
        out.append(Check("image-max-gc-age", WARN,
                         f"imageMaximumGCAge = {facts.max_age}: images unused that long are "
                         "deleted, baked ones too",
                         "leave imageMaximumGCAge unset (0) on nodes with baked images, or pin "
                         "the images that must stay"))
    else:
        out.append(Check("image-max-gc-age", OK, "imageMaximumGCAge is off"))
    return out


def worst(checks: Sequence[Check]) -> str:
    statuses = {c.status for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
