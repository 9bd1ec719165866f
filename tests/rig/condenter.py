"""Run the cargohold CLI with SIGTERM landing inside a main-thread ``with condition:``.

``python -m tests.rig.condenter N ARGS...`` runs ``cargohold ARGS...``; the N-th time the
main thread enters a ``threading.Condition`` (``Future.done``/``result``, ``Event.set``,
``Queue.get``, gRPC's channel and call states...), SIGTERM's handler runs once the
condition's lock is taken, before ``__enter__`` returns: where a real signal lands when it
arrives between the two (``Condition.__enter__`` is Python code; CPython runs signal
handlers after each call). The ``with`` block is then never entered, so its ``__exit__``
never releases the lock: held by the main thread for good, the next thread to take it (a
worker finishing that future) blocks forever, and so does whatever waits for that thread.
A window of a few instructions, which no real part hits on demand: simulated here with
the CLI's own handler. Prints ``condenter: fired`` on stderr when it did (the command must
then exit 130, promptly). Entries with signals held (:func:`cargohold.interrupts.held`) are
not counted: there the handler only notes the signal. See also :mod:`tests.rig.condsignal`.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from typing import Any


def install(nth: int) -> None:
    orig = threading.Condition.__enter__
    seen = [0]

    def enter(self: Any) -> Any:
        got = orig(self)
        handler = signal.getsignal(signal.SIGTERM)
        # (not threading.current_thread(): a thread starting is not registered yet)
        if threading.get_ident() != threading.main_thread().ident or not callable(handler):
            return got  # a worker's, or before the CLI installed its handler
        interrupts = sys.modules.get("cargohold.interrupts")
        if interrupts is not None and getattr(interrupts, "_held", 0):
            return got  # signals held: the handler would only note it (not counted)
        seen[0] += 1
        if seen[0] == nth:
            where = traceback.extract_stack(limit=3)[0]
            print(f"condenter: fired in {where.name} ({where.filename}:{where.lineno})",
                  file=sys.stderr, flush=True)
            handler(signal.SIGTERM, None)  # KeyboardInterrupt, unless the CLI holds signals
        return got

    threading.Condition.__enter__ = enter  # type: ignore[method-assign]


def main() -> None:
    install(int(sys.argv[1]))
    from cargohold.cli.main import main as cli_main

    sys.argv = ["cargohold", *sys.argv[2:]]
    cli_main()  # as the entry point: with its finalizer hook and crash dumps


if __name__ == "__main__":
    main()
