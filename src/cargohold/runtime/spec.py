"""The OCI runtime spec (``config.json`` of a bundle) for an image's process, with
containerd's defaults: mounts, capabilities, masked and read-only paths, namespaces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cargohold.errors import InvalidInputError
from cargohold.oci.manifest import ImageConfig
from cargohold.runtime.users import User

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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
