"""hosts.toml parsing and endpoint selection (pure; only tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.errors import InvalidInputError
from cargohold.registry.hosts import (
    ALL_CAPABILITIES,
    Endpoint,
    host_candidates,
    host_dir_names,
    is_localhost,
    parse_hosts_toml,
    split_host_port,
)

FULL = """
server = "https://registry.example.com"
capabilities = ["pull", "resolve", "push"]

[host."https://mirror-a.example.com"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = "mirror-ca.pem"
  client = [["/abs/client.pem", "client.key"]]
  [host."https://mirror-a.example.com".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."http://mirror-b.example.com:5000/some/prefix"]
  capabilities = ["pull"]
  ca = ["/abs/ca1.pem", "rel/ca2.pem"]
  client = "both.pem"

[host."mirror-c.example.com/raw/api"]
  override_path = true
"""


def write_hosts(root: Path, host: str, text: str) -> Path:
    d = root / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_parse_full_file_keeps_order_and_fields(tmp_path: Path) -> None:
    hf = parse_hosts_toml(FULL, tmp_path)
    assert [m.url for m in hf.mirrors] == [
        "https://mirror-a.example.com",
        "http://mirror-b.example.com:5000/some/prefix",
        "mirror-c.example.com/raw/api",
    ]
    a, b, c = hf.mirrors
    assert a.capabilities == {"pull", "resolve"}
    assert a.skip_verify is True
    assert a.ca_files == (str(tmp_path / "mirror-ca.pem"),)
    assert a.client_certs == (("/abs/client.pem", str(tmp_path / "client.key")),)
    assert set(a.headers) == {("x-one", "1"), ("x-many", "a"), ("x-many", "b")}
    assert b.ca_files == ("/abs/ca1.pem", str(tmp_path / "rel/ca2.pem"))
    assert b.client_certs == ((str(tmp_path / "both.pem"), ""),)
    assert b.skip_verify is None
    assert c.override_path is True and c.capabilities == ALL_CAPABILITIES
    assert hf.server.url == "https://registry.example.com"


def test_candidates_order_paths_and_server_override(tmp_path: Path) -> None:
    write_hosts(tmp_path, "example.com", FULL)
    eps = host_candidates("example.com", tmp_path)
    assert [e.base_url for e in eps] == [
        "https://mirror-a.example.com",
        "http://mirror-b.example.com:5000",
        "https://mirror-c.example.com",
        "https://registry.example.com",
    ]
    assert [e.path for e in eps] == ["/v2", "/some/prefix/v2", "/raw/api", "/v2"]
    assert [e.is_mirror for e in eps] == [True, True, True, False]
    assert eps[0].url("/r/manifests/t") == "https://mirror-a.example.com/v2/r/manifests/t"
    assert [e.base_url for e in eps if e.can("push")] == [
        "https://mirror-c.example.com",
        "https://registry.example.com",
    ]
    assert eps[0].skip_verify and not eps[1].skip_verify


def test_no_config_defaults(tmp_path: Path) -> None:
    (only,) = host_candidates("quay.io", tmp_path)
    assert only == Endpoint("https://quay.io", "/v2", ALL_CAPABILITIES)
    (hub,) = host_candidates("docker.io", tmp_path / "missing")
    assert hub.base_url == "https://registry-1.docker.io"
    (hub2,) = host_candidates("docker.io", None, plain_http=True)
    assert hub2.base_url == "https://registry-1.docker.io"  # plain HTTP never for the Hub


def test_plain_http_and_insecure(tmp_path: Path) -> None:
    (e,) = host_candidates("reg.internal:5000", tmp_path, plain_http=True)
    assert e.base_url == "http://reg.internal:5000" and not e.http_fallback
    (e,) = host_candidates("reg.internal:5000", tmp_path, insecure=True)
    assert e.base_url == "https://reg.internal:5000" and e.skip_verify
    # a host's own skip_verify = false beats --insecure
    write_hosts(tmp_path, "strict.example", 'skip_verify = false\n[host."https://m.example"]\n')
    eps = host_candidates("strict.example", tmp_path, insecure=True)
    assert [e.skip_verify for e in eps] == [True, False]


@pytest.mark.parametrize(
    ("host", "scheme", "skip", "fallback"),
    [
        ("localhost:5000", "https", True, True),
        ("127.0.0.1:5000", "https", True, True),
        ("[::1]:5000", "https", True, True),
        ("127.1.2.3:5000", "https", True, True),
        ("localhost", "https", True, False),
        ("localhost:443", "https", True, False),
        ("localhost:80", "http", False, False),
        ("example.com:5000", "https", False, False),
    ],
)
def test_localhost_rules(tmp_path: Path, host: str, scheme: str, skip: bool, fallback: bool) -> None:
    (e,) = host_candidates(host, tmp_path)
    assert (e.scheme, e.skip_verify, e.http_fallback) == (scheme, skip, fallback)
    (strict,) = host_candidates(host, tmp_path, plain_http=False)
    assert strict.scheme == "https" and not strict.http_fallback
    (plain,) = host_candidates(host, tmp_path, plain_http=True)
    assert plain.scheme == "http"


def test_as_http_keeps_everything_else() -> None:
    e = Endpoint("https://127.0.0.1:5000", http_fallback=True, skip_verify=True)
    h = e.as_http()
    assert h.base_url == "http://127.0.0.1:5000" and not h.http_fallback and h.path == "/v2"


def test_directory_names_and_default(tmp_path: Path) -> None:
    assert host_dir_names("reg:5000") == ["reg_5000_", "reg:5000", "_default"]
    assert host_dir_names("reg") == ["reg", "_default"]
    write_hosts(tmp_path, "_default", '[host."https://everyone-mirror"]\n')
    eps = host_candidates("any.example", tmp_path)
    assert [e.base_url for e in eps] == ["https://everyone-mirror", "https://any.example"]
    write_hosts(tmp_path, "reg_5000_", '[host."https://windows-style"]\n')
    eps = host_candidates("reg:5000", tmp_path)
    assert eps[0].base_url == "https://windows-style"
    write_hosts(tmp_path, "other:5000", '[host."http://colon-style:1"]\n')
    assert host_candidates("other:5000", tmp_path)[0].base_url == "http://colon-style:1"


def test_docker_certs_layout_without_hosts_toml(tmp_path: Path) -> None:
    d = tmp_path / "reg.example"
    d.mkdir()
    (d / "ca.crt").write_text("x")
    (d / "client.cert").write_text("x")
    (d / "client.key").write_text("x")
    (e,) = host_candidates("reg.example", tmp_path)
    assert e.ca_files == (str(d / "ca.crt"),)
    assert e.client_certs == ((str(d / "client.cert"), str(d / "client.key")),)


def test_no_hosts_and_no_server_means_default_origin(tmp_path: Path) -> None:
    write_hosts(tmp_path, "r.example", 'ca = "c.pem"\n')
    (e,) = host_candidates("r.example", tmp_path)
    assert e.base_url == "https://r.example" and e.ca_files == (str(tmp_path / "r.example/c.pem"),)


@pytest.mark.parametrize(
    "text",
    [
        "server = [",
        'server = 1',
        '[host."https://m"]\ncapabilities = ["fly"]',
        '[host."https://m"]\nskip_verify = "yes"',
        '[host."https://m"]\nca = 3',
        '[host."https://m"]\nclient = [["a", "b", "c"]]',
        '[host."https://m"]\nheader = "x"',
        '[host."https://m"]\noverride_path = 1',
        'host = 1',
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidInputError) as ei:
        parse_hosts_toml(text, tmp_path, "certs.d/x/hosts.toml")
    assert "certs.d/x/hosts.toml" in str(ei.value)


def test_split_and_localhost() -> None:
    assert split_host_port("127.0.0.1:5000") == ("127.0.0.1", "5000")
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port("[::1]") == ("::1", "")
    assert split_host_port("host") == ("host", "")
    assert is_localhost("LOCALHOST:1") and is_localhost("[::1]:1") and is_localhost("127.9.9.9")
    assert not is_localhost("10.0.0.1:5000") and not is_localhost("localhost.example.com")
