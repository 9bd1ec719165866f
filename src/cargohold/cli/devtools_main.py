"""The developers' CLI, ``python -m cargohold.devtools``: a local registry and sample
images, for demos.

    python -m cargohold.devtools registry DIR [--port P]  # start in the background, print host:port
    python -m cargohold.devtools stop-registry DIR
    python -m cargohold.devtools push-samples HOST:PORT [--big-size BYTES]
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import click

from cargohold.errors import CargoholdError
from cargohold.interrupts import wait_until
from cargohold.units import format_size


@click.group()
def main() -> None:
    """Development helpers: local registry and sample images."""


def previous_port(directory: Path) -> int | None:
    """The port a registry started earlier under ``directory`` listened on (its config)."""
    try:
        text = (directory / "config.yml").read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^\s*addr:\s*127\.0\.0\.1:(\d+)\s*$", text, re.MULTILINE)
    return int(m.group(1)) if m else None


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on 127.0.0.1 [default: the one a registry started earlier under "
                   "DIRECTORY used (a restart keeps its address and images), else a free one].")
def registry(directory: Path, port: int | None) -> None:
    """Start docker-registry with storage under DIRECTORY; print its host:port."""
    from cargohold.devtools.registry import start_registry
    from cargohold.errors import CargoholdError

    try:
        reg = start_registry(directory, port=port or previous_port(directory) or 0)
    except CargoholdError as e:
        raise click.ClickException(f"{e.message}\nhint: {e.hint_text()}") from None
    (directory / "pid").write_text(str(reg.proc.pid))
    click.echo(reg.host)


@main.command("stop-registry")
@click.argument("directory", type=click.Path(path_type=Path))
def stop_registry(directory: Path) -> None:
    """Stop a registry started by `registry DIRECTORY`."""
    try:
        pid = int((directory / "pid").read_text())
    except (OSError, ValueError):
        raise click.ClickException(f"no registry was started under {directory}") from None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        # Wait until it is gone, so that a restart finds its port free.
        if not _gone(pid, 10.0):
            os.kill(pid, signal.SIGKILL)
            _gone(pid, 10.0)


def _gone(pid: int, timeout: float) -> bool:
    return wait_until(lambda: not _running(pid), timeout=timeout, max_pause=0.05)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@main.command("push-samples")
@click.argument("host")
@click.option("--big-size", type=int, default=300_000_000, show_default=True,
              help="Uncompressed size of the big sample (0: none).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
def push_samples(host: str, big_size: int, workdir: Path | None) -> None:
    """Build the sample images and push them to HOST (plain HTTP); print their refs."""
    from cargohold.devtools.samples import demo_specs, push_specs

    with tempfile.TemporaryDirectory(prefix="cargohold-samples-") as tmp:
        pushed = push_specs(demo_specs(big_size), host, workdir or Path(tmp))
    for p in pushed:
        click.echo(f"{p.ref}\t{p.root.digest}\t{format_size(p.compressed)}")


def run() -> None:
    """``python -m cargohold.devtools``: an error of cargohold's tree (a dead registry, say)
    is its message, hint and exit code on stderr, as for ``cargohold``; never a traceback."""
    try:
        main()
    except CargoholdError as e:
        click.echo(f"error: {e.message}\nhint: {e.hint_text()}", err=True)
        sys.exit(e.exit_code)
