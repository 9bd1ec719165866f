"""Background manners for a booting node: CPU niceness and the idle I/O class.

Both are per thread on Linux and inherited by threads created afterwards, so set them
before any thread starts (the gRPC channel, the unpack pool, a live display).

* :func:`lower_cpu_priority`: raise the nice value to at least ``n`` (never lowers it: that
  would need privileges and is not what a background job wants).
* :func:`idle_io_class`: ``ioprio_set(IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE)``, what
  ``ionice -c3`` does, through ``ctypes``. The kernel honours the class where the block
  device's scheduler does (BFQ, the former CFQ); with ``mq-deadline`` or ``none`` it is
  accepted and has no effect. An architecture without a known syscall number, or a kernel
  that refuses, is reported, not an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

__all__ = ["idle_io_class", "lower_cpu_priority"]

#: ioprio_set syscall numbers per machine (Linux' syscall tables).
_IOPRIO_SET = {
    "x86_64": 251, "amd64": 251, "i386": 289, "i686": 289,
    "aarch64": 30, "arm64": 30, "riscv64": 30, "armv7l": 314, "armv6l": 314,
    "ppc64le": 273, "ppc64": 273, "s390x": 282,
}  # fmt: skip
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


def lower_cpu_priority(n: int) -> int:
    """Make this thread's nice value at least ``n`` (0-19); returns the value in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if n > current:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, min(19, n))
    return os.getpriority(os.PRIO_PROCESS, 0)


def idle_io_class() -> str:
    """Put this thread in the idle I/O class. Returns ``"idle"``, or why it was not set."""
    nr = _IOPRIO_SET.get(platform.machine().lower())
    if nr is None or not hasattr(os, "sched_getaffinity"):  # not Linux, or unknown arch
        return f"unavailable (no ioprio_set on {platform.system()} {platform.machine()})"
    libc = ctypes.CDLL(None, use_errno=True)
    value = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    rc = libc.syscall(nr, _IOPRIO_WHO_PROCESS, 0, value)
    if rc != 0:
        err = ctypes.get_errno()
        return f"unavailable ({os.strerror(err)})"
    return "idle"
