"""Containers on the embedded store: `create`, `mount`, `umount`, `containers ls | rm`, `run`.

``create REF NAME`` is where the seed's lazy unpack happens: an image that was only fetched
is unpacked first (and the time it took reported), then an active snapshot
``containers/NAME`` is prepared on its top layer and the container recorded.  ``run``
additionally writes an OCI runtime bundle (``config.json`` per the OCI runtime spec, with
containerd's defaults), mounts the snapshot as its rootfs and runs it with ``runc``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cargohold.cli.images_cmd import lookup_name
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import human_bytes
from cargohold.cli.progress import FetchProgress
from cargohold.cli.resources import LocalStore, open_embedded
from cargohold.cli.unpack_cmd import parse_platform_option, unpack_lease
from cargohold.cli.unpacking import UnpackProgress, make_unpacker
from cargohold.errors import (
    AlreadyExistsError,
    CargoholdError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnsupportedError,
)
from cargohold.mount import is_mountpoint, mount_all, unmount_all
from cargohold.oci.descriptor import Platform
from cargohold.oci.manifest import ImageConfig
from cargohold.store.embedded.containers import (
    LABEL_CONTAINER,
    LABEL_GC_ROOT,
    Container,
    check_name,
    snapshot_key,
)
from cargohold.store.embedded.metadata import now, ts
from cargohold.unpack.image import ResolvedImage, UnpackResult

#: runc's state directory for cargohold's containers (runc's default is /run/runc).
RUNC_ROOT = "/run/cargohold/runc"
RUNC_PACKAGE = "runc"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ---------------------------------------------------------------- create


@dataclass
class Created:
    container: Container
    image: ResolvedImage
    unpack: UnpackResult


def lazy_line(r: UnpackResult) -> str:
    """``unpacked N layers in X.XX s (lazy)`` or ``already unpacked``."""
    if r.already_unpacked:
        return "already unpacked"
    return f"unpacked {r.chains_unpacked + r.chains_shared} layers in {r.seconds:.2f} s (lazy)"


def create_container(app: App, store: LocalStore, ref: str, name: str,
                     platform: Platform | None, jobs: int | None) -> Created:
    """Unpack the image if needed, record the container, prepare its snapshot."""
    check_name(name)
    image_name = lookup_name(store, ref)
    image = store.images.get(image_name)
    try:
        store.containers.get(name)
    except NotFoundError:
        pass
    else:
        raise ConflictError(
            f"container {name!r} already exists",
            hint="choose another name, or remove it with `cargohold containers rm`",
        )
    with (
        FetchProgress(app.out) as display,  # the layers live on a TTY
        make_unpacker(app, store, jobs=jobs,
                      events=UnpackProgress(app.out, events=False, display=display)) as unpacker,
        unpack_lease(store),
    ):
        resolved = unpacker.resolve(image.target, platform)
        result = unpacker.unpack(image.target, platform)
    sn = store.snapshots
    key = snapshot_key(name)
    rec = store.containers.create(Container(
        name=name,
        image=image_name,
        image_digest=str(image.target.digest),
        snapshotter=sn.name,
        snapshot_key=key,
        platform=result.platform,
    ))
    try:
        sn.prepare(key, result.chain_id,
                   labels={LABEL_GC_ROOT: ts(now()), LABEL_CONTAINER: name})
    except AlreadyExistsError:
        store.containers.delete(name)
        raise ConflictError(
            f"snapshot {key!r} exists without a container record",
            hint=f"remove it with `cargohold containers rm {name}`",
        ) from None
    except BaseException:
        store.containers.delete(name)
        raise
    return Created(rec, resolved, result)


@cli.command()
@click.argument("ref")
@click.argument("name")
@click.option("--platform", default=None,
              help="os/arch[/variant] of the image to use [default: this host's].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Layers applied at once when unpacking [default: 4].")
@pass_app
def create(app: App, ref: str, name: str, platform: str | None, jobs: int | None) -> None:
    """Create container NAME from image REF (unpacking the image first when needed)."""
    plat = parse_platform_option(platform)
    with open_embedded(app.settings, must_exist=True) as store:
        made = create_container(app, store, ref, name, plat, jobs)
    out = app.out
    if out.json_mode:
        out.json({
            "event": "created",
            "container": made.container.to_json(),
            "lazy": not made.unpack.already_unpacked,
            "unpack_seconds": round(made.unpack.seconds, 3),
            "unpack": made.unpack.to_json(),
        })
        return
    out.data(lazy_line(made.unpack))
    c = made.container
    out.data(f"created container {c.name} from {c.image} (snapshot {c.snapshot_key})")


# ---------------------------------------------------------------- mount / umount


@cli.command("mount")
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path))
@pass_app
def mount_cmd(app: App, name: str, directory: Path) -> None:
    """Mount container NAME's root file system on DIRECTORY (created if missing)."""
    with open_embedded(app.settings, must_exist=True) as store:
        c = store.containers.get(name)
        mounts = store.snapshots.mounts(c.snapshot_key)
    directory.mkdir(parents=True, exist_ok=True)
    if is_mountpoint(directory):
        raise ConflictError(f"{directory} is already a mount point",
                            hint=f"cargohold umount {directory}")
    mount_all(mounts, directory)
    app.out.data(str(directory))


@cli.command("umount")
@click.argument("directory", type=click.Path(path_type=Path))
@pass_app
def umount_cmd(app: App, directory: Path) -> None:
    """Unmount what `cargohold mount` mounted on DIRECTORY."""
    if not is_mountpoint(directory):
        raise NotFoundError(f"{directory} is not a mount point",
                            hint="nothing to unmount")
    unmount_all(directory)
    app.out.data(str(directory))


# ---------------------------------------------------------------- containers ls / rm


@cli.group()
def containers() -> None:
    """List and remove containers (records + their snapshots)."""


@containers.command("ls")
@pass_app
def containers_ls(app: App) -> None:
    """List containers."""
    with open_embedded(app.settings, must_exist=True) as store:
        rows = store.containers.list()
        sizes: dict[str, int | None] = {}
        for c in rows:
            try:
                sizes[c.name] = store.snapshots.usage(c.snapshot_key).size
            except NotFoundError:
                sizes[c.name] = None
    if app.out.json_mode:
        app.out.json({"containers": [{**c.to_json(), "size": sizes[c.name]} for c in rows]})
        return
    app.out.table(
        ["NAME", "IMAGE", "PLATFORM", "SNAPSHOT", "SIZE", "CREATED"],
        [(c.name, c.image, c.platform, c.snapshot_key,
          human_bytes(s) if (s := sizes[c.name]) is not None else "missing",
          c.created_at.strftime("%Y-%m-%d %H:%M:%S") if c.created_at else "")
         for c in rows],
    )


def mounted_at(store: LocalStore, key: str) -> list[str]:
    """Mount points using the snapshot ``key`` (an overlay with its upper dir, or a bind
    mount of its directory)."""
    try:
        fs = str(store.snapshots.fs_path(key))
        dev = os.stat(fs).st_dev
    except (NotFoundError, OSError):
        return []
    tail = "/" + "/".join(Path(fs).parts[-3:])  # snapshots/<id>/fs
    found: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5:
            continue
        super_opts = right.split()[2] if len(right.split()) > 2 else ""
        if f"upperdir={fs}" in super_opts.split(","):
            found.append(fields[4])
            continue
        major, _, minor = fields[2].partition(":")
        try:
            same_dev = os.makedev(int(major), int(minor)) == dev
        except ValueError:
            same_dev = False
        root = fields[3]
        if same_dev and root.endswith(tail) and fs.endswith(root):
            found.append(fields[4])
    return found


def remove_container(store: LocalStore, name: str) -> None:
    """Remove container ``name``'s snapshot, then its record (a snapshot left without a
    record by a crash is removed too)."""
    sn = store.snapshots
    try:
        c = store.containers.get(name)
        key = c.snapshot_key
    except NotFoundError:
        c = None
        key = snapshot_key(name)
        try:
            sn.stat(key)
        except NotFoundError:
            raise NotFoundError(f"container {name!r} does not exist",
                                hint="`cargohold containers ls` lists the containers") from None
    where = mounted_at(store, key)
    if where:
        raise ConflictError(
            f"container {name!r} is mounted at {', '.join(where)}",
            hint=f"unmount it first: cargohold umount {where[0]}",
        )
    with suppress(NotFoundError):
        sn.remove(key)
    if c is not None:
        store.containers.delete(name)


@containers.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_app
def containers_rm(app: App, names: tuple[str, ...]) -> None:
    """Remove containers and their snapshots (the image's layers stay)."""
    with open_embedded(app.settings, must_exist=True) as store:
        for name in names:
            remove_container(store, name)
            app.out.data(name)


# ---------------------------------------------------------------- the OCI runtime bundle

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NAMESPACES = ["pid", "ipc", "uts", "mount", "network"]


def default_mounts() -> list[dict[str, Any]]:
    """proc, /dev (tmpfs), devpts, shm, mqueue, sysfs (read-only) and /run."""

    def m(dest: str, typ: str, src: str, opts: list[str]) -> dict[str, Any]:
        return {"destination": dest, "type": typ, "source": src, "options": opts}

    return [
        m("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        m("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        m("/dev/pts", "devpts", "devpts",
          ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        m("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        m("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        m("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        m("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ]


def read_in_root(root: Path, path: str, limit: int = 4 << 20) -> bytes | None:
    """The bytes of the regular file ``path`` inside ``root``, resolving symlinks as if
    ``root`` were ``/`` (never leaving it); None if it does not exist or is not a file."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur: list[str] = []
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            if cur:
                cur.pop()
            continue
        full = root.joinpath(*cur, p)
        try:
            st = os.lstat(full)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(full)
            if target.startswith("/"):
                cur = []
            parts = [x for x in target.split("/") if x not in ("", ".")] + parts
            continue
        cur.append(p)
    try:
        fd = os.open(root.joinpath(*cur), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def resolve_user(rootfs: Path, text: str) -> User:
    """The image config's ``User`` (``""``, ``uid``, ``name``, ``uid:gid``, ``name:group``...)
    as numbers, from the rootfs's /etc/passwd and /etc/group (as containerd does)."""
    passwd = _table(read_in_root(rootfs, "/etc/passwd"))
    groups = _table(read_in_root(rootfs, "/etc/group"))
    user, _, group = (text or "0").partition(":")
    entry: list[str] | None = None
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in passwd if len(e) >= 4 and e[2] == user), None)
    else:
        entry = next((e for e in passwd if len(e) >= 4 and e[0] == user), None)
        if entry is None or not entry[2].isdigit():
            raise InvalidInputError(f"user {user!r} is not in the image's /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and len(entry) >= 6 and entry[5] else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in groups if len(e) >= 3 and e[0] == group), None)
            if g is None or not g[2].isdigit():
                raise InvalidInputError(f"group {group!r} is not in the image's /etc/group")
            gid = int(g[2])
    extra: list[int] = []
    if entry is not None and not group:
        name = entry[0]
        for g in groups:
            if (len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")
                    and int(g[2]) != gid and int(g[2]) not in extra):
                extra.append(int(g[2]))
    return User(uid, gid, tuple(extra), home)


def process_args(config: ImageConfig, command: Sequence[str]) -> list[str]:
    """Entrypoint + cmd; a command given on the command line replaces cmd."""
    args = [*config.entrypoint, *(command or config.cmd)]
    if not args:
        raise InvalidInputError(
            "the image has no entrypoint or cmd: give a command after --",
            hint="cargohold run REF -- /bin/sh -c '...'",
        )
    return args


def process_env(config: ImageConfig, user: User) -> list[str]:
    env = list(config.env)
    keys = {e.split("=", 1)[0] for e in env}
    if "PATH" not in keys:
        env.insert(0, DEFAULT_PATH)
    if "HOME" not in keys:
        env.append(f"HOME={user.home}")
    return env


def runtime_spec(config: ImageConfig, command: Sequence[str], rootfs: Path, *,
                 hostname: str, user: User) -> dict[str, Any]:
    """The bundle's ``config.json`` (OCI runtime spec 1.0): the image's process on ``rootfs``
    with containerd's default mounts, capabilities, masked paths and namespaces (a new network
    namespace has only the loopback interface, which runc brings up)."""
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": process_args(config, command),
        "env": process_env(config, user),
        "cwd": config.working_dir or "/",
        "capabilities": {k: list(DEFAULT_CAPABILITIES)
                         for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": default_mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


# ---------------------------------------------------------------- run


def find_runc() -> str:
    path = shutil.which("runc")
    if path is None:
        raise UnsupportedError(
            "runc is not installed: `cargohold run` needs an OCI runtime",
            hint=f"install Debian's {RUNC_PACKAGE} package (apt-get install {RUNC_PACKAGE})",
        )
    return path


def _run_runc(runc: str, bundle: Path, cid: str) -> int:
    """``runc run``, its exit status passed through (128+N for a signal N); SIGTERM and
    SIGHUP are forwarded (runc forwards them to the container); a terminal's SIGINT reaches
    runc directly (same process group), so cargohold only waits."""
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen([runc, "--root", RUNC_ROOT, "run", "--bundle", str(bundle), cid])

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None and signum != signal.SIGINT:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - code if code < 0 else code


def _cleanup_runc(runc: str, cid: str) -> None:
    subprocess.run([runc, "--root", RUNC_ROOT, "delete", "--force", cid],
                   capture_output=True, check=False)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("--name", default=None, help="Container name [default: run-<random>].")
@click.option("--platform", default=None,
              help="os/arch[/variant] of the image to use [default: this host's].")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Layers applied at once when unpacking [default: 4].")
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: App, remove: bool, name: str | None, platform: str | None, jobs: int | None,
        ref: str, command: tuple[str, ...]) -> None:
    """Run REF's command (or COMMAND) in a new container with runc; exit with its status.

    \b
    cargohold run --rm REF -- sh -c 'echo hello'
    """
    if command[:1] == ("--",):
        command = command[1:]
    runc = find_runc()
    if os.geteuid() != 0:
        raise UnsupportedError("`cargohold run` needs root (mounts and runc)")
    plat = parse_platform_option(platform)
    cid = check_name(name or f"run-{secrets.token_hex(6)}")
    out = app.out
    t0 = time.monotonic()
    with open_embedded(app.settings, must_exist=True) as store:
        made = create_container(app, store, ref, cid, plat, jobs)
        mounts = store.snapshots.mounts(made.container.snapshot_key)
    out.info(lazy_line(made.unpack))
    out.debug(f"container {cid} ready in {time.monotonic() - t0:.2f} s")
    code = 0
    bundle = Path(tempfile.mkdtemp(prefix="cargohold-run-"))
    rootfs = bundle / "rootfs"
    try:
        rootfs.mkdir()
        mount_all(mounts, rootfs)
        try:
            spec = runtime_spec(made.image.config, command, rootfs, hostname=cid,
                                user=resolve_user(rootfs, made.image.config.user))
            (bundle / "config.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
            Path(RUNC_ROOT).mkdir(parents=True, exist_ok=True)
            _cleanup_runc(runc, cid)  # a stale runc container left by a crash
            try:
                code = _run_runc(runc, bundle, cid)
            finally:
                _cleanup_runc(runc, cid)
        finally:
            unmount_all(rootfs)
    finally:
        if is_mountpoint(rootfs):  # never delete through a mount
            out.warn(f"{rootfs} is still mounted; left in place")
        else:
            shutil.rmtree(bundle, ignore_errors=True)
        if remove:
            try:
                with open_embedded(app.settings) as store:
                    remove_container(store, cid)
            except CargoholdError as e:
                out.warn(f"removing container {cid}: {e.message}")
    # SystemExit, not click's Exit: the entry point maps only errors to exit codes.
    sys.exit(code)
