"""Where a command takes images from: the registry client of the settings, or (``bake`` and
``plan`` with ``--from``) image archives, falling back to the registry only when allowed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargohold.errors import InvalidInputError
from cargohold.settings import Settings
from cargohold.store.open import LocalStore, reserve_bytes

if TYPE_CHECKING:
    from cargohold.registry.client import RegistryClient


def registry_client(s: Settings) -> RegistryClient:
    """The registry client of the settings (hosts.toml, credentials, TLS, retries)."""
    from cargohold.registry.client import RegistryClient

    return RegistryClient(
        hosts_dir=s.hosts_dir,
        authfile=s.authfile or None,
        plain_http=True if s.plain_http else None,
        insecure=s.insecure_skip_verify,
        retries=s.retries,
        backoff=s.backoff,
    )


def content_source(s: Settings, from_paths: Sequence[Path], allow_network: bool,
                   store: Any | None = None) -> Any:
    """The registry client, or with ``--from`` the archives (falling back to the registry
    only with ``--allow-network``). Either way: ``resolve``, ``fetch_manifest``,
    ``download_blob``, ``close``."""
    if not from_paths:
        if allow_network:
            raise InvalidInputError("--allow-network needs --from")
        return registry_client(s)
    from cargohold.archive.source import open_source

    return open_source(
        list(from_paths),
        store=store,
        check=space_check(s, store),
        fallback=registry_client(s) if allow_network else None,
        strict_names=False,
    )


def space_check(s: Settings, store: Any | None) -> Callable[[int], None]:
    """Free-space check of blobs staged from an archive (embedded store: the root's
    reserve; containerd keeps its own disk)."""
    from cargohold.archive.source import space_check as check

    if isinstance(store, LocalStore):
        return check(store.root, reserve_bytes(s))
    return lambda n: None
