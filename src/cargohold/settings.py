"""Settings and their precedence: CLI flag > environment (CARGOHOLD_*) > config file > default.

Config files are TOML: ``/etc/cargohold/config.toml`` first, then the user's
(``$XDG_CONFIG_HOME/cargohold/config.toml``, default ``~/.config``), the later overriding
the earlier; ``--config FILE`` / ``CARGOHOLD_CONFIG`` replaces both.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargohold.errors import InvalidInputError

if TYPE_CHECKING:
    from cargohold.bake.spec import CacheSpec

SYSTEM_CONFIG = Path("/etc/cargohold/config.toml")
ENV_PREFIX = "CARGOHOLD_"

#: What to do about a bad setting (the message names the flag, variable or file).
SETTINGS_HINT = ("fix the flag, CARGOHOLD_* variable or config file named in the message "
                 "(README \"Settings\" lists the keys)")


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message, hint=SETTINGS_HINT)


def default_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cargohold")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "cargohold"


def user_config() -> Path:
    cfg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(cfg) / "cargohold" / "config.toml"


def _parse_bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise _bad(f"{where}: expected a boolean, got {text!r}")


@dataclass
class Settings:
    """Everything configurable; field names are the TOML keys and CARGOHOLD_<UPPER> names."""

    root: Path = field(default_factory=default_root)
    verbosity: int = 0
    json: bool = False
    progress: bool = True
    store: str = "embedded"
    address: str = "/run/containerd/containerd.sock"
    namespace: str = "k8s.io"
    snapshotter: str = "overlayfs"
    jobs: int = 4
    hosts_dir: str = "/etc/containerd/certs.d"
    authfile: str = ""
    plain_http: bool = False
    insecure_skip_verify: bool = False
    platforms: list[str] = field(default_factory=list)
    reserve: str = "1GiB"
    retries: int = 5
    backoff: float = 0.5
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")


def _coerce(name: str, value: Any, template: Any, where: str) -> Any:
    if isinstance(template, bool):
        return _parse_bool(value, where) if isinstance(value, str) else bool(value)
    if isinstance(template, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _bad(f"{where}: {name} must be a number, got {value!r}") from None
    if isinstance(template, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _bad(f"{where}: {name} must be an integer, got {value!r}") from None
    if isinstance(template, Path):
        if not str(value).strip():  # Path("") is the current directory: never meant
            raise _bad(f"{where}: {name} is empty; name a directory")
        return Path(str(value)).expanduser()
    if isinstance(template, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise _bad(f"{where}: {name} must be a list")
    return str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise _bad(f"config file {path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise _bad(f"config file {path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise _bad(f"config file {path}: invalid TOML: nested too deeply") from None
    except PermissionError:
        return {}
    except OSError as e:
        raise _bad(f"config file {path}: cannot read: {e.strerror or e}") from None


def load(
    cli: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build Settings from CLI values (None = not given), the environment and config files."""
    env = os.environ if env is None else env
    s = Settings()
    names = {f.name for f in fields(s)} - {"sources"}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    cfg_env = env.get(ENV_PREFIX + "CONFIG")
    if config_file is not None or cfg_env:
        path = config_file or Path(str(cfg_env))
        if not path.exists():
            raise _bad(f"config file {path} does not exist")
        layers.append((str(path), _read_toml(path)))
    else:
        layers.append((str(SYSTEM_CONFIG), _read_toml(SYSTEM_CONFIG)))
        layers.append((str(user_config()), _read_toml(user_config())))
    for src, table in layers:
        for key, value in table.items():
            k = key.replace("-", "_")
            if k not in names:
                raise _bad(f"{src}: unknown setting {key!r}")
            setattr(s, k, _coerce(k, value, getattr(s, k), src))
            s.sources[k] = src
    for k in names:
        ev = env.get(ENV_PREFIX + k.upper())
        if ev is not None and ev != "":
            setattr(s, k, _coerce(k, ev, getattr(s, k), ENV_PREFIX + k.upper()))
            s.sources[k] = "env"
    for k, value in cli.items():
        if value is None or k not in names:
            continue
        setattr(s, k, _coerce(k, value, getattr(s, k), f"--{k.replace('_', '-')}"))
        s.sources[k] = "flag"
    return s


#: Spec globals that become settings (unless the same setting was given as a flag).
SPEC_SETTINGS = ("store", "namespace", "platforms", "reserve", "jobs")


def apply_spec_settings(s: Settings, spec: CacheSpec) -> None:
    """The spec's globals override the environment and config files, not flags."""
    values: dict[str, Any] = {
        "store": spec.store,
        "namespace": spec.namespace,
        "platforms": [str(p) for p in spec.platforms] or None,
        "reserve": str(spec.reserve) if spec.reserve is not None else None,
        "jobs": spec.jobs,
    }
    for key in SPEC_SETTINGS:
        value = values[key]
        if value is not None and s.source_of(key) != "flag":
            setattr(s, key, value)
            s.sources[key] = f"spec {spec.path}"
