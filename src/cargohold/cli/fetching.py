"""Options and outcomes shared by the commands that fetch (fetch, pull, bake, plan,
import, export, bench): registry options, record policy, a batch's failures and exit status.
Not a command module: command modules import these helpers from here, not from each other."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import click

from cargohold.cli.main import App
from cargohold.cli.output import Output
from cargohold.errors import batch_error
from cargohold.pull.fetch import FetchFailure, FetchResult
from cargohold.units import format_size

F = TypeVar("F", bound=Callable[..., Any])


def registry_options(f: F) -> F:
    """Options shared by every command that talks to a registry."""
    for opt in reversed([
        click.option("--plain-http", is_flag=True, default=None,
                     help="Use HTTP instead of HTTPS for the registry."),
        click.option("--insecure-skip-verify", is_flag=True, default=None,
                     help="Do not verify the registry's TLS certificate."),
        click.option("--hosts-dir", default=None,
                     help="containerd hosts.toml directory [default: /etc/containerd/certs.d]."),
        click.option("--authfile", default=None,
                     help="Docker config.json with credentials [default: $REGISTRY_AUTH_FILE, ~/.docker/config.json]."),
    ]):
        f = opt(f)
    return f


def apply_registry_options(app: App, **kw: object) -> None:
    for k, v in kw.items():
        if v is not None:
            setattr(app.settings, k, v)
            app.settings.sources[k] = "flag"


def print_failures(out: Output, failures: list[FetchFailure], *, total: int,
                   shown: Collection[str]) -> None:
    """Each failed image of a batch once: those the progress lines did not show (e.g. with
    -q, or an unpack's failure); a lone failure is the command's error, printed by main."""
    if total > 1:
        for f in failures:
            if str(f.ref) not in shown:
                out.error(f"{f.ref}: {f.error.message}", f.error.hint_text())


def raise_failures(failures: list[FetchFailure], *, total: int) -> None:
    """The exit status of a batch of ``total`` images (see :func:`errors.batch_error`)."""
    err = batch_error([(str(f.ref), f.error) for f in failures], total)
    if err is not None:
        raise err


def fetched_line(r: FetchResult) -> str:
    """``NAME  DIGEST  N blobs  SIZE  (what was transferred)``: a fetched image, as text."""
    what = ("already present, nothing transferred" if r.transferred_nothing
            else f"{format_size(r.bytes_transferred)} transferred")
    return f"{r.name}  {r.target.digest}  {r.blobs} blobs  {format_size(r.bytes_total)}  ({what})"
