"""The root lock: ``flock`` on ``<root>/lock``, shared for normal commands, exclusive for gc.

``flock`` locks belong to an open file description, so they exclude each other across
processes and also across threads of one process that open the file separately. To let
code that already holds the lock call code that takes it again (``cargohold gc`` opens the
store exclusively, then ``collect`` takes the lock itself), the lock is re-entrant *per
thread*: a nested acquisition by the same thread of the same or a weaker mode is counted,
not re-locked. Upgrading a shared hold to exclusive in the same thread is refused.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from cargohold.errors import ConflictError

LOCK_FILE = "lock"


class _Held:
    __slots__ = ("count", "exclusive", "fd")

    def __init__(self, fd: int, exclusive: bool) -> None:
        self.fd = fd
        self.exclusive = exclusive
        self.count = 1


_local = threading.local()


def _held() -> dict[str, _Held]:
    d: dict[str, _Held] | None = getattr(_local, "held", None)
    if d is None:
        d = {}
        _local.held = d
    return d


class RootLock:
    """Context manager holding the root lock of a store at ``root``.

    ``exclusive=False``: shared with other normal commands. ``exclusive=True``: alone (gc).
    ``wait=False``: raise ConflictError at once instead of waiting for a conflicting holder.
    """

    def __init__(self, root: Path | str, exclusive: bool = False, wait: bool = True) -> None:
        self.root = Path(root)
        self.exclusive = exclusive
        self.wait = wait
        self._key = ""
        self._acquired = False

    @property
    def path(self) -> Path:
        return self.root / LOCK_FILE

    def acquire(self) -> None:
        if self._acquired:
            raise RuntimeError("RootLock is not re-entrant per instance; use a new RootLock")
        self.root.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.root)
        held = _held().get(key)
        if held is not None:
            if self.exclusive and not held.exclusive:
                raise ConflictError(
                    f"the store at {self.root} is locked shared by this command; "
                    "it cannot be upgraded to the exclusive lock gc needs"
                )
            held.count += 1
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            op = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
            if not self.wait:
                op |= fcntl.LOCK_NB
            try:
                fcntl.flock(fd, op)
            except BlockingIOError:
                os.close(fd)
                raise ConflictError(self._busy_message()) from None
            except BaseException:
                os.close(fd)
                raise
            _held()[key] = _Held(fd, self.exclusive)
        self._key = key
        self._acquired = True

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        held = _held().get(self._key)
        if held is None:  # pragma: no cover - released from another thread
            return
        held.count -= 1
        if held.count == 0:
            del _held()[self._key]
            os.close(held.fd)  # closing the last descriptor drops the flock

    def _busy_message(self) -> str:
        if self.exclusive:
            return (
                f"the store at {self.root} is in use by another cargohold process; "
                "gc needs it alone (retry when the other command has finished)"
            )
        return (
            f"the store at {self.root} is locked exclusively, most likely by a running "
            "`cargohold gc` (retry when it has finished)"
        )

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
