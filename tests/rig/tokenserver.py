"""A Docker token server for tests: issues real RS256 JWTs that ``docker-registry`` with
``auth: token`` accepts (it trusts the self-signed certificate, sent in the ``x5c``
header). Signing uses the ``openssl`` command, so no Python crypto package is needed.

Policy: ``users`` (name -> password, basic auth on ``GET /token``) get every action they
ask for; ``refresh_tokens`` (token -> user) do the same via the OAuth2 ``POST /token``;
anonymous callers get ``pull`` only if ``anonymous_pull``. Bad credentials -> 401.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.rig.needs import require_binary

ISSUER = "cargohold-test-issuer"
SERVICE = "cargohold-test-registry"


def make_cert(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``cn`` / 127.0.0.1 / localhost."""
    require_binary("openssl", "openssl")  # fails under CI=true, skips elsewhere
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


@dataclass
class TokenServer:
    directory: Path
    users: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    anonymous_pull: bool = True
    expires_in: int = 300
    token_key: str = "token"  # or "access_token"
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cert, self.key = make_cert(self.directory / "token-cert", cn="cargohold-token")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def issue(self, subject: str, scopes: list[str], grant: bool) -> str:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if not grant:
                actions = [a for a in actions if a == "pull"] if self.anonymous_pull else []
            if actions:
                access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 30,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return signing_input + "." + _b64(sig)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: TokenServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        o = self.server_owner
        q = parse_qs(urlsplit(self.path).query)
        o.record(Request("GET", self.path, dict(self.headers.items()), q))
        auth = self.headers.get("Authorization", "")
        subject, grant = "", False
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if o.users.get(user) != pw:
                self._reply(401, {"details": "invalid username or password"})
                return
            subject, grant = user, True
        self._reply(200, self._token(subject, q.get("scope", []), grant))

    def do_POST(self) -> None:
        o = self.server_owner
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode())
        o.record(Request("POST", self.path, dict(self.headers.items()), form))
        if form.get("grant_type") != ["refresh_token"]:
            self._reply(400, {"details": "unsupported grant_type"})
            return
        user = o.refresh_tokens.get((form.get("refresh_token") or [""])[0])
        if user is None:
            self._reply(401, {"details": "invalid refresh token"})
            return
        self._reply(200, self._token(user, form.get("scope", []), True))

    def _token(self, subject: str, scopes: list[str], grant: bool) -> dict[str, object]:
        o = self.server_owner
        scope_list = [s for scope in scopes for s in scope.split(" ") if s]
        tok = o.issue(subject, scope_list, grant)
        return {o.token_key: tok, "expires_in": o.expires_in, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
