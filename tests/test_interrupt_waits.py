"""SIGTERM at any moment of pull, bake, create, unpack and warm: exit 130, never a traceback.

SIGTERM (and Ctrl-C) raise KeyboardInterrupt in the main thread wherever it is. Landing
while a ``threading.Condition`` wait re-acquires its lock (``Future.result``, ``Event.wait``,
``Thread.start`` inside ``ThreadPoolExecutor.submit``, ``Queue.get``) it used to surface as
"RuntimeError: cannot release un-acquired lock" (exit 1) with workers left running (issue 14,
defects 7/20). ``tests/rig/condsignal.py`` makes the signal land at exactly that point of the
N-th main-thread condition wait, for every N until the command runs to the end without one.

The stress tests of tests/test_pull_pipeline.py and tests/test_unpack_image.py send a real
SIGTERM at real points (a layer body held by the proxy, a layer being applied); the ones
here add pull and bake at those points and check leases and extract snapshots too.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from cargohold import interrupts
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.leasing import owner_dead
from tests.rig.cli import CLI, TEST_ENV, run_cli
from tests.rig.faultproxy import Rule, running_proxy
from tests.rig.images import Pushed, push
from tests.rig.needs import needs_root
from tests.rig.services import Registry

REPO = Path(__file__).resolve().parent.parent
WAIT = 120.0
#: More main-thread condition waits than any of these commands makes once fixed (before the
#: fix a pull made one every 0.2 s of its run).
MAX_WAITS = 40


def _image(seed: int, layers: int) -> ImageSpec:
    return ImageSpec(
        [LayerSpec([Dir(f"d{i}"), File(f"d{i}/f", size=300_000, seed=seed * 10 + i)])
         for i in range(layers)],
        cmd=["/bin/true"],
    )


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> list[Pushed]:
    """A 3-layer image (layers applied concurrently) and a 1-layer one (applied in the
    calling thread, through the read-ahead thread)."""
    work = tmp_path_factory.mktemp("waits")
    return [push(registry.host, _image(71, 3), work / "three"),
            push(registry.host, _image(72, 1), work / "one")]


@pytest.fixture(scope="module")
def fetched(images: list[Pushed], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with both images fetched, not unpacked (copied for each run): baked with
    ``mode = "fetch"``, so that `warm` has them to unpack."""
    work = tmp_path_factory.mktemp("fetched")
    spec = work / "spec.toml"
    spec.write_text("".join(f'[[image]]\nref = "{p.text}"\nmode = "fetch"\n\n'
                            for p in images))
    root = work / "store"
    run_cli(root, "bake", str(spec), "--plain-http")
    return root


def active_extracts(root: Path) -> list[str]:
    db = root / "snapshots" / "metadata.db"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [k for (k,) in c.execute(
            "SELECT key FROM snapshots WHERE kind = 'active' AND key LIKE 'extract-%'")]
    finally:
        c.close()


def dead_leases(root: Path) -> list[str]:
    db = root / "metadata.db"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = c.execute("SELECT id, labels FROM leases").fetchall()
    finally:
        c.close()
    return [i for i, labels in rows if owner_dead(json.loads(labels))]


def assert_stopped_cleanly(root: Path, rc: int, err: str) -> None:
    assert rc == 130, err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    assert "internal error" not in err, err
    assert "interrupted" in err, err
    assert active_extracts(root) == []  # removed on the way out, no gc or reaper needed
    assert dead_leases(root) == []


def _command(name: str, images: list[Pushed], tmp: Path) -> list[str]:
    refs = [p.text for p in images]
    if name == "pull":
        return ["pull", "--plain-http", "-j", "2", *refs]
    if name == "bake":
        spec = tmp / "spec.toml"
        spec.write_text("".join(f'[[image]]\nref = "{r}"\n\n' for r in refs))
        return ["bake", str(spec), "--plain-http", "-j", "2"]
    if name == "unpack":
        return ["unpack", "-j", "2", refs[0]]
    if name == "create":
        return ["create", refs[1], "box"]
    return ["warm", "-j", "2", "--nice", "0", "--io-class", "normal"]


@needs_root("overlay snapshots")
@pytest.mark.parametrize("name", ["pull", "bake", "unpack", "create", "warm"])
def test_sigterm_in_any_main_thread_wait_exits_130(
    name: str, images: list[Pushed], fetched: Path, tmp_path: Path
) -> None:
    fires = 0
    for nth in range(1, MAX_WAITS + 1):
        root = tmp_path / f"store{nth}"
        if name in ("unpack", "create", "warm"):
            shutil.copytree(fetched, root, symlinks=True)
        p = subprocess.run(
            [sys.executable, "-m", "tests.rig.condsignal", str(nth), "--root", str(root),
             *_command(name, images, tmp_path)],
            capture_output=True, text=True, timeout=300, cwd=REPO,
            env={**os.environ, **TEST_ENV, "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])},
        )
        if "condsignal: fired" not in p.stderr:
            assert p.returncode == 0, p.stderr  # fewer waits than nth: it ran to the end
            break
        fires += 1
        assert_stopped_cleanly(root, p.returncode, p.stderr)
    else:
        pytest.fail(f"{name} still waited on a condition {MAX_WAITS} times in the main thread")
    assert fires >= 1


# ----------------------------------------------------------------- real SIGTERM, real points


def _signal_when(cmd: list[str], root: Path, ready: object) -> tuple[int, str]:
    """Start ``cargohold --root ROOT CMD``, send SIGTERM once ``ready()`` holds; returns
    (exit code, stderr) — or (-1, stderr) if it finished first."""
    proc = subprocess.Popen([*CLI, "--root", str(root), *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **TEST_ENV})
    deadline = time.monotonic() + WAIT
    assert callable(ready)
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)  # polling a real condition, not a synchronisation sleep
    if proc.poll() is not None:
        _, err = proc.communicate(timeout=WAIT)
        return -1, err
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    return proc.returncode, err


def _spec(tmp: Path, refs: list[str]) -> Path:
    spec = tmp / "spec.toml"
    spec.write_text("".join(f'[[image]]\nref = "{r}"\n\n' for r in refs))
    return spec


@needs_root("overlay snapshots")
@pytest.mark.parametrize("name", ["pull", "bake"])
def test_sigterm_while_a_layer_body_is_held(name: str, registry: Registry,
                                            tmp_path: Path) -> None:
    """SIGTERM while the proxy holds the last layer's body mid-download (the first layer
    may be applied or being applied): exit 130 at once, nothing half-done left."""
    spec = ImageSpec([
        LayerSpec([Dir("base"), File("base/f", size=200_000, seed=931)]),
        LayerSpec([Dir("big"), File("big/f", size=4_000_000, seed=932)], compression="none"),
    ], cmd=["/bin/true"])
    pushed = push(registry.host, spec, tmp_path / "img")
    last = pushed.built.layer_descriptors[-1]
    with running_proxy(registry.host) as proxy:
        rule = proxy.add(Rule("pause", method="GET",
                              path=f"/blobs/{re.escape(str(last.digest))}$",
                              cut_after=1 << 20, times=1))
        ref = f"{proxy.host}/{pushed.ref.path}:v1"
        cmd = (["pull", "--plain-http", ref] if name == "pull"
               else ["bake", str(_spec(tmp_path, [ref])), "--plain-http"])
        root = tmp_path / "store"
        try:
            rc, err = _signal_when(cmd, root, rule.reached.is_set)
            assert not rule.release.is_set()  # it did not wait for the held body
        finally:
            rule.release.set()
        assert_stopped_cleanly(root, rc, err)
        run_cli(root, *cmd)  # the rerun completes
    assert active_extracts(root) == [] and dead_leases(root) == []


@needs_root("overlay snapshots")
@pytest.mark.parametrize("name", ["pull", "bake"])
def test_sigterm_while_a_layer_is_applied(name: str, registry: Registry,
                                          tmp_path_factory: pytest.TempPathFactory,
                                          tmp_path: Path) -> None:
    """SIGTERM once an ``extract-*`` snapshot exists (a layer being applied). Retried on a
    fresh store when the command finished before the signal landed."""
    big = push(registry.host, ImageSpec(
        [LayerSpec([Dir(f"d{i}"), File(f"d{i}/f", size=15_000_000, seed=940 + i)])
         for i in range(3)], cmd=["/bin/true"]), tmp_path_factory.mktemp("big"))
    for attempt in range(5):
        root = tmp_path / f"store{attempt}"
        cmd = (["pull", "--plain-http", "-j", "2", big.text] if name == "pull"
               else ["bake", str(_spec(tmp_path, [big.text])), "--plain-http", "-j", "2"])
        rc, err = _signal_when(cmd, root, lambda r=root: _extracting(r))  # type: ignore[misc]
        if rc == -1:
            continue  # done before the signal: try again
        assert_stopped_cleanly(root, rc, err)
        return
    pytest.fail(f"{name} always finished before SIGTERM could stop it")


def _extracting(root: Path) -> bool:
    try:
        return bool(active_extracts(root))
    except sqlite3.OperationalError:  # being created by the command: not yet
        return False


# ----------------------------------------------------------------- cargohold.interrupts

_FINALIZER = """
import gc, signal, sys, time
from cargohold import interrupts
signal.signal(signal.SIGTERM, interrupts.handle)
interrupts.keep_interrupts_from_finalizers()

class Closing:
    def __del__(self):  # the signal lands while a finalizer runs (socket.close, ...)
        interrupts.handle(signal.SIGTERM, None)

try:
    Closing()
    end = time.monotonic() + 60
    interrupts.wait_until(lambda: time.monotonic() > end)  # the interrupt comes back here
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(1)  # lost
"""

_HELD = """
import os, signal, sys
from cargohold import interrupts
signal.signal(signal.SIGTERM, interrupts.handle)
done = []
try:
    with interrupts.held():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # plenty of instructions where the handler runs
            done.append(1)
except KeyboardInterrupt:
    sys.exit(130 if len(done) == 1000 else 1)
"""


@pytest.mark.parametrize("script", [_FINALIZER, _HELD], ids=["finalizer", "held"])
def test_interrupt_neither_lost_nor_raised_where_it_cannot_be_taken(script: str) -> None:
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 130, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr


def test_wait_until_with_a_timeout_gives_up_and_says_so() -> None:
    """The one polling wait: True once done (the first call included), False at the
    timeout after one more call at the deadline; what ``done`` raises ends the wait."""
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    assert interrupts.wait_until(never, timeout=0.01) is False
    assert len(calls) >= 2  # at the start and at the deadline
    assert interrupts.wait_until(lambda: True, timeout=0) is True
    left = iter([False, False, True])
    assert interrupts.wait_until(lambda: next(left), timeout=60) is True

    def broken() -> bool:
        raise ValueError("no")

    with pytest.raises(ValueError):
        interrupts.wait_until(broken, timeout=60)


# ------------------------------------------------ an interrupt inside ``with condition:``


class _SignalOnEnter(threading.Condition):
    """A condition whose ``__enter__`` runs SIGTERM's handler (cargohold's) once its lock
    is taken, the first ``times`` times the main thread enters it: where a real signal lands
    when it arrives between the two (``Condition.__enter__`` is Python code)."""

    def __init__(self, times: int = 1) -> None:
        super().__init__()
        self.times = times

    def __enter__(self) -> bool:
        got = super().__enter__()
        if self.times and threading.current_thread() is threading.main_thread():
            self.times -= 1
            interrupts.handle(signal.SIGTERM, None)  # KeyboardInterrupt, unless held
        return got


def _free_for_others(cond: threading.Condition) -> bool:
    """Whether another thread can take ``cond``'s lock now (without waiting)."""
    got: list[bool] = []

    def take() -> None:
        got.append(cond.acquire(blocking=False))
        if got[0]:
            cond.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got[0]


def test_an_interrupt_inside_a_futures_condition_leaves_it_free() -> None:
    """The hang after SIGTERM (test_sigterm_mid_unpack_into_containerd...): landing inside
    ``Future.done()``'s ``with self._condition`` of ``wait_until(fut.done)``, the interrupt
    left the lock held by the main thread; the worker then finishing the future blocked for
    good in ``set_exception``, and ``Unpacker.close`` waited for it forever. ``wait_future``
    takes it with signals held: the interrupt comes right after, the condition free."""
    fut: Future[int] = Future()
    fut._condition = _SignalOnEnter()  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        interrupts.wait_until(fut.done)  # the fault, as it was
    assert not _free_for_others(fut._condition)  # type: ignore[attr-defined]
    fut._condition.release()  # type: ignore[attr-defined]  # (taken by this thread)

    fut = Future()
    fut._condition = _SignalOnEnter()  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        interrupts.wait_future(fut)
    assert _free_for_others(fut._condition)  # type: ignore[attr-defined]
    worker = threading.Thread(target=fut.set_result, args=(7,))
    worker.start()
    worker.join()
    assert interrupts.wait_future(fut) == 7


def test_an_interrupt_inside_events_and_queues_of_the_main_thread_leaves_them_free() -> None:
    """``call_held``: ``Event.set`` and ``Queue.get_nowait`` (the unpacker's cancel, the
    read-ahead queue) take a condition; the interrupt is raised once it is released."""
    ev = threading.Event()
    ev._cond = _SignalOnEnter()  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        interrupts.call_held(ev.set)
    assert ev.is_set() and _free_for_others(ev._cond)  # type: ignore[attr-defined]

    q: queue.Queue[int] = queue.Queue()
    q.put(1)
    q.not_empty = _SignalOnEnter()  # type: ignore[misc]
    with pytest.raises(KeyboardInterrupt):
        interrupts.call_held(q.get_nowait)
    assert _free_for_others(q.not_empty) and q.empty()


class _Call:
    """A gRPC call's future: without a response, one that runs until cancelled, SIGTERM
    landing while it runs (in its ``done``, where gRPC takes the call's condition)."""

    def __init__(self, response: object = None) -> None:
        self.response = response
        self.cancelled = False
        self.polls = 0
        self.callbacks: list[Callable[[object], object]] = []

    def add_done_callback(self, fn: Callable[[object], object]) -> None:
        self.callbacks.append(fn)  # run when the call ends (here: when cancelled)

    def done(self) -> bool:
        self.polls += 1
        if self.response is None and self.polls == 2:
            interrupts.handle(signal.SIGTERM, None)  # KeyboardInterrupt, unless held
        return self.cancelled or (self.response is not None and self.polls > 3)

    def cancel(self) -> bool:
        self.cancelled = True
        for fn in self.callbacks:
            fn(self)
        return True

    def result(self, timeout: float | None = None) -> object:
        return self.response


class _Method:
    def __init__(self, call: _Call) -> None:
        self.call = call
        self.blocking = 0

    def __call__(self, request: object, **kw: object) -> object:
        self.blocking += 1
        return "blocking"

    def future(self, request: object, **kw: object) -> _Call:
        return self.call


def test_a_containerd_call_of_the_main_thread_is_polled_and_cancelled_on_interrupt() -> None:
    """In the main thread a unary call is a future polled with signals held around gRPC's
    conditions: an interrupt cancels it and is raised once it ended (no call left running,
    no gRPC lock left taken); other threads make the plain blocking call."""
    from cargohold.store.containerd.client import ContainerdClient

    with ContainerdClient("/nonexistent.sock", "ns") as client:
        call = _Call()
        with pytest.raises(KeyboardInterrupt):
            client.call(_Method(call), object())
        assert call.cancelled

        assert client.call(_Method(_Call("answer")), object()) == "answer"
        method = _Method(_Call("answer"))
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(client.call(method, object())))
        t.start()
        t.join()
        assert out == ["blocking"] and method.blocking == 1


def test_wait_future_is_woken_by_the_futures_callback() -> None:
    """wait_future registers a done-callback that makes the pause's eventfd readable: the
    waiting thread's select returns at once instead of sleeping out its poll interval;
    after the wait the fd is closed and a late callback writes nothing."""
    w = interrupts._Wakeup()
    fd = w._fd
    import select as _select

    assert _select.select([fd], [], [], 0)[0] == []
    w.set()
    assert _select.select([fd], [], [], 0)[0] == [fd]
    w.pause(60)  # readable: returns now
    w.close()
    w.set()  # a callback after the wait: nothing written, no error

    fut: Future[int] = Future()
    added: list[object] = []
    real_add = fut.add_done_callback

    def spy(fn: Callable[[Future[int]], object]) -> None:
        added.append(fn)
        real_add(fn)

    fut.add_done_callback = spy  # type: ignore[method-assign]
    t = threading.Thread(target=lambda: (time.sleep(0.05), fut.set_result(7)))
    t.start()
    assert interrupts.wait_future(fut) == 7
    t.join()
    assert len(added) == 1
