"""Small new files of a layer created by a helper process, beside the thread parsing the tar.

A layer of many small files is bound by creating them: 30-100 µs of kernel time each on
ext4, on the one thread that also parses the tar, and threads cannot share that work (every
system call hands the GIL back and forth with the parser, which made it slower when tried).
:class:`FileProcess` hands the creation of small regular files -- a name in a directory the
layer writer already resolved and opened, the bytes, mode, owner and times -- to a helper
process (:mod:`.filehelper`, standard library only), over a ``SOCK_SEQPACKET`` socket pair:
the directory's descriptor travels with ``SCM_RIGHTS``, the files in batches. The helper
never resolves a path, so containment stays the writer's (:mod:`.confined`).

:class:`~cargohold.unpack.layerwriter.LayerWriter` decides what goes there: only a file
whose path is new in a target that was empty when the layer started (nothing can be in its
way), and only once a layer has shown many small files (:data:`START_AFTER`: a few-file
layer does not pay a process start). Before any entry that may touch a path still being
written -- a whiteout, a hardlink, anything at a path the layer already wrote -- and at the
end, it calls :meth:`FileProcess.drain`, which waits for the helper and raises its first
error as an ``OSError`` (the entry's name in :attr:`FileProcess.failed_name`). On any
failure or interrupt :meth:`FileProcess.close` kills the helper and reaps it, so nothing is
written into the target once the apply has returned. ``CARGOHOLD_FILE_HELPER=0`` keeps every
file on the parsing thread (``always``: the helper from a layer's first small file).
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from pathlib import Path

from cargohold.errors import CargoholdError
from cargohold.interrupts import call_held
from cargohold.unpack.filehelper import ERROR, FILE, MAX_MESSAGE

__all__ = ["HELPER_ENV", "SMALL_FILE", "START_AFTER", "FileProcess", "helper_start_after"]

HELPER_ENV = "CARGOHOLD_FILE_HELPER"
#: Largest file sent to the helper.
SMALL_FILE = 64 << 10
#: Small files a layer writes itself before it starts the helper.
START_AFTER = 256
#: A batch is sent when it would grow past this many bytes.
BATCH_BYTES = 128 << 10
_HELPER = Path(__file__).with_name("filehelper.py")


def helper_start_after() -> int:
    """Small files a layer writes itself before it starts the helper, or -1 for never:
    ``CARGOHOLD_FILE_HELPER=0`` (never), ``always`` (from the first one; tests), else
    :data:`START_AFTER`."""
    setting = os.environ.get(HELPER_ENV, "")
    if setting == "0" or not sys.executable or not _HELPER.is_file():
        return -1
    return 0 if setting == "always" else START_AFTER


class FileProcess:
    """The helper process and its socket (see the module docstring); used from one thread."""

    def __init__(self, *, is_root: bool) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_HELPER), str(theirs.fileno()),
                 "1" if is_root else "0", str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self._dir: tuple[bytes, ...] | None = None
        self._buf = bytearray(b"F")
        #: Entry names of the files sent since the last drain (an error's index names one).
        self._names: list[bytes] = []
        #: Paths sent and not yet known to be written (cleared by drain).
        self.pending: set[tuple[bytes, ...]] = set()
        #: The entry whose creation failed (set when drain raises its error).
        self.failed_name = b""

    def add(self, dir_fd: int, dir_path: tuple[bytes, ...], name: bytes, data: bytes,
            mode: int, uid: int, gid: int, atime_ns: int, mtime_ns: int,
            entry: bytes) -> None:  # fmt: skip
        """Queue a new file ``name`` in the directory ``dir_fd`` (resolved ``dir_path``)."""
        if dir_path != self._dir:
            self._flush()
            self._send_msg(b"D", dir_fd)
            self._dir = dir_path
        rec = FILE.pack(len(name), mode, uid, gid, atime_ns, mtime_ns, len(data))
        if len(self._buf) + len(rec) + len(name) + len(data) > BATCH_BYTES:
            self._flush()
        self._buf += rec
        self._buf += name
        self._buf += data
        self._names.append(entry)
        self.pending.add((*dir_path, name))

    def _send_msg(self, payload: bytes | bytearray, fd: int = -1) -> None:
        try:
            if fd >= 0:
                self.sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", [fd]))])  # fmt: skip
            else:
                self.sock.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None

    def _flush(self) -> None:
        if len(self._buf) > 1:
            buf, self._buf = self._buf, bytearray(b"F")
            self._send_msg(buf)

    def _died(self) -> CargoholdError:
        code = self.proc.poll()
        return CargoholdError(f"the file helper process ended unexpectedly (exit status {code})")

    def drain(self) -> None:
        """Send what is batched, wait until the helper has written it; its first error is
        raised (``failed_name`` then names the entry)."""
        self._flush()
        self._send_msg(b"S")
        try:
            reply = self.sock.recv(MAX_MESSAGE)
        except ConnectionResetError:
            reply = b""
        if not reply:
            raise self._died()
        names, self._names = self._names, []
        self.pending.clear()
        if reply[:1] == b"E":
            err, index = ERROR.unpack_from(reply, 1)
            text = reply[1 + ERROR.size :].decode("utf-8", "replace")
            self.failed_name = names[index] if index < len(names) else b""
            raise OSError(err, text)

    def close(self) -> None:
        """End the helper: after a drain it has nothing left and exits at end of stream;
        otherwise (an error, an interrupt) it is killed. Reaped either way: nothing is
        written once this returns."""
        clean = not self.pending and len(self._buf) == 1
        self.sock.close()
        if not clean:
            self.proc.kill()
        call_held(self.proc.wait)  # short (exited or killed); no lock left taken
