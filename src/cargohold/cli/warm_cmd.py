"""`cargohold warm [SPEC]`: unpack fetched-only images in the background, most valuable first
(see :mod:`cargohold.node.warm`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cargohold.bake.spec import load_spec
from cargohold.cli.fetching import raise_failures
from cargohold.cli.main import App, cli, pass_app
from cargohold.cli.output import Output
from cargohold.cli.run_metrics import recorded_run, textfile_option
from cargohold.errors import InvalidInputError, UnavailableError
from cargohold.interrupts import wait_until
from cargohold.node.disk import (
    free_target,
    fs_space,
    parse_keep_free,
    store_fs_not_found,
    store_path,
)
from cargohold.node.niceness import idle_io_class, lower_cpu_priority
from cargohold.node.warm import (
    FAILED,
    SKIPPED,
    WARMED,
    Warmer,
    WarmEvents,
    WarmItem,
    WarmOptions,
    WarmReport,
    items_from_records,
    items_from_spec,
    warm_lock,
)
from cargohold.oci.platform import parse_platform
from cargohold.pull.fetch import FetchFailure
from cargohold.pull.pipeline import unpack_lease
from cargohold.store.open import LocalStore, open_store, reserve_bytes
from cargohold.units import format_size
from cargohold.unpack.image import STATE_UNPACKED, LayerOutcome, UnpackEvents

if TYPE_CHECKING:
    from cargohold.store.containerd.store import ContainerdStore
    from cargohold.store.interfaces import Store

#: ``--wait`` without a value: how long to wait for containerd's socket.
DEFAULT_WAIT = 300.0


class _Progress(WarmEvents, UnpackEvents):
    """Plain lines on stderr (off a TTY), a live bar on a TTY, NDJSON events with --json."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self._live: Any = None
        self._task: Any = None
        self.total = 0
        self.count = 0
        self.n = 0
        self._held: list[Callable[[], None]] = []

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        for emit in self._held:
            emit()
        self._held.clear()

    def planned(self, order: Sequence[WarmItem]) -> None:
        self.count = len(order)
        self.total = sum(i.bytes_expected for i in order)
        if self.out.json_mode:
            self.out.event("plan", images=[i.to_json() for i in order])
            return
        if order:
            secs = sum(i.seconds for i in order)
            self.out.info(f"warming {len(order)} images (about {format_size(self.total)}, "
                          f"{secs:.1f} s expected), most valuable first")
            for i in order:
                self.out.debug(f"  {i.name}: priority {i.priority:g}, {i.layers_missing} layers, "
                               f"about {format_size(i.bytes_expected)}, {i.seconds:.2f} s")
        if self.out.live and order:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

            self._live = Progress("{task.description}", BarColumn(), DownloadColumn(),
                                  TimeElapsedColumn(), console=Console(file=self.out.err),
                                  transient=True)
            self._live.start()
            self._task = self._live.add_task("warming", total=max(1, self.total))

    def started(self, item: WarmItem) -> None:
        self.n += 1
        if self.out.json_mode:
            self.out.event("image_started", name=item.name, expected_bytes=item.bytes_expected)
        elif self._live is not None:
            self._live.update(self._task, description=f"{self.n}/{self.count} {item.name}")
        else:
            self.out.info(f"warming {item.name} ({self.n}/{self.count}, about "
                          f"{format_size(item.bytes_expected)})")

    def layer_done(self, outcome: LayerOutcome) -> None:
        if self.out.json_mode:
            self.out.event("layer_done", **outcome.to_json())
        elif self._live is not None and outcome.state == STATE_UNPACKED:
            self._live.advance(self._task, outcome.uncompressed)
        elif outcome.state == STATE_UNPACKED:
            self.out.debug(f"layer {str(outcome.layer.digest)[:19]}  "
                           f"{format_size(outcome.uncompressed)}  {outcome.seconds:.2f} s")

    def finished(self, item: WarmItem) -> None:
        if self.out.json_mode:
            self.out.event("image_done" if item.status == WARMED else "image_failed",
                           **item.to_json())
            return
        if item.status == WARMED:
            shared = sum(r.chains_shared for r in item.results)
            extra = f", {shared} by a concurrent unpack" if shared else ""
            line = (f"{item.name}  warmed {item.layers_missing} layers "
                    f"({format_size(item.bytes_unpacked)}) in {item.elapsed:.2f} s{extra}")
            self._emit(lambda: self.out.data(line))
        elif item.error is not None:
            err = item.error
            self._emit(lambda: self.out.error(f"{item.name}: {err.message}", err.hint_text()))

    def cold(self, items: Sequence[WarmItem], reason: str) -> None:
        if self.out.json_mode:
            self.out.event("cold", names=[i.name for i in items], reason=reason)
            return
        names = ", ".join(i.name for i in items)
        self._emit(lambda: self.out.warn(f"stopped: left cold {names}: {reason}"))

    def _emit(self, emit: Callable[[], None]) -> None:
        """Result and error lines: held while the bar owns the terminal."""
        if self._live is not None:
            self._held.append(emit)
        else:
            emit()


def _lock_path(app: App, store: Store) -> Path:
    if isinstance(store, LocalStore):
        return Path(store.root) / "warm.lock"
    s = app.settings
    key = hashlib.sha256(f"{s.address}\0{s.namespace}".encode()).hexdigest()[:16]
    return Path(s.root) / f"warm-{key}.lock"


def _wait_for(store: ContainerdStore, seconds: float, out: Output) -> None:
    """Wait until containerd answers (its version call), at most ``seconds``."""
    errors: list[UnavailableError] = []

    def answers() -> bool:
        try:
            store.version()
        except UnavailableError as e:
            if not errors:
                out.info(f"waiting for containerd at {store.address} (up to {seconds:g} s)")
            errors.append(e)
            return False
        return True

    if not wait_until(answers, timeout=seconds, max_pause=0.25):
        e = errors[-1]
        raise UnavailableError(f"containerd did not answer within {seconds:g} s: {e.message}",
                               hint=e.hint_text())


def _summary(out: Output, r: WarmReport, niceness: dict[str, Any]) -> None:
    if out.json_mode:
        out.json({"event": "summary", **r.to_json(), **niceness})
        return
    warmed = r.having(WARMED)
    skipped = r.having(SKIPPED)
    if r.nothing_to_do and not r.having("cold"):
        unpacked = sum(1 for i in skipped if i.reason == "already unpacked")
        out.data(f"nothing to do: {unpacked} images already unpacked"
                 + (f", {len(skipped) - unpacked} skipped" if len(skipped) > unpacked else ""))
    else:
        parts = [f"warmed {len(warmed)} images ({format_size(r.bytes)}) in {r.seconds:.1f} s"]
        if skipped:
            parts.append(f"skipped {len(skipped)}")
        if r.having(FAILED):
            parts.append(f"{len(r.having(FAILED))} failed")
        if r.having("cold"):
            parts.append(f"{len(r.having('cold'))} left cold")
        out.data("; ".join(parts))
    for i in skipped:
        (out.debug if i.reason == "already unpacked" else out.info)(
            f"  skipped {i.name}: {i.reason}")


@cli.command()
@click.argument("spec_file", metavar="[SPEC]", required=False,
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Layers of an image applied at once (images are warmed one after another).")
@click.option("--nice", "nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="CPU niceness (0: leave it).")
@click.option("--io-class", type=click.Choice(["idle", "normal"]), default="idle",
              show_default=True, help="I/O scheduling class (idle: ionice -c3).")
@click.option("--keep-free", default=None, metavar="SIZE|PCT",
              help="Never unpack past this much free space on the store's file system "
                   "(e.g. 5GiB or 10%).")
@click.option("--wait", "wait", type=float, is_flag=False, flag_value=DEFAULT_WAIT,
              default=None, metavar="[SECONDS]",
              help=f"Wait for containerd's socket to answer (default {DEFAULT_WAIT:g} s).")
@click.option("--platform", "platforms", multiple=True,
              help="os/arch[/variant] to warm (repeatable) [default: the spec's, else this "
                   "host's].")
@textfile_option
@pass_app
def warm(app: App, spec_file: Path | None, jobs: int, nice: int, io_class: str,
         keep_free: str | None, wait: float | None, platforms: tuple[str, ...],
         metrics_dir: Path | None) -> None:
    """Unpack fetched-only images, most valuable first (at boot, in the background)."""
    with recorded_run(app, "warm", metrics_dir):
        _warm_command(app, spec_file, jobs, nice, io_class, keep_free, wait, platforms)


def _warm_command(app: App, spec_file: Path | None, jobs: int, nice: int, io_class: str,
                  keep_free: str | None, wait: float | None,
                  platforms: tuple[str, ...]) -> None:
    # Before any thread starts: threads inherit both.
    niceness: dict[str, Any] = {"nice": lower_cpu_priority(nice) if nice else
                                os.getpriority(os.PRIO_PROCESS, 0)}
    niceness["io_class"] = idle_io_class() if io_class == "idle" else "normal"
    out = app.out
    s = app.settings
    spec = load_spec(spec_file) if spec_file is not None else None
    target = parse_keep_free(keep_free) if keep_free is not None else None
    plats = [parse_platform(p) for p in (platforms or s.platforms)]
    if wait is not None and wait < 0:
        raise InvalidInputError("--wait: seconds must be >= 0")
    if wait is not None and s.store == "containerd":
        # Before open_store: opening releases dead processes' leases, a call that needs the
        # daemon.
        from cargohold.store.containerd.store import ContainerdStore

        with ContainerdStore.from_settings(s) as probe:
            _wait_for(probe, wait, out)
    # An existing store only: warm has nothing to warm in a new one (a mistyped --root
    # must not leave an empty store behind).
    with open_store(s, must_exist=True) as store, warm_lock(_lock_path(app, store)):
        report = _warm(app, store, spec, plats, jobs, target)
    _summary(out, report, niceness)
    failed = report.having(FAILED)
    attempted = len(report.order) + sum(1 for i in failed if i.name not in report.order)
    raise_failures([FetchFailure(i.name, i.error) for i in failed if i.error is not None],
                   total=max(attempted, 1))
    if report.out_of_space is not None:
        raise report.out_of_space


def _warm(app: App, store: Store, spec: Any, plats: list[Any], jobs: int,
          keep_free: tuple[int | None, float | None] | None) -> WarmReport:
    out = app.out
    if spec is not None:
        items = items_from_spec(spec, store.images, plats)
    else:
        items, unlabelled = items_from_records(store.images, plats)
        if unlabelled:
            out.debug(f"{unlabelled} image records carry no bake labels: not warmed "
                      "(name them in a spec to warm them)")
    floor = floor_path = None
    if keep_free is not None:
        floor_path = store_path(store, Path(app.settings.root))
        if floor_path is None:
            raise store_fs_not_found(
                hint="run warm on the machine containerd runs on, or drop --keep-free")
        floor = free_target(fs_space(floor_path), keep_free)
    from cargohold.measure.calibration import cost_model

    model, _ = cost_model(Path(app.settings.root))
    progress = _Progress(out)
    warmer = Warmer(
        store, items,
        WarmOptions(jobs=jobs, reserve=reserve_bytes(app.settings), floor=floor,
                    floor_path=floor_path, model=model),
        events=progress, layer_events=progress,
        unpack_scope=lambda: unpack_lease(store),
    )
    with progress:
        return warmer.run()
