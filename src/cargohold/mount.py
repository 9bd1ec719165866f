"""Mount and unmount lists of :class:`~cargohold.store.interfaces.Mount` with ``mount(8)``.

``bind`` mounts become ``mount --bind`` (plus a read-only remount for ``ro``, which
``mount(8)`` does on its own); ``overlay`` and anything else become ``mount -t <type>``.
``x-*`` options are userspace hints and are never passed on.  When an overlay's options are
longer than a page (the kernel's limit for mount data; many layers with long paths), the
common directory of the layer paths is made the working directory of ``mount`` and the paths
are given relative to it, as containerd does.  Errors: UnsupportedError when not root, a
CargoholdError carrying mount's message otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cargohold.errors import CargoholdError, UnsupportedError
from cargohold.store.interfaces import Mount

#: The kernel copies at most one page of mount options.
_MAX_OPTIONS = 4096 - 512
_LAYER_OPTIONS = ("lowerdir=", "upperdir=", "workdir=")
#: Mount options that mean "bind": containerd puts these on type "bind" mounts.
_BIND_OPTIONS = frozenset({"bind", "rbind"})


def overlay_supported() -> bool:
    """Whether this kernel knows overlayfs (it may still need a module load on first use)."""
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def _run(args: list[str], cwd: str | None = None) -> None:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise UnsupportedError(f"{args[0]} is not installed: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        if os.geteuid() != 0:
            raise UnsupportedError(f"{' '.join(args)}: {msg} (mounting needs root)")
        raise CargoholdError(f"{' '.join(args)} failed: {msg}")


def _shorten(options: list[str]) -> tuple[list[str], str | None]:
    """Overlay options relative to their layers' common directory, if too long for a page."""
    if len(",".join(options)) <= _MAX_OPTIONS:
        return options, None
    paths: list[str] = []
    for opt in options:
        if opt.startswith(_LAYER_OPTIONS):
            paths.extend(opt.split("=", 1)[1].split(":"))
    if not paths:
        return options, None
    common = os.path.commonpath(paths)
    out: list[str] = []
    for opt in options:
        if opt.startswith(_LAYER_OPTIONS):
            key, value = opt.split("=", 1)
            rel = ":".join(os.path.relpath(p, common) for p in value.split(":"))
            out.append(f"{key}={rel}")
        else:
            out.append(opt)
    return out, common


def mount_one(m: Mount, target: Path) -> None:
    """Mount one Mount on ``target`` (an existing directory)."""
    opts = [o for o in m.options if not o.startswith("x-")]
    if m.type == "bind" or _BIND_OPTIONS.intersection(opts):
        flag = "--rbind" if "rbind" in opts else "--bind"
        rest = [o for o in opts if o not in _BIND_OPTIONS]
        args = ["mount", flag]
        if rest:
            args += ["-o", ",".join(rest)]
        _run([*args, m.source, str(target)])
        return
    cwd: str | None = None
    if m.type == "overlay":
        opts, cwd = _shorten(opts)
    args = ["mount", "-t", m.type]
    if opts:
        args += ["-o", ",".join(opts)]
    _run([*args, m.source, str(target)], cwd=cwd)


def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount each of ``mounts`` on ``target`` in order; on failure undo the ones done."""
    done = 0
    try:
        for m in mounts:
            mount_one(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target, lazy=True)
        raise


def is_mountpoint(target: Path) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            want = os.path.realpath(target)
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == want:
                    return True
    except OSError:
        pass
    return False


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in path:
        return path
    out: list[str] = []
    i = 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit() and i + 3 < len(path):
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def unmount(target: Path, *, lazy: bool = False) -> None:
    """Unmount the top mount on ``target``."""
    _run(["umount", *(["--lazy"] if lazy else []), str(target)])


def unmount_all(target: Path, *, lazy: bool = False) -> None:
    """Unmount everything stacked on ``target`` (nothing if it is not a mount point)."""
    for _ in range(64):
        if not is_mountpoint(target):
            return
        unmount(target, lazy=lazy)
    raise CargoholdError(f"{target} is still mounted after 64 unmounts")


@contextmanager
def mounted(mounts: Sequence[Mount], target: Path) -> Iterator[Path]:
    """``mount_all`` for the duration of a ``with`` block, then unmount everything."""
    mount_all(mounts, target)
    try:
        yield target
    finally:
        unmount_all(target)
