"""The ``--from`` / ``--allow-network`` options of ``bake`` and ``plan`` (what they select:
:func:`cargohold.pull.sources.content_source`). Not a command module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def from_options(f: F) -> F:
    """``--from PATH`` (repeatable) and ``--allow-network`` for bake and plan."""
    f = click.option("--allow-network", is_flag=True,
                     help="With --from: fetch images the archives lack from their registry.")(f)
    return click.option(
        "--from", "from_paths", multiple=True, type=click.Path(path_type=Path),
        help="Take the spec's images from this OCI layout or archive instead of a registry "
             "(repeatable).")(f)
