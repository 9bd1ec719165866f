"""Bad input never prints a Python traceback: each case exits with its documented code.

One table of (setup, command line, exit code): a root that is a file or cannot exist,
damaged databases, an out-of-range port, an undecodable config file, a spec nested too
deep, a missing store for read-only commands, a lost metadata.db next to existing data.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold import errors
from cargohold.bake.spec import SPEC_MAX_BYTES
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.rig.cli import TEST_ENV
from tests.rig.images import Pushed, push
from tests.rig.services import Registry

CLI = [sys.executable, "-m", "cargohold"]


@dataclass
class Store:
    """A pulled image and a container of it; copied afresh for each case (``template``)."""

    template: Path
    image: Pushed


@pytest.fixture(scope="module")
def pulled(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Store:
    work = tmp_path_factory.mktemp("bad-input")
    spec = ImageSpec([LayerSpec([Dir("data"), File("data/f", size=50_000, seed=7)])],
                     cmd=["/bin/true"])
    image = push(registry.host, spec, work / "img")
    root = work / "template"
    p = subprocess.run([*CLI, "--root", str(root), "pull", "--plain-http", image.text],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **TEST_ENV})
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*CLI, "--root", str(root), "create", image.text, "c0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **TEST_ENV})
    assert p.returncode == 0, p.stderr
    return Store(root, image)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database\n" * 200)


def _garbage_after_header(path: Path) -> None:
    """Valid SQLite header, garbage pages: fails on the first query, not on open."""
    data = bytearray(path.read_bytes())
    for i in range(100, len(data)):
        data[i] = (i * 7) & 0xFF
    path.write_bytes(bytes(data))


def _damaged_later_page(path: Path) -> None:
    """Many rows, then garbage after the first pages: opens fine, a query fails."""
    c = sqlite3.connect(path)
    c.executemany("INSERT INTO snapshots (key, kind, parent, labels, created_at, updated_at)"
                  " VALUES (?, 'committed', '', ?, 'x', 'x')",
                  [(f"k{i}", '{"l": "' + "v" * 200 + '"}') for i in range(3000)])
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    data = bytearray(path.read_bytes())
    for i in range(4 * 4096, len(data)):
        data[i] = (i * 7) & 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(b"")


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _nested_spec(path: Path) -> None:
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")


def _non_utf8(path: Path) -> None:
    path.write_bytes(b"root = \"\xff\xfe\"\n")


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    #: what to do to a copy of the pulled store before running (None: an empty tmp dir)
    damage: Callable[[Path], None] | None = None
    #: a file in that store to damage (relative to the root)
    target: str = ""
    #: text the error message must contain ({root}, {tmp} substituted)
    says: str = ""
    #: the store must not have been created or changed by the command
    untouched: bool = False
    #: more text the error output must contain
    says_also: str = ""


SNAP_DB = "snapshots/metadata.db"
CASES = [
    Case("root is a file", ["--root", "{tmp}/file", "images", "ls"],
         errors.InvalidInputError.exit_code, says="not a directory"),
    Case("root is /etc/hostname", ["--root", "/etc/hostname", "images", "ls"],
         errors.InvalidInputError.exit_code, says="/etc/hostname"),
    Case("root under /proc", ["--root", "/proc/1/x", "fetch", "--plain-http", "127.0.0.1:1/x:y"],
         errors.InvalidInputError.exit_code, says="/proc/1/x"),
    Case("port out of range", ["--root", "{tmp}/s", "fetch", "127.0.0.1:99999/x:y"],
         errors.InvalidInputError.exit_code, says="port"),
    Case("config not UTF-8", ["--config", "{tmp}/bad.toml", "--root", "{tmp}/s", "images", "ls"],
         errors.InvalidInputError.exit_code, says="bad.toml"),
    Case("spec nested too deep", ["--root", "{tmp}/s", "plan", "{tmp}/deep.toml"],
         errors.InvalidInputError.exit_code, says="deep.toml"),
    *(Case(f"missing store: {' '.join(cmd)}", ["--root", "{tmp}/typo", *cmd],
           errors.NotFoundError.exit_code, says="{tmp}/typo", untouched=True)
      for cmd in (["images", "ls"], ["du"], ["verify"], ["content", "ls"],
                  ["containers", "ls"], ["images", "inspect", "x"], ["images", "rm", "x"],
                  ["images", "tag", "x", "y"], ["content", "rm", "sha256:" + "0" * 64],
                  ["gc"], ["gc", "--dry-run"], ["warm"], ["warm", "{tmp}/spec.txt"],
                  ["warm", "--keep-free", "10%", "--metrics-textfile", "{tmp}"],
                  ["evict", "--free", "1", "--metrics-textfile", "{tmp}"])),
    *(Case(f"missing store: {' '.join(cmd)}", ["--root", "{tmp}/typo", *cmd],
           errors.NotFoundError.exit_code, says="{tmp}/typo", untouched=True)
      for cmd in (["containers", "rm", "c0"], ["mount", "c0", "{tmp}/mnt"],
                  ["create", "{ref}", "c1"], ["unpack", "{ref}"], ["run", "{ref}"])),
    Case("empty --root", ["--root", "", "images", "ls"], errors.InvalidInputError.exit_code,
         says="--root: root is empty"),
    Case("empty root in the config file", ["--config", "{tmp}/empty-root.toml", "images", "ls"],
         errors.InvalidInputError.exit_code, says="empty-root.toml: root is empty"),
    *(Case(f"containerd socket {why}: images ls",
           ["--store", "containerd", "--address", sock, "images", "ls"],
           errors.UnavailableError.exit_code, says=f"containerd at {sock} is unavailable",
           says_also=cause)
      for why, sock, cause in (
          ("missing", "{tmp}/no.sock", "no such socket (the path does not exist)"),
          ("a regular file", "{tmp}/file", "not a socket (a regular file)"),
          ("a directory", "{tmp}", "not a socket (a directory)"),
          ("dead", "{tmp}/dead.sock", "connection refused: nothing listens on the socket"))),
    *(Case(f"containerd socket missing: {' '.join(cmd)}",
           ["--store", "containerd", "--address", "{tmp}/no.sock", *cmd],
           errors.UnavailableError.exit_code, says="containerd at {tmp}/no.sock is unavailable",
           says_also="no such socket")
      for cmd in (["content", "ls"], ["du"], ["verify"], ["fetch", "{ref}"], ["pull", "{ref}"],
                  ["bake", "{tmp}/spec.txt"], ["images", "inspect", "x"], ["unpack", "x"],
                  ["status"], ["evict", "--dry-run", "--free", "1MB"],
                  ["plan", "{tmp}/spec.txt"])),
    *(Case(f"spec is {what}: {cmd}", ["--root", "{tmp}/s", cmd, spec],
           errors.InvalidInputError.exit_code, says=says, untouched=True)
      for cmd in ("plan", "bake")
      for what, spec, says in (
          ("/dev/zero", "/dev/zero", "cache spec /dev/zero is a character device, not a file"),
          ("a directory", "{tmp}", "is a directory, not a file"),
          ("over 16 MiB", "{tmp}/huge.txt", "huge.txt is larger than 16 MiB"))),
    Case("plan does not create a store", ["--root", "{tmp}/typo", "plan", "{tmp}/spec.txt"],
         errors.UnavailableError.exit_code, says="connection refused", untouched=True),
    Case("global option after the command", ["images", "ls", "--root", "{tmp}/typo"],
         errors.NotFoundError.exit_code, says="{tmp}/typo", untouched=True),
    *(Case(f"snapshot db garbage: {' '.join(cmd)}", ["--root", "{root}", *cmd],
           errors.StoreDamagedError.exit_code, _garbage, SNAP_DB, says=SNAP_DB)
      for cmd in (["images", "ls"], ["verify"], ["du"], ["gc"], ["containers", "ls"],
                  ["create", "{ref}", "c1"])),
    *(Case(f"snapshot db damaged after its header: {' '.join(cmd)}", ["--root", "{root}", *cmd],
           errors.StoreDamagedError.exit_code, _garbage_after_header, SNAP_DB)
      for cmd in (["images", "ls"], ["du"], ["gc", "--dry-run"])),
    *(Case(f"snapshot db damaged in a later page: {' '.join(cmd)}", ["--root", "{root}", *cmd],
           errors.StoreDamagedError.exit_code, _damaged_later_page, SNAP_DB, says="damaged")
      for cmd in (["images", "ls"], ["containers", "ls"])),
    *(Case(f"metadata.db garbage: {' '.join(cmd)}", ["--root", "{root}", *cmd],
           errors.StoreDamagedError.exit_code, _garbage, "metadata.db", says="metadata.db")
      for cmd in (["images", "ls"], ["gc", "--dry-run"])),
    *(Case(f"metadata.db {how}: {' '.join(cmd)}", ["--root", "{root}", *cmd],
           errors.StoreDamagedError.exit_code, damage, "metadata.db", says="metadata.db",
           untouched=True)
      for how, damage in (("empty", _truncate), ("missing", _remove))
      for cmd in (["images", "ls"], ["gc"], ["gc", "--dry-run"], ["fetch", "{ref}"],
                  ["du"])),
    Case("snapshot db empty while snapshots exist", ["--root", "{root}", "gc"],
         errors.StoreDamagedError.exit_code, _truncate, SNAP_DB, says=SNAP_DB, untouched=True),
]


def _tree(root: Path) -> dict[str, int]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm")) and p.name != "lock"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_has_no_traceback(case: Case, pulled: Store, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    _non_utf8(tmp_path / "bad.toml")
    _nested_spec(tmp_path / "deep.toml")
    (tmp_path / "spec.txt").write_text("127.0.0.1:1/nothing:here\n")  # port 1: refused
    (tmp_path / "empty-root.toml").write_text('root = ""\n')
    with open(tmp_path / "huge.txt", "wb") as f:  # sparse: one byte over the cap
        f.truncate(SPEC_MAX_BYTES + 1)
    with socket.socket(socket.AF_UNIX) as s:  # a socket file nobody listens on
        s.bind(str(tmp_path / "dead.sock"))
    root = tmp_path / "store"
    if case.damage is not None:
        shutil.copytree(pulled.template, root, symlinks=True)
        case.damage(root / case.target)
    before = _tree(root) if case.untouched else {}
    subst = {"{tmp}": str(tmp_path), "{root}": str(root), "{ref}": pulled.image.text}
    args = []
    for a in case.args:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **TEST_ENV, "CARGOHOLD_PLAIN_HTTP": "1"})
    both = p.stdout + p.stderr
    assert "Traceback" not in both, both
    assert p.returncode == case.code, both
    for says in (case.says, case.says_also):
        for k, v in subst.items():
            says = says.replace(k, v)
        assert says.lower() in p.stderr.lower(), p.stderr
    assert "error: " in p.stderr, p.stderr
    if case.untouched:
        assert _tree(root) == before
        assert not (tmp_path / "typo").exists()
        assert not (tmp_path / "s").exists()
        assert not (tmp_path / "mnt").exists()
