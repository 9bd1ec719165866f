"""Opening what commands work on (the store, the registry client) from resolved settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cargohold.errors import InvalidInputError
from cargohold.settings import Settings
from cargohold.store.embedded.lock import RootLock
from cargohold.store.embedded.store import EmbeddedStore


@contextmanager
def open_store(s: Settings, *, exclusive: bool = False) -> Iterator[EmbeddedStore]:
    """Open the configured store under the root lock (shared, or exclusive for gc)."""
    if s.store != "embedded":
        raise InvalidInputError(
            f"store {s.store!r} is not available yet; use --store embedded"
        )
    root = Path(s.root)
    root.mkdir(parents=True, exist_ok=True)
    with RootLock(root, exclusive=exclusive, wait=not exclusive), EmbeddedStore(root) as store:
        yield store


def registry_client(s: Settings):  # type: ignore[no-untyped-def]
    from cargohold.registry.client import RegistryClient

    return RegistryClient(
        hosts_dir=s.hosts_dir,
        authfile=s.authfile or None,
        plain_http=True if s.plain_http else None,
        insecure=s.insecure_skip_verify,
        retries=s.retries,
        backoff=s.backoff,
    )
