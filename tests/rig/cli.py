"""Running the cargohold command line from tests (a subprocess, as users run it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "cargohold"]
#: Fast retries (faults are injected on purpose) and no free-space reserve (small tmp dirs).
TEST_ENV = {"CARGOHOLD_RETRIES": "2", "CARGOHOLD_BACKOFF": "0.01", "CARGOHOLD_RESERVE": "0"}


def run_cli(root: Path, *args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cargohold --root ROOT ARGS...``; with ``check`` an AssertionError showing its
    output when it exits non-zero."""
    p = subprocess.run([*CLI, "--root", str(root), *args], capture_output=True, text=True,
                       timeout=300, env={**os.environ, **TEST_ENV, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"cargohold {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def last_json(p: subprocess.CompletedProcess[str]) -> Any:
    """The last JSON line of a command's stdout (its summary with --json)."""
    return json.loads([x for x in p.stdout.splitlines() if x.strip()][-1])


#: Environment for a CLI child whose hang a test must be able to diagnose: SIGABRT makes
#: faulthandler print every thread's stack on stderr (see :func:`communicate_or_dump`).
DUMP_ENV = {"PYTHONFAULTHANDLER": "1"}


def communicate_or_dump(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The stderr of ``proc`` (stderr piped, text) once it exits. If it is still running
    ``timeout`` seconds on: SIGABRT (with :data:`DUMP_ENV` in its environment faulthandler
    prints all thread stacks on stderr) and an AssertionError "HUNG:" with that stderr."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        raise AssertionError(f"HUNG: still running {timeout} s on; its stderr (thread stacks "
                             f"after SIGABRT):\n{err}") from None
