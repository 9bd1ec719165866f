from __future__ import annotations

from pathlib import Path

import pytest

from cargohold import settings
from cargohold.errors import InvalidInputError


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('root = "/from/file"\njobs = 2\nnamespace = "file-ns"\nstore = "containerd"\n')
    env = {"CARGOHOLD_JOBS": "7", "CARGOHOLD_NAMESPACE": "env-ns"}
    s = settings.load({"namespace": "flag-ns", "root": None}, env=env, config_file=cfg)
    assert s.root == Path("/from/file") and s.source_of("root") == str(cfg)
    assert s.jobs == 7 and s.source_of("jobs") == "env"
    assert s.namespace == "flag-ns" and s.source_of("namespace") == "flag"
    assert s.store == "containerd"
    assert s.snapshotter == "overlayfs" and s.source_of("snapshotter") == "default"


def test_user_config_overrides_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc.toml"
    system.write_text('jobs = 3\nreserve = "2GiB"\n')
    xdg = tmp_path / "xdg"
    (xdg / "cargohold").mkdir(parents=True)
    (xdg / "cargohold" / "config.toml").write_text("jobs = 5\n")
    monkeypatch.setattr(settings, "SYSTEM_CONFIG", system)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    s = settings.load({}, env={})
    assert s.jobs == 5
    assert s.reserve == "2GiB"


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("jobs = 'many'\n")
    with pytest.raises(InvalidInputError, match=r"c.toml: jobs must be an integer"):
        settings.load({}, env={}, config_file=cfg)
    cfg.write_text("colour = 'red'\n")
    with pytest.raises(InvalidInputError, match="unknown setting 'colour'"):
        settings.load({}, env={}, config_file=cfg)
    cfg.write_text("jobs = [\n")
    with pytest.raises(InvalidInputError, match="invalid TOML"):
        settings.load({}, env={}, config_file=cfg)
    with pytest.raises(InvalidInputError, match="CARGOHOLD_PLAIN_HTTP"):
        settings.load({}, env={"CARGOHOLD_PLAIN_HTTP": "perhaps"})


def test_default_root_as_root_and_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings.os, "geteuid", lambda: 0)
    assert settings.default_root() == Path("/var/lib/cargohold")
    monkeypatch.setattr(settings.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert settings.default_root() == tmp_path / "cargohold"
