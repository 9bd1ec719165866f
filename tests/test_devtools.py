"""`python -m cargohold.devtools registry`: the demo's registry keeps its port across restarts
(issue 14, 10: `KEEP=1` kept a spec pointing at a registry that came back elsewhere)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from cargohold.devtools.registry import free_port


def devtools(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cargohold.devtools", *args],
                          capture_output=True, text=True, timeout=120)


def answers(host: str) -> bool:
    with urllib.request.urlopen(f"http://{host}/v2/", timeout=10) as r:
        return bool(r.status == 200)


def test_registry_takes_a_port_and_keeps_it_on_restart(tmp_path: Path) -> None:
    d = tmp_path / "registry"
    port = free_port()
    first = devtools("registry", str(d), "--port", str(port))
    try:
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"127.0.0.1:{port}"
        assert answers(first.stdout.strip())
    finally:
        assert devtools("stop-registry", str(d)).returncode == 0
    # Restarted without --port: the same address (and storage) as before.
    again = devtools("registry", str(d))
    try:
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"127.0.0.1:{port}"
        assert answers(again.stdout.strip())
    finally:
        assert devtools("stop-registry", str(d)).returncode == 0
    missing = devtools("stop-registry", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no registry was started under" in missing.stderr


def test_push_samples_to_a_dead_registry_is_an_error_not_a_traceback() -> None:
    """A registry that is not there: the unavailable error's message, hint and exit code (7),
    as from `cargohold` itself (it was a traceback, exit 1)."""
    r = devtools("push-samples", f"127.0.0.1:{free_port()}", "--big-size", "1000")
    assert r.returncode == 7, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: connection refused by 127.0.0.1:")
