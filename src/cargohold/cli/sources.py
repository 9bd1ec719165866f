"""Where ``bake`` and ``plan`` take images from: ``--from`` archives (falling back to the
registry only with ``--allow-network``) or the registry client. Not a command module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cargohold.cli.resources import LocalStore, registry_client, reserve_bytes
from cargohold.errors import InvalidInputError
from cargohold.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def from_options(f: F) -> F:
    """``--from PATH`` (repeatable) and ``--allow-network`` for bake and plan."""
    f = click.option("--allow-network", is_flag=True,
                     help="With --from: fetch images the archives lack from their registry.")(f)
    return click.option(
        "--from", "from_paths", multiple=True, type=click.Path(path_type=Path),
        help="Take the spec's images from this OCI layout or archive instead of a registry "
             "(repeatable).")(f)


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


def space_check(s: Settings, store: Any | None) -> Any:
    """Free-space check of blobs staged from an archive (embedded store: the root's
    reserve; containerd keeps its own disk)."""
    from cargohold.archive.source import space_check as check

    if isinstance(store, LocalStore):
        return check(store.root, reserve_bytes(s))
    return lambda n: None
