"""``python -m cargohold.devtools``: a local registry and sample images, for demos.

    python -m cargohold.devtools registry DIR        # start in the background, print host:port
    python -m cargohold.devtools stop-registry DIR
    python -m cargohold.devtools push-samples HOST:PORT [--big-size BYTES]
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

import click

from cargohold.cli.output import human_bytes


@click.group()
def main() -> None:
    """Development helpers: local registry and sample images."""


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
def registry(directory: Path) -> None:
    """Start docker-registry with storage under DIRECTORY; print its host:port."""
    from cargohold.devtools.registry import start_registry

    reg = start_registry(directory)
    (directory / "pid").write_text(str(reg.proc.pid))
    click.echo(reg.host)


@main.command("stop-registry")
@click.argument("directory", type=click.Path(path_type=Path))
def stop_registry(directory: Path) -> None:
    """Stop a registry started by `registry DIRECTORY`."""
    pid = int((directory / "pid").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


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
        click.echo(f"{p.ref}\t{p.root.digest}\t{human_bytes(p.compressed)}")


if __name__ == "__main__":
    main()
