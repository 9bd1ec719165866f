"""The cargohold command line (click). Only this layer turns errors into exit codes."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cargohold import __version__, settings
from cargohold.cli.output import Output
from cargohold.errors import EXIT_INTERNAL, EXIT_USAGE, CargoholdError, Interrupted


@dataclass
class App:
    """What every command receives: resolved settings and the output channel."""

    settings: settings.Settings
    out: Output


pass_app = click.make_pass_decorator(App)


class LazyGroup(click.Group):
    """A group whose commands are imported from :data:`COMMANDS` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"cargohold.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Store directory [default: /var/lib/cargohold as root, else $XDG_DATA_HOME/cargohold].")
@click.option("-v", "--verbose", count=True, help="More logs on stderr (repeatable).")
@click.option("-q", "--quiet", count=True, help="Fewer logs on stderr.")
@click.option("--json", "json_mode", is_flag=True, default=None, help="Machine-readable output on stdout.")
@click.option("--no-progress", is_flag=True, default=None, help="No live progress display.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML config file (replaces /etc/cargohold/config.toml and the user's).")
@click.option("--store", type=click.Choice(["embedded", "containerd"]), default=None,
              help="Which store to use [default: embedded].")
@click.option("--address", default=None, help="containerd socket [default: /run/containerd/containerd.sock].")
@click.option("--namespace", default=None, help="containerd namespace [default: k8s.io].")
@click.version_option(__version__, "--version", prog_name="cargohold")
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    verbose: int,
    quiet: int,
    json_mode: bool | None,
    no_progress: bool | None,
    config_file: Path | None,
    store: str | None,
    address: str | None,
    namespace: str | None,
) -> None:
    """cargohold: cache container images in node images, fetched compressed or fully pulled."""
    flags: dict[str, Any] = {
        "root": root,
        "verbosity": (verbose - quiet) if (verbose or quiet) else None,
        "json": json_mode,
        "progress": (not no_progress) if no_progress else None,
        "store": store,
        "address": address,
        "namespace": namespace,
    }
    s = settings.load(flags, config_file=config_file)
    ctx.obj = App(s, Output(json_mode=s.json, verbosity=s.verbosity, progress=s.progress))


@cli.command()
@pass_app
def version(app: App) -> None:
    """Print the version of cargohold and of its key libraries."""
    info = versions()
    if app.out.json_mode:
        app.out.json(info)
        return
    app.out.data(f"cargohold {info['cargohold']}")
    for k, v in info.items():
        if k != "cargohold":
            app.out.data(f"  {k} {v}")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"cargohold": __version__, "python": sys.version.split()[0]}
    for dist in ("click", "urllib3", "isal", "zstandard", "rich", "grpcio", "protobuf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    return out


#: The module under cargohold.cli that defines each command. A command's module is imported
#: only when that command runs (or for --help), so start-up stays small.
COMMANDS: dict[str, str] = {
    "fetch": "fetch_cmd",
    "images": "images_cmd",
    "content": "content_cmd",
    "gc": "gc_cmd",
    "plan": "plan_cmd",
    "du": "plan_cmd",
    "verify": "plan_cmd",
    "unpack": "unpack_cmd",
    "pull": "unpack_cmd",
    "create": "containers_cmd",
    "mount": "containers_cmd",
    "umount": "containers_cmd",
    "containers": "containers_cmd",
    "run": "containers_cmd",
    "bake": "bake_cmd",
    "calibrate": "calibrate_cmd",
    "bench": "bench_cmd",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def _register_commands() -> None:
    """Import every command module (each adds its commands to ``cli``)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"cargohold.cli.{name}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (systemd stop, a build system's timeout, kill) is handled like Ctrl-C: the
    command stops its workers, removes what it had half-written and exits 130."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map errors to documented exit codes."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    json_mode = "--json" in (argv if argv is not None else sys.argv[1:])
    out = Output(json_mode=json_mode)
    try:
        cli.main(args=argv, prog_name="cargohold", standalone_mode=False)
    except CargoholdError as e:
        if json_mode:
            out.json({"event": "error", "error": e.kind, "message": e.message,
                      "exit_code": e.exit_code})
        out.error(e.message, e.hint_text())
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        out.error("interrupted", Interrupted.hint)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as e:
        e.show(file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except KeyboardInterrupt:
        out.error("interrupted", Interrupted.hint)
        sys.exit(Interrupted.exit_code)
    except BrokenPipeError:
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
