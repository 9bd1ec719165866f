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
layer does not pay a process start). When the helper is behind (its socket is full), the
writer creates the batch itself instead of waiting: the two share the work. Before any entry that may touch a path still being
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
from cargohold.unpack.filehelper import ERROR, FILE, MAX_MESSAGE, create_file

__all__ = ["HELPER_ENV", "SMALL_FILE", "START_AFTER", "FileProcess", "helper_start_after"]

HELPER_ENV = "CARGOHOLD_FILE_HELPER"
#: Largest file sent to the helper.
SMALL_FILE = 64 << 10
#: Small files a layer writes itself before it starts the helper.
START_AFTER = 256
#: A batch is sent when it would grow past this many bytes.
BATCH_BYTES = 128 << 10
_HELPER = Path(__file__).with_name("filehelper.py")
#: name, data, mode, uid, gid, atime ns, mtime ns, entry name.
_File = tuple[bytes, bytes, int, int, int, int, int, bytes]


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
        self.is_root = is_root
        #: The directory of the open batch: its resolved path and a descriptor of ours.
        self._dir: tuple[bytes, ...] | None = None
        self._dir_fd = -1
        #: The directory the helper was last sent (its own descriptor).
        self._helper_dir: tuple[bytes, ...] | None = None
        self._buf = bytearray(b"F")
        self._batch: list[_File] = []
        #: Entry names of the files the helper was sent since the last drain (its error's
        #: index names one).
        self._names: list[bytes] = []
        #: Paths queued and not yet known to be written (cleared by drain).
        self.pending: set[tuple[bytes, ...]] = set()
        #: The entry whose creation failed (set when drain or add raises its error).
        self.failed_name = b""

    def add(self, dir_fd: int, dir_path: tuple[bytes, ...], name: bytes, data: bytes,
            mode: int, uid: int, gid: int, atime_ns: int, mtime_ns: int,
            entry: bytes) -> None:  # fmt: skip
        """Queue a new file ``name`` in the directory ``dir_fd`` (resolved ``dir_path``; the
        descriptor is duplicated, the caller may close its own). An error writing a batch
        here (see :meth:`_flush`) is raised as an ``OSError``, ``failed_name`` naming it."""
        if dir_path != self._dir:
            self._flush()
            self._set_dir(os.dup(dir_fd), dir_path)
        rec = FILE.pack(len(name), mode, uid, gid, atime_ns, mtime_ns, len(data))
        if len(self._buf) + len(rec) + len(name) + len(data) > BATCH_BYTES:
            self._flush()
        self._buf += rec
        self._buf += name
        self._buf += data
        self._batch.append((name, data, mode, uid, gid, atime_ns, mtime_ns, entry))
        self.pending.add((*dir_path, name))

    def _set_dir(self, fd: int, path: tuple[bytes, ...] | None) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
        self._dir_fd, self._dir = fd, path

    def _flush(self) -> None:
        """Hand the open batch to the helper, or -- when the helper is behind (its socket
        is full) -- write it here: the two share the work instead of this thread waiting."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        buf, self._buf = self._buf, bytearray(b"F")
        if self._try_send_dir() and self._try_send(buf):
            self._names += [f[7] for f in batch]
            return
        for name, data, mode, uid, gid, atime, mtime, entry in batch:
            try:
                create_file(self._dir_fd, name, mode, uid, gid, atime, mtime, data,
                            self.is_root)  # fmt: skip
            except OSError:
                self.failed_name = entry
                raise

    def _try_send_dir(self) -> bool:
        if self._helper_dir == self._dir:
            return True
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [self._dir_fd]))]
        try:
            self.sock.sendmsg([b"D"], fds, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        self._helper_dir = self._dir
        return True

    def _try_send(self, payload: bytes | bytearray) -> bool:
        try:
            self.sock.send(payload, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        return True

    def _send(self, payload: bytes) -> None:
        try:
            self.sock.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None

    def _died(self) -> CargoholdError:
        code = self.proc.poll()
        return CargoholdError(f"the file helper process ended unexpectedly (exit status {code})")

    def drain(self) -> None:
        """Send what is batched, wait until the helper has written it; its first error is
        raised (``failed_name`` then names the entry)."""
        self._flush()
        self._send(b"S")
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
        clean = not self.pending  # (every queued file is pending until a drain)
        self._set_dir(-1, None)
        self.sock.close()
        if not clean:
            self.proc.kill()
        call_held(self.proc.wait)  # short (exited or killed); no lock left taken
