"""Build images with cargohold's builder and push them with its own push code."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from cargohold.imagebuild.image import BuiltImage, ImageSpec, build_index
from cargohold.oci.reference import Reference, parse_reference
from cargohold.registry.client import RegistryClient
from cargohold.registry.push import push_image

_counter = itertools.count()


@dataclass
class Pushed:
    ref: Reference
    built: BuiltImage

    @property
    def text(self) -> str:
        return str(self.ref)


def unique_repo(prefix: str = "t") -> str:
    return f"{prefix}{next(_counter)}"


def push(host: str, spec: ImageSpec | BuiltImage, workdir: Path, *, repo: str = "",
         tag: str = "v1", chunked: bool = False) -> Pushed:
    built = spec if isinstance(spec, BuiltImage) else spec.build(workdir)
    ref = parse_reference(f"{host}/{repo or unique_repo()}:{tag}")
    push_image(RegistryClient(plain_http=True), ref, built, chunked=chunked)
    return Pushed(ref, built)


def push_index(host: str, specs: list[ImageSpec], workdir: Path, *, repo: str = "",
               media: str = "oci") -> Pushed:
    images = [s.build(workdir / f"m{i}") for i, s in enumerate(specs)]
    idx = build_index(images, workdir=workdir / "index", media=media)  # type: ignore[arg-type]
    return push(host, idx, workdir, repo=repo)
