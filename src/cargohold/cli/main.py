"""The cargohold command line (click). Only this layer turns errors into exit codes."""

from __future__ import annotations

import functools
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from cargohold import __version__, interrupts, settings
from cargohold.cli.output import Output
from cargohold.errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    CargoholdError,
    InternalError,
    Interrupted,
)


@dataclass
class App:
    """What every command receives: resolved settings and the output channel."""

    settings: settings.Settings
    out: Output


#: ``ctx.meta`` key of the global options given on the command line, per nesting depth.
_FLAGS_KEY = "cargohold.global_flags"
_APP_KEY = "cargohold.app"


class GlobalOption(click.Option):
    """An option every command accepts, before or after its name (``cargohold --root X
    bake spec`` and ``cargohold bake spec --root X``); when given at several levels the
    one nearest the end of the command line wins. Its value goes to ``ctx.meta``, not to the
    command's callback."""

    def __init__(self, decls: list[str], setting: str, **kw: Any) -> None:
        super().__init__(decls, expose_value=False, callback=self._record, **kw)
        self.setting = setting

    def _record(self, ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or ctx.get_parameter_source(param.name or "") in (
            None, click.core.ParameterSource.DEFAULT
        ):
            return
        depth = 0
        parent = ctx.parent
        while parent is not None:
            depth, parent = depth + 1, parent.parent
        ctx.meta.setdefault(_FLAGS_KEY, {}).setdefault(depth, {})[self.setting] = value


def global_options() -> list[GlobalOption]:
    """Fresh instances of the global options (one set per command)."""
    return [
        GlobalOption(["--root"], "root", type=click.Path(), default=None,
                     help="Store directory [default: /var/lib/cargohold as root, else "
                          "$XDG_DATA_HOME/cargohold]."),
        GlobalOption(["-v", "--verbose"], "verbose", count=True,
                     help="More logs on stderr (repeatable)."),
        GlobalOption(["-q", "--quiet"], "quiet", count=True, help="Fewer logs on stderr."),
        GlobalOption(["--json"], "json", is_flag=True, default=None,
                     help="Machine-readable output on stdout."),
        GlobalOption(["--no-progress"], "no_progress", is_flag=True, default=None,
                     help="No live progress display."),
        GlobalOption(["--config"], "config_file", type=click.Path(path_type=Path), default=None,
                     help="TOML config file (replaces /etc/cargohold/config.toml and the "
                          "user's)."),
        GlobalOption(["--store"], "store", type=click.Choice(["embedded", "containerd"]),
                     default=None, help="Which store to use [default: embedded]."),
        GlobalOption(["--address"], "address", default=None,
                     help="containerd socket [default: /run/containerd/containerd.sock]."),
        GlobalOption(["--namespace"], "namespace", default=None,
                     help="containerd namespace [default: k8s.io]."),
    ]


def _add_global_options(cmd: click.Command) -> None:
    """Give ``cmd`` the global options it does not define itself (a command's own ``--json``
    stays: it does the same)."""
    taken = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for opt in global_options():
        if not taken & set(opt.opts):
            cmd.params.append(opt)


def _format_global_last(cmd: click.Command, ctx: click.Context,
                        formatter: click.HelpFormatter) -> None:
    own: list[tuple[str, str]] = []
    glob: list[tuple[str, str]] = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx)
        if rec is not None:
            (glob if isinstance(p, GlobalOption) else own).append(rec)
    if own:
        with formatter.section("Options"):
            formatter.write_dl(own)
    if glob:
        where = "after" if ctx.parent is None else "before"
        with formatter.section(f"Global options (also accepted {where} the command)"):
            formatter.write_dl(glob)


class GlobalCommand(click.Command):
    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_global_last(self, ctx, formatter)


class GlobalGroup(click.Group):
    """A group whose commands (and subgroups) all accept the global options."""

    command_class = GlobalCommand
    group_class: type[click.Group] | type[type] = type  # subgroups: this class too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _add_global_options(cmd)
        super().add_command(cmd, name)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_global_last(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def flags_from(ctx: click.Context) -> tuple[dict[str, Any], Path | None]:
    """The settings the global options gave (nearest the end of the command line wins) and
    the ``--config`` file."""
    merged: dict[str, Any] = {}
    verbosity: int | None = None
    for _depth, given in sorted(ctx.meta.get(_FLAGS_KEY, {}).items()):
        if "verbose" in given or "quiet" in given:
            verbosity = given.get("verbose", 0) - given.get("quiet", 0)
        merged.update({k: v for k, v in given.items() if k not in ("verbose", "quiet")})
    flags: dict[str, Any] = {
        "root": merged.get("root"),
        "verbosity": verbosity,
        "json": merged.get("json"),
        "progress": False if merged.get("no_progress") else None,
        "store": merged.get("store"),
        "address": merged.get("address"),
        "namespace": merged.get("namespace"),
    }
    return flags, merged.get("config_file")


def get_app(ctx: click.Context) -> App:
    """The App of this invocation, built from the global options on first use."""
    app: App | None = ctx.meta.get(_APP_KEY)
    if app is None:
        flags, config_file = flags_from(ctx)
        s = settings.load(flags, config_file=config_file)
        app = App(s, Output(json_mode=s.json, verbosity=s.verbosity, progress=s.progress))
        ctx.meta[_APP_KEY] = app
        _invocation["app"] = app
    return app


#: The App of the running invocation, for :func:`main` to report errors its way (-q, --json).
_invocation: dict[str, App] = {}


def pass_app(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: call ``f`` with the :class:`App` as its first argument."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(get_app(click.get_current_context()), *args, **kwargs)

    return wrapper


class LazyGroup(GlobalGroup):
    """A group whose commands are imported from :data:`COMMANDS` when first asked for."""

    group_class: type[click.Group] | type[type] = GlobalGroup

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"cargohold.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, params=global_options(),
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cargohold")
def cli() -> None:
    """cargohold: cache container images in node images, fetched compressed or fully pulled.

    The global options are accepted before the command and after it (after wins)."""


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
    "import": "archive_cmd",
    "export": "archive_cmd",
    "status": "node_cmd",
    "evict": "node_cmd",
    "doctor": "node_cmd",
    "metrics": "node_cmd",
    "warm": "warm_cmd",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def _register_commands() -> None:
    """Import every command module (each adds its commands to ``cli``)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"cargohold.cli.{name}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (systemd stop, a build system's timeout, kill) is handled like Ctrl-C: the
    command stops its workers, removes what it had half-written and exits 130. Ctrl-C too:
    both are held during the few calls that cannot take them (cargohold.interrupts)."""
    interrupts.handle(signum, frame)


def _report(e: CargoholdError, json_mode: bool) -> NoReturn:
    """Print ``e`` (with the invocation's verbosity and --json once settings are known) and
    exit with its code."""
    out = Output(json_mode=json_mode)
    if "app" in _invocation:
        app_out = _invocation["app"].out
        out = Output(json_mode=app_out.json_mode, verbosity=app_out.verbosity)
    if out.json_mode:
        out.json({"event": "error", "error": e.kind, "message": e.message,
                  "exit_code": e.exit_code})
    out.error(e.message, e.hint_text())
    sys.exit(e.exit_code)


def _dump_threads_on_crash() -> None:
    """On a fatal signal (SIGSEGV, SIGABRT, ...) print every thread's Python stack on stderr
    before dying: a crash of a C extension is then a report with a place, not a bare -11."""
    import contextlib
    import faulthandler

    # (stderr without a file descriptor: no dump)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        faulthandler.enable(file=sys.stderr, all_threads=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map errors to documented exit codes."""
    if threading.current_thread() is not threading.main_thread():
        _main(argv)
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    old = {s: signal.signal(s, _terminate) for s in signals}
    if argv is None:  # the process's entry point
        interrupts.keep_interrupts_from_finalizers()
        _dump_threads_on_crash()
    try:
        _main(argv)
    finally:
        # CPython exits by SIGINT (-2, not our code) when a KeyboardInterrupt ever ended a
        # string exec/eval (dataclass or namedtuple creation in a lazy import), even one
        # caught since; a string eval that ends normally clears that flag.
        eval("None")
        # The command is over: a signal while the interpreter shuts down ends it the
        # default way (as one during start-up does), not with a traceback from a finalizer.
        for s in signals:
            prev = old[s]
            dfl = prev is None or (argv is None and prev is signal.default_int_handler)
            signal.signal(s, signal.SIG_DFL if dfl else prev)


def _main(argv: list[str] | None) -> None:
    _invocation.clear()
    json_mode = "--json" in (argv if argv is not None else sys.argv[1:])
    out = Output(json_mode=json_mode)
    try:
        cli.main(args=argv, prog_name="cargohold", standalone_mode=False)
    except CargoholdError as e:
        _report(e, json_mode)
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
    except Exception as e:
        sqlite3 = sys.modules.get("sqlite3")  # loaded if a store was opened
        if sqlite3 is not None and isinstance(e, sqlite3.Error):
            # A database page found damaged by a query (not when it was opened): the same
            # error as a damaged database at open.
            from cargohold.store.embedded.metadata import translate

            where = f" at {_invocation['app'].settings.root}" if "app" in _invocation else ""
            _report(translate(e, f"reading the store{where}", "store"), json_mode)
        _internal_error(e, json_mode)
    sys.exit(0)


def _internal_error(e: Exception, json_mode: bool) -> NoReturn:
    """A bug (exit 1): one line and a hint; the traceback only with -v."""
    verbose = "app" in _invocation and _invocation["app"].out.verbosity >= 1
    if verbose:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    err = InternalError(f"internal error: {type(e).__name__}: {e}")
    if verbose:
        err.instance_hint = "this is a bug in cargohold: please report it with the output above"
    _report(err, json_mode)
