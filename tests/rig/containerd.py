"""A real containerd for tests, with its own root, state, socket and config under a temp dir.

Never touches a system containerd (/run/containerd, /var/lib/containerd, /etc/containerd):
every path containerd would default to is pointed below ``base``. Needs root (containerd
does) and Debian's ``containerd`` package; the ``ctr`` client comes with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cargohold.devtools.registry import stop_process
from tests.rig.needs import require_binary, require_root

#: Plugins that probe or need host state we do not want (or have) in tests.
DISABLED_PLUGINS = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
DEFAULT_TEST_NAMESPACE = "cargohold-test"
#: sun_path is 108 bytes; containerd also creates "<address>.ttrpc".
_MAX_SOCKET = 100


def _toml_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(base: Path, socket: Path, *, cri: bool = False,
                 content_sharing: str = "shared") -> Path:
    """config.toml (version 2) keeping every path of this containerd under ``base``;
    ``content_sharing``: the metadata store's content sharing policy (containerd's default
    "shared", or "isolated")."""
    disabled = list(DISABLED_PLUGINS)
    if not cri:
        disabled.append(CRI_PLUGIN)
    lines = [
        "version = 2",
        f"root = {_toml_str(base / 'root')}",
        f"state = {_toml_str(base / 'state')}",
        f"temp = {_toml_str(base / 'tmp')}",
        "disabled_plugins = [" + ", ".join(_toml_str(p) for p in disabled) + "]",
        "oom_score = 0",
        "",
        "[grpc]",
        f"  address = {_toml_str(socket)}",
        "  uid = 0",
        "  gid = 0",
        "",
        "[ttrpc]",
        f"  address = {_toml_str(str(socket) + '.ttrpc')}",
        "",
        "[debug]",
        '  address = ""',
        '  level = "info"',
        "",
        "[metrics]",
        '  address = ""',
        "",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_toml_str(base / 'opt')}",
        "",
        # The v1 runtime keeps runc state in /run/containerd/runc unless told otherwise.
        # The v2 runtime has no path setting in 1.6: its state is
        # <state>/io.containerd.runtime.v2.task (below base); only shim sockets of running
        # tasks would go to /run/containerd/s, and these tests run no tasks.
        '[plugins."io.containerd.runtime.v1.linux"]',
        f"  runtime_root = {_toml_str(base / 'state' / 'runc')}",
        "",
        '[plugins."io.containerd.runtime.v2.task"]',
        "  sched_core = false",
        "",
        '[plugins."io.containerd.gc.v1.scheduler"]',
        # Garbage collection only when asked for (a delete with sync, `ctr leases delete
        # --sync`), so tests decide when it happens: no collection at startup, deletions and
        # mutations never reach their thresholds, and the pause-based interval after a
        # collection (average gc time / pause_threshold) is days long.
        "  pause_threshold = 1e-9",
        "  deletion_threshold = 1000000000",
        "  mutation_threshold = 0",
        '  schedule_delay = "0s"',
        '  startup_delay = "10000h"',
        "",
        '[plugins."io.containerd.metadata.v1.bolt"]',
        f"  content_sharing_policy = {_toml_str(content_sharing)}",
    ]
    if cri:
        lines += [
            "",
            '[plugins."io.containerd.grpc.v1.cri"]',
            f"  root = {_toml_str(base / 'root' / 'cri')}",
            f"  state = {_toml_str(base / 'state' / 'cri')}",
            "  disable_tcp_service = true",
            '  [plugins."io.containerd.grpc.v1.cri".cni]',
            f"    bin_dir = {_toml_str(base / 'cni' / 'bin')}",
            f"    conf_dir = {_toml_str(base / 'cni' / 'conf')}",
            '  [plugins."io.containerd.grpc.v1.cri".registry]',
            f"    config_path = {_toml_str(base / 'certs.d')}",
        ]
    config = base / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@dataclass
class Containerd:
    """A running containerd child process (own session) and helpers to poke at it."""

    base: Path
    address: str
    config: Path
    log: Path
    binary: str
    ctr_binary: str
    proc: subprocess.Popen[bytes] | None = None
    namespace: str = DEFAULT_TEST_NAMESPACE
    _socket_dir: Path | None = field(default=None, repr=False)

    def ctr(
        self,
        *args: str,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <sock> -n <ns> ARGS``; raises with its output if it fails."""
        cmd = [self.ctr_binary, "--address", self.address, "-n", namespace or self.namespace, *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def run(self, image: str, container_id: str, *cmd: str, namespace: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm IMAGE ID CMD...`` (must exit 0); its stdout.

        On a loaded machine ctr 1.6 sometimes loses a short-lived task's output: the task
        ran and exited 0, and ctr's copy of its stdout FIFO came back empty. Such a run
        (exit 0, no output at all) is retried under a new ID, at most twice; a run that
        fails, or prints something else, is returned (and judged) as it is."""
        run = self.ctr("run", "--rm", image, container_id, *cmd, namespace=namespace,
                       timeout=timeout)
        for attempt in range(2):
            if run.stdout.strip():
                break
            run = self.ctr("run", "--rm", image, f"{container_id}-{attempt + 1}", *cmd,
                           namespace=namespace, timeout=timeout)
        return run

    def unique_namespace(self, prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    def gc(self, namespace: str | None = None) -> None:
        """Run containerd's garbage collector now and wait for it (all namespaces).

        The test config never schedules a collection by itself; deleting a lease with
        ``--sync`` runs one and answers when it is done, so create a throw-away lease for it.
        """
        ns = namespace or self.namespace
        lease = self.ctr("leases", "create", namespace=ns).stdout.split()[-1]
        self.ctr("leases", "delete", "--sync", lease, namespace=ns)

    def _spawn(self) -> None:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.base / "tmp")},
            )
        finally:
            logf.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"containerd exited early ({self.proc.returncode}):\n{self.log_text()}"
                )
            if Path(self.address).exists():
                r = self.ctr("version", check=False, timeout=10)
                if r.returncode == 0:
                    return
                last = r.stderr
            time.sleep(0.05)
        raise RuntimeError(
            f"containerd at {self.address} not ready within {timeout}s: {last}\n{self.log_text()}"
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self._spawn()
        self.wait_ready()

    def cleanup(self) -> None:
        self.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def start_containerd(base: Path, *, cri: bool = False,
                     content_sharing: str = "shared") -> Containerd:
    """Start ``containerd --config <base>/config.toml`` with everything under ``base``.

    Skips (fails under CI=true) when containerd is not installed or we are not root.
    """
    binary = require_binary("containerd", "containerd")
    ctr_binary = require_binary("ctr", "containerd")
    require_root("containerd's own root and state directories")
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("root", "state", "tmp", "opt"):
        (base / sub).mkdir(exist_ok=True)
    socket_dir: Path | None = None
    socket = base / "containerd.sock"
    if len(str(socket)) + len(".ttrpc") > _MAX_SOCKET:
        socket_dir = Path(tempfile.mkdtemp(prefix="ctrd-"))
        socket = socket_dir / "containerd.sock"
    config = write_config(base, socket, cri=cri, content_sharing=content_sharing)
    ctrd = Containerd(
        base=base,
        address=str(socket),
        config=config,
        log=base / "containerd.log",
        binary=binary,
        ctr_binary=ctr_binary,
        _socket_dir=socket_dir,
    )
    ctrd._spawn()
    try:
        ctrd.wait_ready()
    except Exception:
        ctrd.cleanup()
        raise
    return ctrd


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """One real containerd for the session; tests use their own namespaces."""
    ctrd = start_containerd(tmp_path_factory.mktemp("containerd"))
    yield ctrd
    ctrd.cleanup()


@pytest.fixture
def fresh_containerd(tmp_path: Path) -> Iterator[Containerd]:
    """A containerd of the test's own, for tests that stop, restart or break it."""
    ctrd = start_containerd(tmp_path / "containerd")
    yield ctrd
    ctrd.cleanup()
