"""Real services for tests, started on loopback with their own state under a temp dir."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cargohold.devtools.registry import (
    free_port,
    registry_config,
    spawn_registry,
    stop_process,
    wait_http,
)
from tests.rig.needs import IN_CI, needs_root, require_binary

__all__ = [
    "IN_CI",
    "Registry",
    "TokenAuth",
    "free_port",
    "needs_root",
    "require_binary",
    "start_registry",
    "wait_http",
]


@dataclass
class Registry:
    """A running CNCF distribution registry."""

    host: str  # "127.0.0.1:PORT"
    root: Path
    proc: subprocess.Popen[bytes]
    config: Path
    log: Path
    scheme: str = "http"  # "https" when started with tls=

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.proc = _spawn(self.config, self.log)
        wait_http(f"{self.url}/v2/", self.proc, self.log, context=_unverified(self.scheme))


def _unverified(scheme: str) -> ssl.SSLContext | None:
    """For waiting on a TLS registry with a test certificate."""
    if scheme != "https":
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class TokenAuth:
    """``auth: token`` settings: the registry trusts JWTs signed by ``rootcertbundle``'s key."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    require_binary("docker-registry", "docker-registry")  # skip, or fail under CI
    return spawn_registry(config, log)


def start_registry(
    base: Path,
    *,
    proxy_remote: str | None = None,
    port: int = 0,
    htpasswd: Path | None = None,
    token_auth: TokenAuth | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Registry:
    """Start ``docker-registry`` on a free loopback port with storage under ``base``.

    ``proxy_remote`` makes it a pull-through cache of another registry (a mirror).
    ``htpasswd`` (a file of bcrypt entries) turns on basic auth, ``token_auth`` bearer
    tokens; ``tls`` = (certificate, key) serves HTTPS.
    """
    base.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    http_extra: list[str] = []
    if tls is not None:
        http_extra = ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    extra: list[str] = []
    if htpasswd is not None:
        extra = ["auth:", "  htpasswd:", "    realm: cargohold-test", f"    path: {htpasswd}"]
    elif token_auth is not None:
        extra = [
            "auth:",
            "  token:",
            f"    realm: {token_auth.realm}",
            f"    service: {token_auth.service}",
            f"    issuer: {token_auth.issuer}",
            f"    rootcertbundle: {token_auth.rootcertbundle}",
        ]
    text = registry_config(
        storage, port, proxy_remote=proxy_remote, extra=extra, http_extra=http_extra
    )
    config = base / "config.yml"
    config.write_text(text)
    log = base / "registry.log"
    proc = _spawn(config, log)
    scheme = "https" if tls is not None else "http"
    reg = Registry(f"127.0.0.1:{port}", storage, proc, config, log, scheme)
    try:
        wait_http(f"{reg.url}/v2/", proc, log, context=_unverified(scheme))
    except Exception:
        reg.stop()
        raise
    return reg
