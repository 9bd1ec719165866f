"""Running the cargohold command line from tests (a subprocess, as users run it)."""

from __future__ import annotations

import json
import os
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
