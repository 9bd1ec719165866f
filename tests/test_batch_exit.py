"""A batch (fetch, pull, bake of several images) that failed entirely for one cause exits
with that cause's code; 12 is for a partial failure. Messages say the cause in words."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold import errors
from cargohold.imagebuild.entries import File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.rig.cli import run_cli
from tests.rig.images import push
from tests.rig.services import Registry


@pytest.fixture
def refused() -> Iterator[str]:
    """host:port of a loopback port bound but not listening: every connect is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def _batch(command: str, refs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``command`` of ``refs`` (bake: of a plain list spec naming them)."""
    if command == "bake":
        spec = tmp_path / "spec.txt"
        spec.write_text("\n".join(refs) + "\n")
        return run_cli(tmp_path / "store", "bake", "--plain-http", str(spec), check=False)
    return run_cli(tmp_path / "store", command, "--plain-http", *refs, check=False)


@pytest.mark.parametrize("command", ["fetch", "pull", "bake"])
def test_all_failed_for_one_cause_exits_with_its_code(command: str, refused: str,
                                                       tmp_path: Path) -> None:
    p = _batch(command, [f"{refused}/a:1", f"{refused}/b:1"], tmp_path)
    assert p.returncode == errors.UnavailableError.exit_code, p.stderr
    assert f"connection refused by {refused}" in p.stderr
    assert "Errno" not in p.stdout + p.stderr and "ConnectionRefusedError" not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("command", ["fetch", "bake"])
def test_partial_failure_is_12(command: str, refused: str, registry: Registry,
                               tmp_path: Path) -> None:
    good = push(registry.host, ImageSpec([LayerSpec([File("f", size=1000, seed=3)])]),
                tmp_path / "img")
    p = _batch(command, [good.text, f"{refused}/b:1"], tmp_path)
    assert p.returncode == errors.PartialFailureError.exit_code, p.stderr
    assert f"connection refused by {refused}" in p.stdout + p.stderr


@pytest.mark.parametrize("command", ["fetch", "pull"])
@pytest.mark.parametrize("partial", [False, True], ids=["all-failed", "partial"])
@pytest.mark.parametrize("quiet", [False, True], ids=["", "-q"])
def test_each_failure_is_printed_once(command: str, partial: bool, quiet: bool, refused: str,
                                      registry: Registry, tmp_path: Path) -> None:
    """A failed image's cause is printed once on stderr: by its progress line, or (with
    -q, which silences those) by an ``error:`` line; the exit code rule is unchanged."""
    bad = [f"{refused}/a:1", f"{refused}/b:1"]
    refs = bad[:1] if partial else bad
    if partial:
        refs = [push(registry.host, ImageSpec([LayerSpec([File("f", size=1000, seed=5)])]),
                     tmp_path / "img").text, *refs]
    args = ["-q"] if quiet else []
    p = run_cli(tmp_path / "store", *args, command, "--plain-http", *refs, check=False)
    code = errors.PartialFailureError if partial else errors.UnavailableError
    assert p.returncode == code.exit_code, p.stderr
    for ref in refs[1:] if partial else refs:
        named = [line for line in p.stderr.splitlines()
                 if ref in line and "connection refused" in line]
        assert len(named) == 1, p.stderr
        assert named[0].startswith("error: " if quiet else "failed "), p.stderr
