"""Authentication: WWW-Authenticate parsing, Docker config and credential helpers, basic
auth against an htpasswd registry, bearer tokens from a real JWT token server, and token
renewal against the fault proxy."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.errors import InvalidInputError, UnauthorizedError
from cargohold.registry.auth import (
    Challenge,
    Credentials,
    CredentialStore,
    default_auth_files,
    normalize_host,
    parse_www_authenticate,
    server_url,
)
from cargohold.registry.client import RegistryClient
from cargohold.registry.push import push_image
from cargohold.registry.transport import Transport
from tests.rig.faultproxy import FaultProxy
from tests.rig.needs import require_module
from tests.rig.services import Registry, TokenAuth, start_registry
from tests.rig.tokenserver import ISSUER, SERVICE, TokenServer
from tests.test_registry_client import Sink, hand_image, ref_for

# --------------------------------------------------------------------------- parsing


def test_parse_bearer() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
    }


def test_parse_quoted_commas_escapes_and_spaces() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm = "https://a/token" , scope="repository:a:pull,push repository:b:pull",'
        ' error="insufficient_scope", note="say \\"hi\\", ok"'
    )
    assert c.params["realm"] == "https://a/token"
    assert c.params["scope"] == "repository:a:pull,push repository:b:pull"
    assert c.params["error"] == "insufficient_scope"
    assert c.params["note"] == 'say "hi", ok'


def test_parse_several_challenges_and_unquoted_tokens() -> None:
    got = parse_www_authenticate('Basic realm="Registry Realm", Bearer realm=https://x/t,service=svc')
    assert got == [
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://x/t", "service": "svc"}),
    ]
    got = parse_www_authenticate(["Negotiate abc==", 'BASIC REALM="r"'])
    assert got[0] == Challenge("negotiate", {"token68": "abc=="})
    assert got[1] == Challenge("basic", {"realm": "r"})


def test_parse_odd_inputs() -> None:
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate("Basic") == [Challenge("basic", {})]
    (c,) = parse_www_authenticate('Bearer realm="unterminated')
    assert c.params["realm"] == "unterminated"
    (c,) = parse_www_authenticate("Bearer realm=,service=x")
    assert c.params == {"realm": "", "service": "x"}


# --------------------------------------------------------------------------- credentials


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def write_config(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_key_forms_and_docker_hub(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
                "reg.example:5000": {"auth": b64("u1:p:w")},
                "https://other.example/v2/": {"username": "u2", "password": "p2"},
                "http://tok.example": {"identitytoken": "refresh-me"},
            }
        },
    )
    store = CredentialStore(cfg, env={"HOME": str(tmp_path / "home")})
    assert store.get("docker.io") == Credentials("hubuser", "hubpw")
    assert store.get("registry-1.docker.io") == Credentials("hubuser", "hubpw")
    assert store.get("reg.example:5000") == Credentials("u1", "p:w")
    assert store.get("other.example") == Credentials("u2", "p2")
    tok = store.get("tok.example")
    assert tok is not None and tok.is_identity_token and tok.secret == "refresh-me"
    assert store.get("nobody.example") is None
    assert normalize_host("HTTPS://Reg.Example:5000/v1/") == "reg.example:5000"
    assert server_url("docker.io") == "https://index.docker.io/v1/"
    assert server_url("r:1") == "r:1"


def test_lookup_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home / ".docker/config.json", {"auths": {"a.example": {"auth": b64("home:1")}, "h.example": {"auth": b64("home:2")}}})
    write_config(tmp_path / "dc/config.json", {"auths": {"a.example": {"auth": b64("dockerconfig:1")}, "d.example": {"auth": b64("dc:2")}}})
    write_config(tmp_path / "raf.json", {"auths": {"a.example": {"auth": b64("regauthfile:1")}}})
    explicit = write_config(tmp_path / "explicit.json", {"auths": {"x.example": {"auth": b64("explicit:1")}}})
    env = {"HOME": str(home), "DOCKER_CONFIG": str(tmp_path / "dc"), "REGISTRY_AUTH_FILE": str(tmp_path / "raf.json")}
    assert default_auth_files(explicit, env) == [
        explicit,
        tmp_path / "raf.json",
        tmp_path / "dc/config.json",
        home / ".docker/config.json",
    ]
    s = CredentialStore(explicit, env=env)
    assert s.get("x.example") == Credentials("explicit", "1")
    assert s.get("a.example") == Credentials("regauthfile", "1")
    assert s.get("d.example") == Credentials("dc", "2")
    assert s.get("h.example") == Credentials("home", "2")
    with pytest.raises(InvalidInputError):
        CredentialStore(tmp_path / "missing.json", env=env).get("a.example")


def test_broken_config_is_an_auth_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UnauthorizedError):
        CredentialStore(bad, env={"HOME": str(tmp_path)}).get("x")
    cfg = write_config(tmp_path / "c.json", {"auths": {"x": {"auth": b64("nocolon")}}})
    with pytest.raises(UnauthorizedError):
        CredentialStore(cfg, env={"HOME": str(tmp_path)}).get("x")


HELPER = """#!/bin/sh
read url
echo "$url" >> "{log}"
case "$url" in
  *slow*) exec sleep 5 ;;
  *broken*) echo "something went wrong" >&2; exit 3 ;;
  *nope*) echo "credentials not found in native keychain"; exit 1 ;;
  *tokenhost*) printf '{{"ServerURL":"%s","Username":"<token>","Secret":"idtok"}}' "$url" ;;
  *) printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}}' "$url" ;;
esac
"""


def install_helper(bindir: Path, name: str, log: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    p = bindir / f"docker-credential-{name}"
    p.write_text(HELPER.format(log=log))
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_credential_helpers(tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    install_helper(tmp_path / "bin", "test", log)
    cfg = write_config(
        tmp_path / "config.json",
        {
            "auths": {"plain.example": {"auth": b64("file:pw")}, "helped.example": {"auth": b64("file:ignored")}},
            "credHelpers": {
                "helped.example": "test",
                "slow.example": "test",
                "broken.example": "test",
                "tokenhost.example": "test",
                "missing.example": "absent",
                "docker.io": "test",
            },
            "credsStore": "test",
        },
    )
    env = {"HOME": str(tmp_path), "PATH": f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}"}
    s = CredentialStore(cfg, env=env, helper_timeout=1.0)
    assert s.get("helped.example") == Credentials("helper-user", "helper-secret")  # helper beats auths
    assert s.get("plain.example") == Credentials("file", "pw")
    assert s.get("store.example") == Credentials("helper-user", "helper-secret")  # credsStore
    assert s.get("nope.example") is None
    tok = s.get("tokenhost.example")
    assert tok is not None and tok.is_identity_token and tok.secret == "idtok"
    assert s.get("docker.io") == Credentials("helper-user", "helper-secret")
    assert "https://index.docker.io/v1/" in log.read_text().split()
    with pytest.raises(UnauthorizedError) as ei:
        s.get("slow.example")
    assert "did not answer" in str(ei.value)
    with pytest.raises(UnauthorizedError) as ei:
        s.get("broken.example")
    assert "something went wrong" in str(ei.value)
    with pytest.raises(UnauthorizedError) as ei:
        s.get("missing.example")
    assert "docker-credential-absent" in str(ei.value) and "install" in ei.value.hint_text()


# --------------------------------------------------------------------------- real registries


def make_auth_client(tmp_path: Path, auths: dict[str, object] | None = None, **kw: object) -> RegistryClient:
    cfg = write_config(tmp_path / "auth" / f"config{len(list(tmp_path.glob('auth/*')))}.json", {"auths": auths or {}})
    creds = CredentialStore(cfg, env={"HOME": str(tmp_path / "nohome")})
    t = Transport(backoff=0.001, sleep=lambda s: None)
    return RegistryClient(hosts_dir=None, transport=t, credentials=creds, **kw)  # type: ignore[arg-type]


def bcrypt_line(user: str, password: str) -> str:
    """An htpasswd line (bcrypt, cost 4: the registry checks it on every request) made with
    the PyPI ``bcrypt`` package of the test extras (Python 3.13 has no ``crypt``)."""
    bcrypt = require_module("bcrypt")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[Registry]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(bcrypt_line("alice", "wonderland") + "\n")
    reg = start_registry(tmp_path / "basicreg", htpasswd=htpasswd)
    yield reg
    reg.stop()


@pytest.mark.registry
def test_basic_auth_registry(basic_registry: Registry, tmp_path: Path) -> None:
    host = basic_registry.host
    img = hand_image(b"basic")
    ref = ref_for(host)
    with pytest.raises(UnauthorizedError) as ei:
        push_image(make_auth_client(tmp_path), ref, img)
    assert "anonymously" in str(ei.value)
    with pytest.raises(UnauthorizedError):
        push_image(make_auth_client(tmp_path, {host: {"auth": b64("alice:wrong")}}), ref, img)
    good = make_auth_client(tmp_path, {f"http://{host}": {"auth": b64("alice:wonderland")}})
    push_image(good, ref, img)
    assert good.resolve(ref).digest == img.root.digest
    sink = Sink()
    good.download_blob(ref, img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


@pytest.fixture
def token_setup(tmp_path: Path) -> Iterator[tuple[Registry, TokenServer]]:
    ts = TokenServer(tmp_path / "ts", users={"bob": "builder"}, refresh_tokens={"rt-123": "bob"})
    reg = start_registry(
        tmp_path / "tokenreg",
        token_auth=TokenAuth(ts.realm, SERVICE, ISSUER, ts.cert),
    )
    yield reg, ts
    reg.stop()
    ts.stop()


@pytest.mark.registry
def test_bearer_token_flow(token_setup: tuple[Registry, TokenServer], tmp_path: Path) -> None:
    reg, ts = token_setup
    img = hand_image(b"bearer")
    ref = ref_for(reg.host)
    anon = make_auth_client(tmp_path)
    with pytest.raises(UnauthorizedError):
        push_image(anon, ref, img)  # anonymous gets pull only
    with pytest.raises(UnauthorizedError):
        push_image(make_auth_client(tmp_path, {reg.host: {"auth": b64("bob:wrong")}}), ref, img)
    bob = make_auth_client(tmp_path, {reg.host: {"auth": b64("bob:builder")}})
    ts.requests.clear()
    push_image(bob, ref, img)
    # one token per scope, reused for every blob and manifest
    scopes = [r.form.get("scope") for r in ts.requests]
    assert len(ts.requests) <= 2, scopes
    assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in ts.requests)
    assert [f"repository:{ref.repository}:pull,push"] in scopes
    # anonymous pull works with its own (anonymous) token
    assert anon.resolve(ref).digest == img.root.digest
    sink = Sink()
    anon.download_blob(ref, img.layer, sink)
    assert bytes(sink.buf) == img.blobs[img.layer.digest]


@pytest.mark.registry
def test_bearer_identity_token_and_access_token(token_setup: tuple[Registry, TokenServer], tmp_path: Path) -> None:
    reg, ts = token_setup
    ts.token_key = "access_token"
    img = hand_image(b"identity")
    ref = ref_for(reg.host)
    c = make_auth_client(tmp_path, {reg.host: {"identitytoken": "rt-123"}})
    ts.requests.clear()
    push_image(c, ref, img)
    assert ts.requests and all(r.method == "POST" for r in ts.requests)
    assert ts.requests[0].form["grant_type"] == ["refresh_token"]
    assert ts.requests[0].form["refresh_token"] == ["rt-123"]
    bad = make_auth_client(tmp_path, {reg.host: {"identitytoken": "nope"}})
    with pytest.raises(UnauthorizedError):
        bad.resolve(ref)


@pytest.mark.registry
def test_token_expiry_renews(token_setup: tuple[Registry, TokenServer], tmp_path: Path) -> None:
    reg, ts = token_setup
    img = hand_image(b"expiry")
    ref = ref_for(reg.host)
    c = make_auth_client(tmp_path, {reg.host: {"auth": b64("bob:builder")}})
    now = [1000.0]
    c.auth.clock = lambda: now[0]
    push_image(c, ref, img)
    c.resolve(ref)
    before = len(ts.requests)
    c.resolve(ref)
    assert len(ts.requests) == before  # cached
    now[0] += ts.expires_in + 1
    c.resolve(ref)
    assert len(ts.requests) == before + 1  # expired: fetched again


@pytest.mark.registry
def test_token_renewed_on_401(registry: Registry, tmp_path: Path) -> None:
    proxy = FaultProxy(registry.host, require_token="first")
    try:
        img = hand_image(b"renew")
        ref = ref_for(proxy.host)
        c = make_auth_client(tmp_path)
        push_image(c, ref, img)
        n = len(proxy.token_requests)
        assert n >= 1
        proxy.require_token = "second"  # the registry stops accepting the cached token
        assert c.resolve(ref).digest == img.root.digest
        assert len(proxy.token_requests) == n + 1
        # a token server that refuses: a clear error
        proxy.token_user = ("someone", "else")
        proxy.require_token = "third"
        with pytest.raises(UnauthorizedError) as ei:
            c.resolve(ref)
        assert "token server" in str(ei.value)
    finally:
        proxy.stop()


def test_merge_scopes() -> None:
    from cargohold.registry.auth import merge_scopes

    assert merge_scopes(["repository:a:pull,push", "repository:a:pull", ""]) == ["repository:a:pull,push"]
    assert merge_scopes(["repository:a:pull", "repository:b:pull", "repository:a:push"]) == [
        "repository:a:pull,push",
        "repository:b:pull",
    ]
    assert merge_scopes(["registry:catalog:*", "odd"]) == ["registry:catalog:*", "odd"]
    assert merge_scopes(["repository:host:5000/x:pull"]) == ["repository:host:5000/x:pull"]
