"""The helper process of :mod:`cargohold.unpack.fileprocess`: creates the files it is sent.

Run as ``python -I -S filehelper.py FD OWNERS PARENT`` (standard library only, so it starts
in a few milliseconds); FD is its end of a ``SOCK_SEQPACKET`` socket pair, OWNERS ``1`` when
files get the layer's owners (the parent is root), ``0`` when ownership is left as created,
PARENT the parent's pid: the helper asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), so a killed cargohold leaves no helper writing after it, not even
the batches still queued on the socket. It never resolves a path:
it creates single names (no ``/``, never ``.`` or ``..``) with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` in directory descriptors the parent resolved and passed to it, so it cannot
write anywhere the parent did not open. Messages (one record each):

* ``D`` with one descriptor attached: the directory of the files that follow;
* ``F`` + files, each ``<HIIIqqI`` (name length, mode, uid, gid, atime ns, mtime ns, data
  length) then the name and the data;
* ``S``: answer ``K`` + the count of files created since the last ``S``, or, after a
  failure, ``E`` + ``<iI`` (errno, index of the failed file since the last ``S``) + the
  message; files sent after a failure are not created;
* end of stream (the parent closed its end or died): exit.

SIGINT and SIGTERM are ignored (a terminal's Ctrl-C or systemd's stop reach the whole
process group): the parent decides, and kills this process when it gives up.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import os
import signal
import socket
import stat
import struct
import sys

FILE = struct.Struct("<HIIIqqI")
ERROR = struct.Struct("<iI")
MAX_MESSAGE = 1 << 20
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_file(dir_fd: int, name: bytes, mode: int, uid: int, gid: int, atime: int, mtime: int,
            data: bytes | memoryview, is_root: bool) -> None:
    """Create ``name`` in ``dir_fd`` with ``data``, its mode, owner (as root) and times."""
    fd = os.open(name, _FLAGS, mode & 0o777, dir_fd=dir_fd)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        set_owner_and_mode(fd, mode, uid, gid, is_root)
        os.utime(fd, ns=(atime, mtime))
    finally:
        os.close(fd)


def set_owner_and_mode(fd: int, mode: int, uid: int, gid: int, chown: bool) -> None:
    """Give the new file ``fd`` its owner (``chown``: as root) and permission bits, each only
    where creating it did not already (chown and chmod each cost an inode update)."""
    st = os.fstat(fd)
    if chown and (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)  # clears setuid/setgid: chmod after
        os.fchmod(fd, mode)
    elif stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def serve(sock: socket.socket, is_root: bool) -> None:
    dir_fd = -1
    created = 0
    failed: tuple[int, int, str] | None = None  # errno, index, message
    fds = array.array("i")
    while True:
        msg, anc, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize))
        if not msg:
            return
        kind = msg[:1]
        if kind == b"D":
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                    if dir_fd >= 0:
                        os.close(dir_fd)
                    dir_fd = got[0]
                    for extra in got[1:]:
                        os.close(extra)
        elif kind == b"F":
            view = memoryview(msg)
            pos = 1
            while pos < len(view):
                nlen, mode, uid, gid, atime, mtime, dlen = FILE.unpack_from(view, pos)
                pos += FILE.size
                name = bytes(view[pos : pos + nlen])
                pos += nlen
                data = view[pos : pos + dlen]
                pos += dlen
                if failed is None:
                    try:
                        create_file(dir_fd, name, mode, uid, gid, atime, mtime, data, is_root)
                    except OSError as e:
                        failed = (e.errno or 0, created, str(e))
                    else:
                        created += 1
        elif kind == b"S":
            if failed is None:
                sock.send(b"K" + created.to_bytes(4, "little"))
            else:
                err, index, text = failed
                sock.send(b"E" + ERROR.pack(err, index) + text.encode("utf-8", "replace"))
            created, failed = 0, None


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):  # no prctl: end of stream stops it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(int(sys.argv[3]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    serve(sock, sys.argv[2] == "1")


if __name__ == "__main__":
    main()
