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
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType

import click

from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.unpacking import create_with_progress, parse_platform_option
from cargohold.errors import (
    CargoholdError,
    ConflictError,
    NotFoundError,
    UnsupportedError,
)
from cargohold.mount import is_mountpoint, mount_all, unmount_all
from cargohold.runtime.spec import runtime_spec
from cargohold.runtime.users import resolve_user
from cargohold.store.embedded.containers import (
    check_name,
    snapshot_key,
)
from cargohold.store.open import LocalStore, open_embedded
from cargohold.units import format_size
from cargohold.unpack.image import UnpackResult

#: runc's state directory for cargohold's containers (runc's default is /run/runc).
RUNC_ROOT = "/run/cargohold/runc"
RUNC_PACKAGE = "runc"

# ---------------------------------------------------------------- create


def lazy_line(r: UnpackResult) -> str:
    """``unpacked N layers in X.XX s (lazy)`` or ``already unpacked``."""
    if r.already_unpacked:
        return "already unpacked"
    return f"unpacked {r.chains_unpacked + r.chains_shared} layers in {r.seconds:.2f} s (lazy)"


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
        made = create_with_progress(app, store, ref, name, plat, jobs)
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
          format_size(s) if (s := sizes[c.name]) is not None else "missing",
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
        made = create_with_progress(app, store, ref, cid, plat, jobs)
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
