"""Run the cargohold CLI with SIGTERM landing at the worst point of a main-thread wait.

``python -m tests.rig.condsignal N ARGS...`` runs ``cargohold ARGS...``; the N-th time the
main thread returns from a ``threading.Condition`` wait (``Future.result``, ``Event.wait``,
``Thread.start``, ``Queue.get``...), SIGTERM's handler runs while the condition's lock is
not re-acquired yet: where a real signal lands when it arrives during that re-acquisition.
A fault no real part can show on demand (the window is a few instructions wide), so it is
simulated here, with the CLI's own handler. Prints ``condsignal: fired`` on stderr when it
did (the command must then exit 130, never "cannot release un-acquired lock").
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


def install(nth: int) -> None:
    orig = threading.Condition.wait
    seen = [0]

    def wait(self: Any, timeout: float | None = None) -> bool:
        got = orig(self, timeout)
        handler = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or not callable(handler):
            return got  # a worker's wait, or before the CLI installed its handler
        seen[0] += 1
        if seen[0] != nth:
            return got
        print("condsignal: fired", file=sys.stderr, flush=True)
        saved = self._release_save()  # the re-acquisition the signal interrupts
        handler(signal.SIGTERM, None)  # KeyboardInterrupt, unless the CLI holds signals
        self._acquire_restore(saved)
        return got

    threading.Condition.wait = wait  # type: ignore[method-assign]


def main() -> None:
    install(int(sys.argv[1]))
    from cargohold.cli.main import main as cli_main

    cli_main(sys.argv[2:])


if __name__ == "__main__":
    main()
