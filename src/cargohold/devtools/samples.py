"""Build the sample images and push them to a registry (demo, benchmarks)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from cargohold.errors import CargoholdError
from cargohold.imagebuild import samples
from cargohold.imagebuild.image import ImageSpec
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.reference import parse_reference


@dataclass
class Pushed:
    ref: str
    root: Descriptor
    compressed: int


def demo_specs(big_size: int) -> dict[str, ImageSpec]:
    """The README demo's catalogue: small images, one critical, one big one."""
    specs = dict(samples.small_images())
    specs["critical"] = samples.critical_image()
    if big_size > 0:
        specs["big"] = samples.big_image(big_size)
    with contextlib.suppress(CargoholdError):  # busybox-static is optional for the demo
        specs["busybox"] = samples.busybox()
    return specs


def push_specs(
    specs: dict[str, ImageSpec], registry: str, workdir: Path, *, tag: str = "1.0"
) -> list[Pushed]:
    """Build each spec under ``workdir`` and push it as ``<registry>/samples/<name>:<tag>``."""
    from cargohold.registry.client import RegistryClient
    from cargohold.registry.push import push_image

    client = RegistryClient(plain_http=True)
    out: list[Pushed] = []
    for key, spec in specs.items():
        built = spec.build(workdir / key)
        ref = parse_reference(f"{registry}/samples/{key}:{tag}")
        root = push_image(client, ref, built)
        out.append(Pushed(str(ref), root, built.total_size()))
    return out
