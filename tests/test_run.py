"""`cargohold run`: an OCI runtime bundle over the container snapshot, run by Debian's runc.

The busybox image is built from the host's busybox-static and pushed to the real registry;
the process's output and exit status come back through cargohold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cargohold.errors import InvalidInputError, UnsupportedError
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.oci.manifest import ImageConfig
from cargohold.runtime.spec import DEFAULT_CAPABILITIES, runtime_spec
from cargohold.runtime.users import User, read_in_root, resolve_user
from tests.rig.images import Pushed, push
from tests.rig.needs import needs_root
from tests.rig.services import Registry, require_binary

CLI = [sys.executable, "-m", "cargohold"]



def cli(root: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CARGOHOLD_RESERVE": "0", **(env or {})},
    )


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def busybox(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    require_binary("runc", "runc")
    return push(registry.host, samples.busybox(), tmp_path_factory.mktemp("bb"))


@pytest.fixture
def root(tmp_path: Path, busybox: Pushed) -> Path:
    r = tmp_path / "store"
    ok(cli(r, "fetch", "--plain-http", busybox.text))
    return r


def containers(root: Path) -> list[str]:
    out: list[dict[str, Any]] = json.loads(
        ok(cli(root, "--json", "containers", "ls")).stdout)["containers"]
    return [c["name"] for c in out]


# ------------------------------------------------------------------ running


@needs_root("mounts, runc")
def test_run_prints_output_lazily_unpacked(root: Path, busybox: Pushed) -> None:
    p = ok(cli(root, "run", "--rm", busybox.text, "--", "echo", "hello"))
    assert p.stdout == "hello\n"
    assert "(lazy)" in p.stderr  # the first container of a fetched-only image unpacks it
    p2 = ok(cli(root, "run", "--rm", busybox.text, "--", "echo", "hello", "again"))
    assert p2.stdout == "hello again\n"
    assert "already unpacked" in p2.stderr
    assert containers(root) == []  # --rm


@needs_root("mounts, runc")
@pytest.mark.parametrize("code", [0, 1, 7, 42])
def test_run_passes_exit_code_through(root: Path, busybox: Pushed, code: int) -> None:
    p = cli(root, "run", "--rm", busybox.text, "--", "sh", "-c", f"echo out; exit {code}")
    assert p.returncode == code, p.stderr
    assert p.stdout == "out\n"


@needs_root("mounts, runc")
def test_run_without_rm_keeps_the_container(root: Path, busybox: Pushed) -> None:
    p = cli(root, "run", "--name", "keepme", busybox.text, "--", "sh", "-c",
            "echo data > /kept.txt")
    ok(p)
    assert containers(root) == ["keepme"]
    mnt = root.parent / "mnt"
    ok(cli(root, "mount", "keepme", str(mnt)))
    try:
        assert (mnt / "kept.txt").read_text() == "data\n"
    finally:
        ok(cli(root, "umount", str(mnt)))
    # A name in use is a conflict before anything runs.
    dup = cli(root, "run", "--name", "keepme", busybox.text, "--", "true")
    assert dup.returncode == 8
    ok(cli(root, "containers", "rm", "keepme"))
    assert containers(root) == []


@needs_root("mounts, runc")
def test_run_isolation_defaults(root: Path, busybox: Pushed) -> None:
    script = (
        "ls /sys/class/net; hostname; echo pid=$$; id -u; pwd; "
        "cat /proc/self/status | grep -i ^nonewprivs; "
        "grep -c ' /proc ' /proc/mounts; grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3; "
        "touch /sys/x 2>/dev/null && echo sys-rw || echo sys-ro; echo $HOME"
    )
    p = ok(cli(root, "run", "--rm", "--name", "iso", busybox.text, "--", "sh", "-c", script))
    lines = p.stdout.splitlines()
    assert lines[0] == "lo"  # new network namespace: loopback only
    assert lines[1] == "iso"  # uts namespace, hostname = container name
    assert lines[2] == "pid=1"  # pid namespace
    assert lines[3] == "0"
    assert lines[4] == "/"
    assert lines[5].split() == ["NoNewPrivs:", "1"]
    assert lines[6] == "1"
    assert lines[7] == "tmpfs"
    assert lines[8] == "sys-ro"
    assert lines[9] == "/root"


@needs_root("mounts, runc")
def test_run_image_entrypoint_user_workdir(
    registry: Registry, tmp_path: Path, busybox: Pushed
) -> None:
    base = samples.busybox_layer()
    spec = ImageSpec(
        [base, LayerSpec([Dir("work", uid=1, gid=1), File("work/hello", b"hi\n")])],
        entrypoint=["/bin/sh", "-c", 'echo "$0 $*"; id -u; id -g; pwd', "argv0"],
        cmd=["default-arg"],
        env=["PATH=/bin", "GREETING=hello"],
        user="daemon",
        working_dir="/work",
    )
    pushed = push(registry.host, spec, tmp_path / "img")
    root = tmp_path / "store"
    ok(cli(root, "fetch", "--plain-http", pushed.text))
    p = ok(cli(root, "run", "--rm", pushed.text))
    assert p.stdout.splitlines() == ["argv0 default-arg", "1", "1", "/work"]
    # A command after -- replaces cmd, not the entrypoint.
    p2 = ok(cli(root, "run", "--rm", pushed.text, "--", "x", "y"))
    assert p2.stdout.splitlines()[0] == "argv0 x y"


def test_run_without_runc_names_the_package(tmp_path: Path, busybox: Pushed) -> None:
    venv_bin = str(Path(sys.executable).parent)
    p = cli(tmp_path / "store", "run", busybox.text, "--", "true", env={"PATH": venv_bin})
    assert p.returncode == UnsupportedError.exit_code
    assert "runc" in p.stderr and "apt-get install runc" in p.stderr
    assert not (tmp_path / "store" / "snapshots").exists()  # nothing was done


@needs_root("mounts, runc")
def test_run_image_without_command(registry: Registry, tmp_path: Path) -> None:
    spec = ImageSpec([samples.busybox_layer()])  # no entrypoint, no cmd
    pushed = push(registry.host, spec, tmp_path / "img")
    root = tmp_path / "store"
    ok(cli(root, "fetch", "--plain-http", pushed.text))
    p = cli(root, "run", "--rm", pushed.text)
    assert p.returncode == InvalidInputError.exit_code
    assert "no entrypoint or cmd" in p.stderr
    assert containers(root) == []  # --rm cleaned up after the failure
    assert ok(cli(root, "run", "--rm", pushed.text, "--", "echo", "ok")).stdout == "ok\n"


# ------------------------------------------------------------------ the bundle, unit level


def _config(**kw: Any) -> ImageConfig:
    return ImageConfig(architecture="amd64", os="linux", **kw)


def test_runtime_spec_shape(tmp_path: Path) -> None:
    cfg = _config(entrypoint=["/app"], cmd=["--serve"], env=["A=1"], working_dir="/srv")
    spec = runtime_spec(cfg, [], tmp_path / "rootfs", hostname="h1",
                        user=User(1000, 1000, (10, 20), "/home/u"))
    assert spec["ociVersion"].startswith("1.")
    proc = spec["process"]
    assert proc["args"] == ["/app", "--serve"]
    assert proc["terminal"] is False
    assert proc["cwd"] == "/srv"
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    assert proc["env"][0].startswith("PATH=") and "A=1" in proc["env"]
    assert "HOME=/home/u" in proc["env"]
    assert proc["capabilities"]["bounding"] == DEFAULT_CAPABILITIES
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": False}
    assert spec["hostname"] == "h1"
    dests = [m["destination"] for m in spec["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"):
        assert d in dests
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {
        "pid", "ipc", "uts", "mount", "network"
    }
    assert all("path" not in n for n in spec["linux"]["namespaces"])  # all new ones
    assert runtime_spec(cfg, ["--other"], tmp_path, hostname="h", user=User(0, 0))[
        "process"]["args"] == ["/app", "--other"]
    with pytest.raises(InvalidInputError):
        runtime_spec(_config(), [], tmp_path, hostname="h", user=User(0, 0))


def _rootfs(tmp_path: Path, passwd: str, group: str) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(passwd)
    (r / "etc/group").write_text(group)
    return r


def test_resolve_user(tmp_path: Path) -> None:
    r = _rootfs(
        tmp_path,
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        "root:x:0:\napp:x:1001:\nextra:x:2000:app,other\nwheel:x:10:root\n",
    )
    assert resolve_user(r, "") == User(0, 0, (10,), "/root")
    assert resolve_user(r, "app") == User(1000, 1001, (2000,), "/home/app")
    assert resolve_user(r, "1000") == User(1000, 1001, (2000,), "/home/app")
    assert resolve_user(r, "app:extra") == User(1000, 2000, (), "/home/app")
    assert resolve_user(r, "4242:4343") == User(4242, 4343, (), "/")
    assert resolve_user(r, "4242") == User(4242, 0, (), "/")
    with pytest.raises(InvalidInputError):
        resolve_user(r, "nobody-here")
    with pytest.raises(InvalidInputError):
        resolve_user(r, "app:nogroup")


def test_read_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "real").mkdir()
    (r / "real/passwd").write_text("good:x:5:5::/:/bin/sh\n")
    os.symlink(str(outside / "passwd"), r / "etc/passwd")  # absolute: re-rooted
    assert read_in_root(r, "/etc/passwd") is None
    os.unlink(r / "etc/passwd")
    os.symlink("../../../../real/passwd", r / "etc/passwd")  # .. clamps at the root
    assert read_in_root(r, "/etc/passwd") == b"good:x:5:5::/:/bin/sh\n"
    os.unlink(r / "etc/passwd")
    os.symlink("/real/passwd", r / "etc/passwd")
    assert resolve_user(r, "good") == User(5, 5, (), "/")
    os.symlink("loop", r / "loop")
    assert read_in_root(r, "/loop") is None


def test_user_files_behind_hostile_directory_links_stay_in_the_rootfs(tmp_path: Path) -> None:
    """/etc itself a link out of the rootfs (absolute, or ../ past the root): the confined
    walk re-roots it, so resolve_user sees the rootfs's files or none, never the host's."""
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    (host / "etc/shadow").write_text("evil:secret\n")
    r = tmp_path / "rootfs"
    r.mkdir()
    os.symlink(str(host / "etc"), r / "etc")  # absolute link to the host's directory
    assert read_in_root(r, "/etc/passwd") is None
    with pytest.raises(InvalidInputError):
        resolve_user(r, "evil")
    os.unlink(r / "etc")
    os.symlink("../../host/etc", r / "etc")  # relative, climbing past the root
    assert read_in_root(r, "/etc/passwd") is None
    (r / "x").mkdir()
    os.symlink("../../host/etc/shadow", r / "x/passwd")
    os.unlink(r / "etc")
    os.symlink("x", r / "etc")
    assert read_in_root(r, "/etc/passwd") is None  # /etc/passwd -> ../../host/etc/shadow
    (r / "host/etc").mkdir(parents=True)
    (r / "host/etc/shadow").write_text("inside:x:7:7::/:/bin/sh\n")
    assert resolve_user(r, "inside") == User(7, 7, (), "/")  # clamped at the rootfs's /
