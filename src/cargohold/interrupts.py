"""Ctrl-C and SIGTERM as KeyboardInterrupt in the main thread, never as a RuntimeError.

The CLI turns both signals into KeyboardInterrupt (:func:`handle`), raised in the main
thread wherever it is. One raised inside ``Condition.wait`` (``Future.result``,
``Event.wait``, ``Queue.get``, ``Thread.start``) can leave the condition's lock released,
and the interrupt then surfaces as "RuntimeError: cannot release un-acquired lock" (exit 1,
workers left running) instead of exit 130. One raised inside ``Condition.__enter__`` (Python
code: the handler runs right after the lock is taken) leaves the lock held by the main
thread for good, the ``with`` block never entered: the worker that then finishes that
``Future`` (``set_result``), sets that ``Event`` or puts on that ``Queue`` blocks forever, and
so does whatever waits for the worker (the pool's shutdown: a hang after SIGTERM). So the
main thread never waits on a condition, and takes one only with signals held:

- :func:`wait_until` polls (a sleep takes an interrupt cleanly); it is also cargohold's one
  polling wait (with a ``timeout``: a server coming up, a process going away);
- :func:`wait_future` waits for a ``Future`` that way, its ``done`` and ``result`` (which take
  its condition) called with signals held (:func:`call_held`); its pauses end as soon as the
  future is done (a done-callback writes to an eventfd that the pause ``select``-s on:
  ``select`` takes no lock, and a gRPC call of a few milliseconds is not stretched to the
  next poll);
- :func:`held` defers a signal arriving during a call that waits inside the standard
  library (``ThreadPoolExecutor.submit`` starts a thread and waits for it to run): it is
  raised when the block ends;
- :func:`keep_interrupts_from_finalizers`: an interrupt raised inside a ``__del__`` is
  delivered again rather than lost.
"""

from __future__ import annotations

import _thread
import functools
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # the CLI installs handle() at start-up: keep this module light
    from concurrent.futures import ThreadPoolExecutor

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class FutureLike(Protocol[T_co]):
    """``concurrent.futures.Future``, or a gRPC call's future."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co: ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


class _Wakeup:
    """An eventfd that a done-callback sets from any thread and a pause of the main thread
    waits on (``select``: interrupted cleanly by a signal, no lock held)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()  # set() never writes to a closed (reused) fd number

    def set(self, _: object = None) -> None:
        with self._lock:
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less once set."""
        select.select([self._fd], [], [], seconds)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

#: Polling interval of :func:`wait_until`: from POLL_FIRST doubling up to POLL_SECONDS, so
#: a short wait (a chunk being read ahead) stays short and a long one costs little CPU.
POLL_FIRST = 0.0001
POLL_SECONDS = 0.01
#: Longest pause of :func:`wait_future` (its pauses end when the future is done).
_WOKEN_PAUSE = 0.25

_held = 0  # depth of held() blocks (main thread only: Python runs signal handlers there)
_pending = False  # a signal arrived while held


def handle(signum: int, frame: object) -> None:
    """Signal handler (SIGINT, SIGTERM): KeyboardInterrupt now, or when :func:`held` ends."""
    global _pending
    if _held:
        _pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def held() -> Iterator[None]:
    """Defer Ctrl-C / SIGTERM (with :func:`handle` installed) until the block ends, then
    raise KeyboardInterrupt. For short calls only: the block is not interruptible. Outside
    the main thread (which signals never interrupt) it does nothing."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            _pending = False
            raise KeyboardInterrupt


def wait_until(done: Callable[[], bool],
               on_interrupt: Callable[[], None] | None = None, *,
               timeout: float | None = None, max_pause: float = POLL_SECONDS,
               wakeup: _Wakeup | None = None) -> bool:
    """Return True once ``done()``, polling (pauses from POLL_FIRST doubling up to
    ``max_pause``: raise it for a ``done`` that costs something, e.g. a call to a server).
    With ``timeout`` (seconds), return False when ``done()`` is still false that long after
    the start (it is called at least once, and once more at the deadline). Errors ``done``
    raises end the wait. Without ``on_interrupt`` a KeyboardInterrupt ends the wait; with
    it, an interrupt calls ``on_interrupt`` (to make what is waited for stop), the wait goes
    on, and the interrupt is raised once ``done()``: for waits that must not leave a worker
    running under a store about to be closed. ``wakeup``: set when ``done()`` may have
    become true; pauses end then (and may be long)."""
    interrupted: BaseException | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = POLL_FIRST
    reached = True
    while True:
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    reached = False
                    break
                nap = pause if left is None else min(pause, left)
                if wakeup is None:
                    time.sleep(nap)
                else:
                    wakeup.pause(nap)
                pause = min(pause * 2, max_pause)
            break
        except KeyboardInterrupt as e:
            if on_interrupt is None:
                raise
            interrupted = e
            with held():  # a second signal does not cut the cancelling short
                on_interrupt()
    if interrupted is not None:
        raise interrupted
    return reached


def call_held(fn: Callable[[], T]) -> T:
    """``fn()`` with Ctrl-C / SIGTERM held (:func:`held`): for a short call that takes a
    ``threading.Condition`` in the main thread (``Future.done``, ``Event.set``,
    ``Queue.get_nowait``...), so that no KeyboardInterrupt leaves its lock taken."""
    with held():
        return fn()


def wait_future(fut: FutureLike[T], on_interrupt: Callable[[], None] | None = None) -> T:
    """The result of ``fut`` (its exception raised), waited for as :func:`wait_until` does
    (see it for ``on_interrupt``); its condition only ever taken with signals held."""
    wakeup = _Wakeup()
    try:
        call_held(functools.partial(fut.add_done_callback, wakeup.set))
        wait_until(functools.partial(call_held, fut.done), on_interrupt, max_pause=_WOKEN_PAUSE,
                   wakeup=wakeup)  # fmt: skip
    finally:
        call_held(wakeup.close)
    with held():
        return fut.result()  # done: no wait


def shutdown(pool: ThreadPoolExecutor, on_interrupt: Callable[[], None] | None = None) -> None:
    """``pool.shutdown(wait=True, cancel_futures=True)``, its wait for the workers polled
    (see :func:`wait_until` for ``on_interrupt``): queued tasks are dropped, running ones
    finish."""
    with held():
        pool.shutdown(wait=False, cancel_futures=True)
    threads = list(pool._threads)  # the workers it started (none start after shutdown)
    wait_until(lambda: not any(t.is_alive() for t in threads), on_interrupt)


def _redeliver(signum: signal.Signals) -> None:
    time.sleep(POLL_FIRST)  # let the finalizer return first
    _thread.interrupt_main(signum)  # nothing once the handler is the default again


def keep_interrupts_from_finalizers() -> None:
    """Install a ``sys.unraisablehook`` for the CLI: a KeyboardInterrupt raised inside a
    finalizer (a ``__del__`` the garbage collector runs in the main thread, e.g. closing a
    socket) cannot propagate; instead of being lost with a traceback printed (the command
    then ignoring the signal), the signal is delivered again, from another thread, to land
    outside it."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type,
                                                          KeyboardInterrupt):
            _thread.start_new_thread(_redeliver, (signal.SIGTERM,))  # no Condition wait
            return
        previous(unraisable)

    sys.unraisablehook = hook
