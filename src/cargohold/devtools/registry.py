"""Start Debian's ``docker-registry`` (CNCF distribution) on loopback with its own storage."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cargohold.errors import NotFoundError, UnavailableError
from cargohold.interrupts import wait_until

PACKAGE = "docker-registry"


def find_binary(name: str = "docker-registry") -> str:
    path = shutil.which(name)
    if path is None:
        for d in ("/usr/bin", "/usr/sbin", "/sbin"):
            if (Path(d) / name).exists():
                return str(Path(d) / name)
        raise NotFoundError(
            f"{name} not found", hint=f"install Debian's {PACKAGE}: apt-get install {PACKAGE}"
        )
    return path


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a child service and reap it; SIGKILL if it has not exited in ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 20.0,
    *,
    context: ssl.SSLContext | None = None,
) -> None:
    """Wait until ``url`` answers with a non-5xx status, or the process dies."""

    def answers() -> bool:
        if proc.poll() is not None:
            raise UnavailableError(f"{url}: process exited early:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                return bool(r.status < 500)
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    if wait_until(answers, timeout=timeout, max_pause=0.05):
        return
    raise UnavailableError(f"{url} did not answer within {timeout}s:\n{log.read_text(errors='replace')}")


@dataclass
class LocalRegistry:
    """A running registry; ``stop()`` ends it, ``restart()`` starts it again on the same port."""

    host: str  # "127.0.0.1:PORT"
    root: Path  # its storage directory
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        stop_process(self.proc)

    def start(self) -> None:
        self.proc = spawn_registry(self.config, self.log)
        wait_http(f"{self.url}/v2/", self.proc, self.log)

    def restart(self) -> None:
        self.stop()
        self.start()


def spawn_registry(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Run ``docker-registry serve CONFIG`` in its own session, output appended to ``log``."""
    binary = find_binary()
    logf = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        return subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        logf.close()


def registry_config(
    storage: Path,
    port: int,
    *,
    proxy_remote: str | None = None,
    extra: list[str] | None = None,
    http_extra: list[str] | None = None,
) -> str:
    """The YAML config of a loopback registry (``extra``: more top-level YAML lines;
    ``http_extra``: more lines inside ``http:``, e.g. ``tls``)."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: cargohold-local-secret",
    ]
    lines += http_extra or []
    if proxy_remote:
        lines += ["proxy:", f"  remoteurl: {proxy_remote}"]
    lines += extra or []
    return "\n".join(lines) + "\n"


def start_registry(
    base: Path,
    *,
    proxy_remote: str | None = None,
    port: int = 0,
    extra_config: list[str] | None = None,
) -> LocalRegistry:
    """Start a registry on a free loopback port with storage under ``base``.

    ``proxy_remote`` makes it a pull-through cache (a mirror) of another registry.
    """
    base.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    config = base / "config.yml"
    config.write_text(registry_config(storage, port, proxy_remote=proxy_remote, extra=extra_config))
    log = base / "registry.log"
    proc = spawn_registry(config, log)
    reg = LocalRegistry(f"127.0.0.1:{port}", storage, config, log, proc)
    try:
        wait_http(f"{reg.url}/v2/", proc, log)
    except BaseException:
        reg.stop()
        raise
    return reg
