"""Duplicate-call suppression: one blob wanted twice at once is fetched once.

Threads calling :meth:`SingleFlight.do` with the same key while a call for that key is in
progress wait for it and get its result (or its exception) instead of running ``fn`` again.
Once a call has finished the key is forgotten: a later call runs ``fn`` anew (results are not
cached; the content store is the cache).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, cast

from cargohold.interrupts import call_held, wait_until

T = TypeVar("T")


class _Call:
    __slots__ = ("callers", "done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None
        self.callers = 1


class SingleFlight:
    """Per-key call coalescing across threads of one process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def do(self, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` unless a call for ``key`` is in flight; then wait and share its outcome."""
        value, _shared = self.do_shared(key, fn)
        return value

    def do_shared(self, key: str, fn: Callable[[], T]) -> tuple[T, bool]:
        """Like :meth:`do`; also says whether the result came from another caller's run
        (``True``) or from this caller running ``fn`` (``False``)."""
        with self._lock:
            call = self._calls.get(key)
            if call is not None:
                call.callers += 1
                leader = False
            else:
                call = _Call()
                self._calls[key] = call
                leader = True
        if not leader:
            if threading.current_thread() is threading.main_thread():
                wait_until(call.done.is_set)  # Ctrl-C / SIGTERM: see cargohold.interrupts
            else:
                call.done.wait()
            if call.error is not None:
                raise call.error
            return cast(T, call.value), True
        try:
            value = fn()
            call.value = value
        except BaseException as e:
            call.error = e
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call_held(call.done.set)  # may be the main thread: see cargohold.interrupts
        return value, False

    def pending(self, key: str) -> int:
        """How many callers (the runner and its waiters) are currently in a call for ``key``."""
        with self._lock:
            call = self._calls.get(key)
            return call.callers if call is not None else 0
