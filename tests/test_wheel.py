"""The wheel ships containerd's gRPC modules: built with `pip wheel`, installed into a fresh
venv (without grpcio-tools) and run against the real containerd with the proto search path
pointed at an empty directory: `warm` works, and nothing is generated at run time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rig.cli import TEST_ENV, last_json
from tests.rig.containerd import Containerd
from tests.rig.images import push
from tests.rig.services import Registry
from tests.test_warm import random_image
from tests.test_warm_containerd import bake_fetch_only, is_unpacked

REPO = Path(__file__).resolve().parent.parent


def run(*cmd: str | Path, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900,
                       env=env, cwd=cwd, check=False)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.slow
def test_wheel_ships_the_containerd_api_and_warms_without_protos(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO,
        cwd=tmp_path)
    [wheel] = list(wheels.glob("cargohold-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(py, "-m", "pip", "install", "-q", wheel, env=env, cwd=tmp_path)
    # The runtime does not pull grpcio-tools; the API comes from the wheel.
    probe = run(py, "-c", "import importlib.util as u; print(u.find_spec('grpc_tools'))",
                env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "None"

    img = push(registry.host, random_image(121, 300_000, layers=2), tmp_path / "img")
    ns = containerd.unique_namespace("wheel")
    root = tmp_path / "root"
    bake_fetch_only(containerd, ns, root, tmp_path, [(img, 1.0)])

    empty = tmp_path / "no-protos"
    empty.mkdir()
    cache = tmp_path / "api-cache"
    node_env = {**env, **TEST_ENV, "CARGOHOLD_CONTAINERD_PROTO_PATH": str(empty),
                "CARGOHOLD_CONTAINERD_API_CACHE": str(cache)}
    p = run(venv / "bin" / "cargohold", "--root", root, "--store", "containerd", "--address",
            containerd.address, "--namespace", ns, "--json", "warm", "--wait=30",
            env=node_env, cwd=tmp_path)
    assert last_json(p)["images_warmed"] == 1
    assert is_unpacked(containerd, ns, img)
    assert not cache.exists() or not any(cache.iterdir())
