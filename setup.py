"""Build step: generate containerd's gRPC modules and ship them inside the wheel.

Everything else is declared in pyproject.toml. ``build_py`` runs grpcio-tools' protoc (a
build requirement only) over the .proto files Debian ships in
``golang-github-containerd-containerd-dev`` and friends (the build-time input; see
``cargohold.store.containerd.api``) and puts the result, the private top-level package
``cargohold_containerd_gen``, next to ``cargohold`` in the build tree. Nothing generated is
committed. Editable installs skip the step: they generate on first use, as before.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

SRC = Path(__file__).resolve().parent / "src"


def _api_module() -> ModuleType:
    """cargohold.store.containerd.api loaded by path (its package imports grpc; the build
    environment needs only cargohold.errors besides grpcio-tools)."""
    sys.path.insert(0, str(SRC))
    path = SRC / "cargohold" / "store" / "containerd" / "api.py"
    spec = importlib.util.spec_from_file_location("_cargohold_build_api", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithContainerdApi(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        api = _api_module()
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "gen"
            api.generate(api.collect(), dest)
            target = Path(self.build_lib) / api.TOP
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(dest / api.TOP, target)
            shutil.copy2(dest / "MANIFEST.json", target / api.SHIPPED_MANIFEST)


setup(cmdclass={"build_py": BuildPyWithContainerdApi})
